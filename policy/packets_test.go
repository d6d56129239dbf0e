package policy

import (
	"bytes"
	"testing"
)

func TestPacketWalker(t *testing.T) {
	esk := pkt(tagPKESK, fakeESK(30))
	cat := func(p ...[]byte) []byte { return bytes.Join(p, nil) }
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"PKESK SEIPD", cat(esk, pkt(tagSEIPD, fakeSEIPD(40))), true},
		{"SKESK SEIPD v2", cat(pkt(tagSKESK, fakeESK(30)), pkt(tagSEIPD, append([]byte{2}, fakeESK(40)...))), true},
		{"one-octet length 191", cat(esk, pkt(tagSEIPD, fakeSEIPD(191))), true},
		{"two-octet length 192", cat(esk, pkt(tagSEIPD, fakeSEIPD(192))), true},
		{"two-octet length 8383", cat(esk, pkt(tagSEIPD, fakeSEIPD(8383))), true},
		{"five-octet length", cat(esk, pkt(tagSEIPD, fakeSEIPD(8384))), true},
		{"partial 1-octet chunks", cat(esk, partialPkt(tagSEIPD, fakeSEIPD(10), 0)), true},
		{"partial chunks ending in zero", cat(esk, partialPkt(tagSEIPD, fakeSEIPD(64), 4)), true},
		{"partial SKESK", cat(partialPkt(tagSKESK, fakeESK(40), 4), pkt(tagSEIPD, fakeSEIPD(40))), false},
		{"legacy header", cat([]byte{0x84, 30}, fakeESK(30), pkt(tagSEIPD, fakeSEIPD(40))), false},
		{"bit 7 clear", cat([]byte{0x41, 30}, fakeESK(30), pkt(tagSEIPD, fakeSEIPD(40))), false},
		{"padding packet after SEIPD", cat(esk, pkt(tagSEIPD, fakeSEIPD(40)), pkt(21, []byte{0})), false},
		{"SED (tag 9) instead of SEIPD", cat(esk, pkt(9, fakeSEIPD(40))), false},
		{"compressed (tag 8)", cat(pkt(8, fakeESK(10))), false},
		{"only ESKs", cat(esk, esk), false},
		{"nothing", nil, false},
		{"header only", []byte{0xd2}, false},
		{"length cut short", []byte{0xd2, 0xff, 0, 0}, false},
		{"partial without final length", cat(esk, []byte{0xe0 + 2, 1, 0, 0, 0}), false},
		{"SEIPD version 0", cat(esk, pkt(tagSEIPD, []byte{0, 1, 2})), false},
	} {
		var p packetWalker
		_, err := p.Write(tc.data)
		if err == nil {
			err = p.Close()
		}
		if (err == nil) != tc.ok || refEncryptedPackets(tc.data) != tc.ok {
			t.Errorf("%s: walker %v, reference %v, want ok=%v", tc.name, err, refEncryptedPackets(tc.data), tc.ok)
		}
	}
}
