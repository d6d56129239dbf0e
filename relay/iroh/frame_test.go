package iroh

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

// testKey is a fixed node key, so that frames can be written out byte by
// byte.
func testKey(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

// TestClientInfoWireLayout spells out the first frame iroh 0.35 sends,
// byte by byte (protos/relay.rs: type 2, u32 BE length, "RELAY🔑", key,
// signature, postcard {version: 3} = 0x03).
func TestClientInfoWireLayout(t *testing.T) {
	priv := testKey(7)
	pub := priv.Public().(ed25519.PublicKey)
	sig := ed25519.Sign(priv, []byte{0x03})
	// Length 106: magic 9, key 32, signature 64, info 1.
	want := "02" + "0000006a" + hex.EncodeToString([]byte("RELAY")) + "f09f9491" +
		hex.EncodeToString(pub) + hex.EncodeToString(sig) + "03"
	got := hex.EncodeToString(AppendFrame(nil, FrameClientInfo, MarshalClientInfo(priv, ProtocolVersion)))
	if got != want {
		t.Fatalf("client info frame\n got %s\nwant %s", got, want)
	}
	typ, p, err := ReadFrame(bufio.NewReader(hex.NewDecoder(bytes.NewReader([]byte(want)))), MaxFrameSize)
	if err != nil || typ != FrameClientInfo {
		t.Fatalf("ReadFrame: %d %v", typ, err)
	}
	ci, err := ParseClientInfo(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ci.Key[:], pub) || ci.Version != 3 {
		t.Fatalf("client info %x v%d", ci.Key, ci.Version)
	}
}

func TestClientInfoRejects(t *testing.T) {
	priv := testKey(1)
	good := MarshalClientInfo(priv, ProtocolVersion)
	otherSig := MarshalClientInfo(testKey(2), ProtocolVersion)
	mixed := append([]byte{}, good...)
	copy(mixed[len(magic)+KeyLen:], otherSig[len(magic)+KeyLen:len(magic)+KeyLen+64])
	badMagic := append([]byte{}, good...)
	badMagic[0] = 'X'
	// A version varint that never ends, signed, so only the postcard
	// check can refuse it.
	unended := []byte{0x80}
	signed := func(msg []byte) []byte {
		out := append([]byte(magic), priv.Public().(ed25519.PublicKey)...)
		out = append(out, ed25519.Sign(priv, msg)...)
		return append(out, msg...)
	}
	for name, p := range map[string][]byte{
		"short":            good[:len(magic)+KeyLen+63],
		"bad magic":        badMagic,
		"other signature":  mixed,
		"truncated varint": signed(unended),
		"trailing bytes":   signed([]byte{0x03, 0x00}),
		"empty info":       signed(nil),
	} {
		if _, err := ParseClientInfo(p); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: got %v, want ErrFrame", name, err)
		}
	}
	// The key signs exactly the info: one changed byte of it fails.
	tampered := append([]byte{}, good...)
	tampered[len(tampered)-1] = 0x04
	if _, err := ParseClientInfo(tampered); !errors.Is(err, ErrFrame) {
		t.Errorf("tampered version: got %v", err)
	}
	if ci, err := ParseClientInfo(MarshalClientInfo(priv, 300)); err != nil || ci.Version != 300 {
		t.Errorf("version 300 (two-byte varint): %v %d", err, ci.Version)
	}
}

