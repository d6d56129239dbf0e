package shadowsocks

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// fuzzKeys are fixed so that seeds stay valid between runs.
func fuzzKeys(t testing.TB) []Key {
	k1, err := ParseKey(AES2022, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := ParseKey(Chacha20, "fuzz-password")
	return []Key{k1, k2}
}

// pipeConn records what a client writes.
type sink struct {
	net.Conn
	buf bytes.Buffer
}

func (s *sink) Write(p []byte) (int, error) { return s.buf.Write(p) }

func request(t testing.TB, k Key, target Target, payload ...[]byte) []byte {
	s := &sink{}
	c, err := Client(s, k, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range payload {
		c.Write(p)
	}
	return s.buf.Bytes()
}

// FuzzHandshake feeds the server's decoder arbitrary first bytes (seeded
// with valid requests of both methods): it must never panic, and whatever
// it accepts must be a well-formed target with a stream that decodes to
// an end.
func FuzzHandshake(f *testing.F) {
	keys := fuzzKeys(f)
	for _, k := range keys {
		f.Add(request(f, k, Target{Host: "relay.example", Port: 993}, []byte("hello"), bytes.Repeat([]byte("x"), 70000)))
		f.Add(request(f, k, Target{Host: "192.0.2.1", Port: 443}, []byte("a")))
		f.Add(request(f, k, Target{Host: "2001:db8::1", Port: 465}, []byte("b")))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := NewServer(Options{Keys: func() []Key { return keys }, Now: time.Now})
		r, _, _, target, reason := s.handshake(bytes.NewReader(data))
		if reason != "" {
			if r != nil {
				t.Fatal("refused with a reader")
			}
			return
		}
		if target.Host == "" {
			t.Fatal("accepted an empty host")
		}
		if _, err := appendTarget(nil, target); err != nil && len(target.Host) <= 255 {
			t.Fatalf("accepted target %q does not encode: %v", target.Host, err)
		}
		// The rest decodes to EOF or an error, never forever.
		n, _ := io.Copy(io.Discard, io.LimitReader(r, int64(len(data))+1))
		if n > int64(len(data)) {
			t.Fatalf("decoded %d bytes from %d", n, len(data))
		}
	})
}
