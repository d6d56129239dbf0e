package policy

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func FuzzOutgoing(f *testing.F) {
	for _, c := range policyCases(f) {
		f.Add([]byte(c.msg))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		env := Envelope{From: alice, To: []string{bob}}
		var out bytes.Buffer
		if rep := Outgoing(env, bytes.NewReader(msg), &out); rep != nil {
			checkReply(t, rep)
			return
		}
		checkCRLF(t, out.Bytes())
		// What went out passes again, unchanged: the clean-up is
		// idempotent and keeps what the check needs.
		var again bytes.Buffer
		if rep := Outgoing(env, bytes.NewReader(out.Bytes()), &again); rep != nil {
			t.Fatalf("output refused: %v (%s)", rep, rep.Reason())
		}
		if !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("second pass changed the output")
		}
	})
}

func FuzzIncoming(f *testing.F) {
	for _, c := range policyCases(f) {
		f.Add([]byte(c.msg))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		env := Envelope{From: alice, To: []string{bob}}
		var out bytes.Buffer
		v, rep := Incoming(env, bytes.NewReader(msg), &out)
		if rep != nil {
			checkReply(t, rep)
			if v != (Verdict{}) {
				t.Fatalf("refusal with a verdict: %+v", v)
			}
			return
		}
		checkCRLF(t, out.Bytes())
		if v.Kind < Encrypted || v.Kind > Bounce || v.From == "" || v.From != strings.ToLower(v.From) {
			t.Fatalf("bad verdict %+v", v)
		}
		var again bytes.Buffer
		v2, rep := Incoming(env, bytes.NewReader(out.Bytes()), &again)
		if rep != nil || v2 != v || !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("second pass: %+v %v, first %+v", v2, rep, v)
		}
		// APPEND copies byte for byte what it accepts.
		var app bytes.Buffer
		if rep := Append(alice, bytes.NewReader(msg), &app); rep == nil && !bytes.Equal(app.Bytes(), msg) {
			t.Fatalf("Append changed the message")
		}
	})
}

// FuzzArmorPackets checks the streaming packet walker against a plain
// reading of the whole sequence, fed in chunks of every size, and through
// the armor at every line width.
func FuzzArmorPackets(f *testing.F) {
	esk := pkt(tagPKESK, fakeESK(20))
	seipd := pkt(tagSEIPD, fakeSEIPD(50))
	for _, seed := range [][]byte{
		append(esk, seipd...),
		seipd,
		append(append(esk, pkt(tagSKESK, fakeESK(10))...), seipd...),
		append(esk, partialPkt(tagSEIPD, fakeSEIPD(100), 5)...),
		append(esk, partialPkt(tagSEIPD, fakeSEIPD(64), 5)...),
		append(append(esk, seipd...), 0xca, 0x03, 'P', 'G', 'P'),
		append([]byte{0x84, 20}, fakeESK(20)...),
		{0xd2, 0xff, 0, 0, 0, 2, 1, 0},
		{0xd2, 0xe0, 1, 0xe1, 0, 0, 0},
		{},
	} {
		f.Add(seed, uint8(63))
		f.Add(seed, uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		want := refEncryptedPackets(data)

		var whole packetWalker
		_, err := whole.Write(data)
		if err == nil {
			err = whole.Close()
		}
		if (err == nil) != want {
			t.Fatalf("walker says %v, reference says %v", err, want)
		}

		chunk := int(split)%16 + 1
		var parts packetWalker
		err = nil
		for b := data; len(b) > 0 && err == nil; {
			n := min(chunk, len(b))
			_, err = parts.Write(b[:n])
			b = b[n:]
		}
		if err == nil {
			err = parts.Close()
		}
		if (err == nil) != want {
			t.Fatalf("walker in chunks of %d says %v, reference says %v", chunk, err, want)
		}

		width := int(split)%76 + 1
		a := armorChecker{strict: true}
		err = nil
		for _, l := range armorLines(data, width) {
			if err = a.line([]byte(l)); err != nil {
				break
			}
		}
		if err == nil {
			err = a.end()
		}
		if (err == nil) != want {
			t.Fatalf("armor with lines of %d says %v, reference says %v", width, err, want)
		}
	})
}

// armorLines armors data with base64 lines of width characters. Padding
// stays on the last data line, which armorChecker requires.
func armorLines(data []byte, width int) []string {
	b64 := base64.RawStdEncoding.EncodeToString(data)
	pad := strings.Repeat("=", (4-len(b64)%4)%4)
	lines := []string{"", string(armorBegin), ""}
	for len(b64) > width {
		lines = append(lines, b64[:width])
		b64 = b64[width:]
	}
	if b64 != "" {
		lines = append(lines, b64+pad)
	}
	return append(lines, string(armorEnd), "")
}

// refEncryptedPackets reads a whole packet sequence the simple way: is it
// PKESK or SKESK packets followed by one non-empty SEIPD packet of
// version 1 or 2, in OpenPGP format headers, and nothing else?
func refEncryptedPackets(b []byte) bool {
	for len(b) > 0 {
		c := b[0]
		b = b[1:]
		tag := c & 0x3f
		if c&0xc0 != 0xc0 || (tag != tagPKESK && tag != tagSKESK && tag != tagSEIPD) {
			return false
		}
		var body []byte
		for {
			if len(b) == 0 {
				return false
			}
			o := b[0]
			var n uint64
			partial := false
			switch {
			case o < 192:
				n, b = uint64(o), b[1:]
			case o < 224:
				if len(b) < 2 {
					return false
				}
				n, b = (uint64(o)-192)<<8+uint64(b[1])+192, b[2:]
			case o == 255:
				if len(b) < 5 {
					return false
				}
				n = uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(b[4])
				b = b[5:]
			default:
				if tag != tagSEIPD {
					return false
				}
				n, partial, b = 1<<(o&0x1f), true, b[1:]
			}
			if uint64(len(b)) < n {
				return false
			}
			body = append(body, b[:n]...)
			b = b[n:]
			if !partial {
				break
			}
		}
		if tag == tagSEIPD {
			return len(b) == 0 && len(body) > 0 && (body[0] == 1 || body[0] == 2)
		}
	}
	return false
}

// checkReply fails on a refusal that is not a well-formed SMTP reply.
func checkReply(t *testing.T, r *Reply) {
	t.Helper()
	if r.Code < 400 || r.Code > 599 || r.Enhanced[0] != r.Code/100 || r.Text == "" ||
		strings.ContainsAny(r.Text, "\r\n") {
		t.Fatalf("bad reply %#v", r)
	}
}