func TestParseClientFrame(t *testing.T) {
	key := bytes.Repeat([]byte{9}, KeyLen)
	tests := []struct {
		name string
		typ  byte
		p    []byte
		ok   bool
	}{
		{"send packet", FrameSendPacket, append(append([]byte{}, key...), "hello"...), true},
		{"send empty packet", FrameSendPacket, key, true},
		{"send largest packet", FrameSendPacket, append(append([]byte{}, key...), make([]byte, MaxPacketSize)...), true},
		{"send packet too large", FrameSendPacket, append(append([]byte{}, key...), make([]byte, MaxPacketSize+1)...), false},
		{"send packet short key", FrameSendPacket, key[:31], false},
		{"ping", FramePing, make([]byte, 8), true},
		{"ping short", FramePing, make([]byte, 7), false},
		{"pong long", FramePong, make([]byte, 9), false},
		{"keep alive", FrameKeepAlive, nil, true},
		{"keep alive with data", FrameKeepAlive, []byte{1}, false},
		{"note preferred", FrameNotePreferred, []byte{1}, true},
		{"note preferred bad", FrameNotePreferred, []byte{2}, false},
		{"health from client", FrameHealth, []byte("x"), false},
		{"recv packet from client", FrameRecvPacket, key, false},
		{"node gone from client", FrameNodeGone, key, false},
		{"restarting from client", FrameRestarting, make([]byte, 8), false},
		{"second client info", FrameClientInfo, MarshalClientInfo(testKey(1), 3), false},
		{"unknown type", 99, nil, false},
	}
	for _, tt := range tests {
		f, err := ParseClientFrame(tt.typ, tt.p)
		if tt.ok != (err == nil) {
			t.Errorf("%s: err %v", tt.name, err)
			continue
		}
		if err != nil && !errors.Is(err, ErrFrame) {
			t.Errorf("%s: error %v is not ErrFrame", tt.name, err)
		}
		if tt.ok && tt.typ == FrameSendPacket && (!bytes.Equal(f.Dst[:], key) || !bytes.Equal(f.Packet, tt.p[KeyLen:])) {
			t.Errorf("%s: dst %x packet %q", tt.name, f.Dst, f.Packet)
		}
	}
}

func TestReadFrameLimits(t *testing.T) {
	// A length above the limit is refused from the header alone.
	hdr := []byte{FrameSendPacket, 0x00, 0x10, 0x00, 0x01}
	_, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(hdr)), MaxFrameSize)
	if !errors.Is(err, ErrFrame) {
		t.Fatalf("oversize length: %v", err)
	}
	// A payload cut short is an unexpected EOF, not a frame.
	_, _, err = ReadFrame(bufio.NewReader(bytes.NewReader([]byte{FramePing, 0, 0, 0, 8, 1, 2})), MaxFrameSize)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short payload: %v", err)
	}
	// Two frames back to back come out one by one.
	var b []byte
	b = AppendFrame(b, FramePing, []byte("12345678"))
	b = AppendFrame(b, FrameKeepAlive)
	r := bufio.NewReader(bytes.NewReader(b))
	if typ, p, err := ReadFrame(r, MaxFrameSize); err != nil || typ != FramePing || string(p) != "12345678" {
		t.Fatalf("first: %d %q %v", typ, p, err)
	}
	if typ, p, err := ReadFrame(r, MaxFrameSize); err != nil || typ != FrameKeepAlive || len(p) != 0 {
		t.Fatalf("second: %d %q %v", typ, p, err)
	}
}

// FuzzFrameDecoder feeds arbitrary bytes through the decoder the server
// runs on every client stream: it must never panic, never return a
// payload above its limit, and every frame it accepts must encode back to
// the bytes it came from.
func FuzzFrameDecoder(f *testing.F) {
	key := bytes.Repeat([]byte{5}, KeyLen)
	f.Add(AppendFrame(nil, FrameClientInfo, MarshalClientInfo(testKey(3), 3)))
	f.Add(AppendFrame(nil, FrameSendPacket, key, []byte("packet")))
	f.Add(AppendFrame(AppendFrame(nil, FramePing, []byte("abcdefgh")), FrameKeepAlive))
	f.Add([]byte{FrameSendPacket, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{99, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		const limit = KeyLen + MaxPacketSize
		r := bufio.NewReader(bytes.NewReader(in))
		var out []byte
		for i := 0; i < 64; i++ {
			typ, p, err := ReadFrame(r, limit)
			if err != nil {
				break
			}
			if len(p) > limit {
				t.Fatalf("payload of %d bytes", len(p))
			}
			out = AppendFrame(out, typ, p)
			if typ == FrameClientInfo {
				ParseClientInfo(p)
				continue
			}
			if f, err := ParseClientFrame(typ, p); err == nil && f.Type == FrameSendPacket && len(f.Packet) > MaxPacketSize {
				t.Fatalf("packet of %d bytes accepted", len(f.Packet))
			}
		}
		if !bytes.HasPrefix(in, out) {
			t.Fatalf("decoded frames do not re-encode to the input")
		}
	})
}
