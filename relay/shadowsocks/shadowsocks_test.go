package shadowsocks

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// EVP_BytesToKey(MD5) as OpenSSL computes it:
// `openssl enc -aes-256-cbc -k foobar -nosalt -md md5 -P`.
func TestEVPBytesToKeyMatchesOpenSSL(t *testing.T) {
	got := evpBytesToKey("foobar", 32)
	want := unhex(t, "3858f62230ac3c915f300c664312c63f568378529614d22ddb49237d2f60bfdf")
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x, want %x", got, want)
	}
}

// RFC 5869 test case 4 (HKDF-SHA1), the KDF of SIP004.
func TestHKDFSHA1Vector(t *testing.T) {
	okm, err := hkdf.Key(sha1.New, bytes.Repeat([]byte{0x0b}, 11), unhex(t, "000102030405060708090a0b0c"), string(unhex(t, "f0f1f2f3f4f5f6f7f8f9")), 42)
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, "085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2c22e422478d305f3f896")
	if !bytes.Equal(okm, want) {
		t.Fatalf("got %x", okm)
	}
}

// The official BLAKE3 derive_key vectors (test_vectors.json, inputs of
// length 0 and 1), the KDF of SIP022.
func TestBLAKE3DeriveKeyVectors(t *testing.T) {
	const ctx = "BLAKE3 2019-12-27 16:29:52 test vectors context"
	for in, want := range map[int]string{
		0: "2cc39783c223154fea8dfb7c1b1660f2ac2dcbd1c1de8277b0b0dd39b7e50d7d",
		1: "b3e2e340a117a499c6cf2398a19ee0d29cca2bb7404c73063382693bf66cb06c",
	} {
		out := make([]byte, 32)
		input := make([]byte, in) // the vectors' input is 0, 1, 2, ... mod 251
		blake3.DeriveKey(ctx, input, out)
		if hex.EncodeToString(out) != want {
			t.Fatalf("input %d: got %x", in, out)
		}
	}
}

// The subkeys are the spec's formulas over our master keys.
func TestSubkeyDerivation(t *testing.T) {
	salt := bytes.Repeat([]byte{7}, saltSize)
	k, _ := ParseKey(Chacha20, "foobar")
	got, _ := k.subkey(salt)
	want, _ := hkdf.Key(sha1.New, evpBytesToKey("foobar", 32), salt, "ss-subkey", 32)
	if !bytes.Equal(got, want) {
		t.Fatal("SIP004 subkey differs")
	}
	psk := bytes.Repeat([]byte{1}, 32)
	k2, err := ParseKey(AES2022, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
	if err != nil {
		t.Fatal(err)
	}
	got, _ = k2.subkey(salt)
	want = make([]byte, 32)
	blake3.DeriveKey("shadowsocks 2022 session subkey", append(append([]byte(nil), psk...), salt...), want)
	if !bytes.Equal(got, want) {
		t.Fatal("SIP022 subkey differs")
	}
}

func TestParseKeyRefusesBadKeys(t *testing.T) {
	for _, c := range [][2]string{
		{AES2022, "short"}, {AES2022, "AQEB"}, {Chacha20, ""}, {"aes-128-cfb", "x"}, {"", "x"},
	} {
		if _, err := ParseKey(c[0], c[1]); err == nil {
			t.Errorf("ParseKey(%q, %q) accepted", c[0], c[1])
		}
	}
}

func TestURLRoundTrip(t *testing.T) {
	for _, m := range Methods() {
		k, _ := NewKey(m)
		u := URL(k, "relay.example", 8388, "chatrelay relay.example")
		k2, host, port, err := ParseURL(u)
		if err != nil || k2.Method != m || k2.Password != k.Password || host != "relay.example" || port != 8388 {
			t.Fatalf("%s: %s -> %+v %s %d %v", m, u, k2, host, port, err)
		}
	}
	// SIP002's own example, base64url userinfo of a classic method.
	if _, _, _, err := ParseURL("ss://Y2hhY2hhMjAtaWV0Zi1wb2x5MTMwNTpwYXNz@192.168.100.1:8888#Example"); err != nil {
		t.Fatal(err)
	}
	// The 2022 form: method:password percent-encoded, not base64.
	k, _ := ParseKey(AES2022, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
	if got := URL(k, "203.0.113.7", 443, ""); got != "ss://2022-blake3-aes-256-gcm:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE%3D@203.0.113.7:443" {
		t.Fatal(got)
	}
}

// harness runs a server on loopback whose routes echo.
type harness struct {
	t       *testing.T
	srv     *Server
	addr    string
	mu      sync.Mutex
	keys    []Key
	refused chan string
	now     func() time.Time
}

func newHarness(t *testing.T, opts Options, keys ...Key) *harness {
	h := &harness{t: t, keys: keys, refused: make(chan string, 100), now: time.Now}
	if opts.Keys == nil {
		opts.Keys = func() []Key {
			h.mu.Lock()
			defer h.mu.Unlock()
			return h.keys
		}
	}
	if opts.Route == nil {
		opts.Route = func(tg Target) func(net.Conn) {
			if tg.Host != "echo.test" || tg.Port != 7 {
				return nil
			}
			return func(c net.Conn) {
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}
	}
	if opts.HandshakeTimeout == 0 {
		opts.HandshakeTimeout = 500 * time.Millisecond
	}
	opts.Refused = func(r string) { h.refused <- r }
	if opts.Now == nil {
		opts.Now = func() time.Time { return h.now() }
	}
	h.srv = NewServer(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { h.srv.Serve(ln); close(done) }()
	t.Cleanup(func() { ln.Close(); <-done; h.srv.Close() })
	return h
}

func (h *harness) dial() net.Conn {
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

func (h *harness) wantRefused(reason string) {
	h.t.Helper()
	select {
	case r := <-h.refused:
		if r != reason {
			h.t.Fatalf("refused for %q, want %q", r, reason)
		}
	case <-time.After(30 * time.Second):
		h.t.Fatalf("no refusal (want %q)", reason)
	}
}

// wantSilence: the server sends nothing and closes only after its
// handshake timeout, however the probe ended.
func wantSilence(t *testing.T, c net.Conn, start time.Time, timeout time.Duration) {
	t.Helper()
	b := make([]byte, 64)
	n, err := c.Read(b)
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("probe got %d bytes %q, err %v; want silence then EOF", n, b[:n], err)
	}
	if el := time.Since(start); el < timeout {
		t.Fatalf("closed after %v, before the handshake timeout %v", el, timeout)
	}
}

func roundTrip(t *testing.T, h *harness, k Key, msg []byte) {
	t.Helper()
	c, err := Client(h.dial(), k, Target{Host: "echo.test", Port: 7}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
}

func TestRoundTripBothMethods(t *testing.T) {
	for _, m := range Methods() {
		t.Run(m, func(t *testing.T) {
			k, _ := NewKey(m)
			h := newHarness(t, Options{}, k)
			// Small, a chunk's worth, and more than the largest chunk.
			for _, n := range []int{1, 100, maxChunk2017 + 1, 3*maxChunk2022 + 5} {
				msg := make([]byte, n)
				for i := range msg {
					msg[i] = byte(i * 7)
				}
				roundTrip(t, h, k, msg)
			}
		})
	}
}

// A rotated key stays valid while the server lists it.
func TestOldKeyDuringGrace(t *testing.T) {
	oldK, _ := NewKey(Chacha20)
	newK, _ := NewKey(AES2022)
	h := newHarness(t, Options{}, newK, oldK)
	roundTrip(t, h, oldK, []byte("old"))
	roundTrip(t, h, newK, []byte("new"))
	h.mu.Lock()
	h.keys = []Key{newK} // grace over
	h.mu.Unlock()
	// Timed from before the dial: the server's clock starts at accept.
	start := time.Now()
	c, _ := Client(h.dial(), oldK, Target{Host: "echo.test", Port: 7}, nil)
	c.Write([]byte("hello"))
	h.wantRefused(RefusedAuth)
	wantSilence(t, c, start, 500*time.Millisecond)
}

func TestProbesGetSilence(t *testing.T) {
	k, _ := NewKey(AES2022)
	other, _ := NewKey(AES2022)
	ck, _ := NewKey(Chacha20)
	const timeout = 500 * time.Millisecond
	h := newHarness(t, Options{HandshakeTimeout: timeout}, k, ck)
	cases := []struct {
		name, reason string
		send         func(c net.Conn)
	}{
		{"random bytes", RefusedAuth, func(c net.Conn) {
			b := make([]byte, 300)
			for i := range b {
				b[i] = byte(i*31 + 5)
			}
			c.Write(b)
		}},
		{"wrong key", RefusedAuth, func(c net.Conn) {
			cc, _ := Client(c, other, Target{Host: "echo.test", Port: 7}, nil)
			cc.Write([]byte("x"))
		}},
		{"HTTP request", RefusedAuth, func(c net.Conn) {
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"+string(bytes.Repeat([]byte("a"), 100)))
		}},
		{"short first packet", RefusedTimeout, func(c net.Conn) { c.Write(make([]byte, 20)) }},
		{"nothing", RefusedTimeout, func(c net.Conn) {}},
		{"stale timestamp", RefusedTimestamp, func(c net.Conn) {
			cc, _ := Client(c, k, Target{Host: "echo.test", Port: 7}, func() time.Time { return time.Now().Add(-31 * time.Second) })
			cc.Write([]byte("x"))
		}},
		{"future timestamp", RefusedTimestamp, func(c net.Conn) {
			cc, _ := Client(c, k, Target{Host: "echo.test", Port: 7}, func() time.Time { return time.Now().Add(40 * time.Second) })
			cc.Write([]byte("x"))
		}},
		{"target refused (2022)", RefusedTarget, func(c net.Conn) {
			cc, _ := Client(c, k, Target{Host: "example.org", Port: 443}, nil)
			cc.Write([]byte("x"))
		}},
		{"target refused (SIP004)", RefusedTarget, func(c net.Conn) {
			cc, _ := Client(c, ck, Target{Host: "127.0.0.1", Port: 9150}, nil)
			cc.Write([]byte("x"))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := h.dial()
			tc.send(c)
			h.wantRefused(tc.reason)
			wantSilence(t, c, start, timeout)
		})
	}
}

// A recorded first packet sent again is refused, for both methods, and
// a client's bytes reflected back as a request are too.
func TestReplayRefused(t *testing.T) {
	for _, m := range Methods() {
		t.Run(m, func(t *testing.T) {
			k, _ := NewKey(m)
			h := newHarness(t, Options{}, k)
			rec := &recorder{Conn: h.dial()}
			c, _ := Client(rec, k, Target{Host: "echo.test", Port: 7}, nil)
			c.Write([]byte("once"))
			got := make([]byte, 4)
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "once" {
				t.Fatalf("first: %q %v", got, err)
			}
			start := time.Now()
			replay := h.dial()
			replay.Write(rec.sent.Bytes())
			h.wantRefused(RefusedReplay)
			wantSilence(t, replay, start, 500*time.Millisecond)
		})
	}
}

// A replayed salt is still refused late in the window, and the filter
// lets it go only after the window.
func TestReplayFilterWindow(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	f := newReplayFilter(time.Hour, func() time.Time { return now })
	a, b := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	if !f.add(a) {
		t.Fatal("new salt refused")
	}
	for _, step := range []time.Duration{30 * time.Minute, 29 * time.Minute, 2 * time.Minute, 50 * time.Minute} {
		now = now.Add(step)
		if f.add(a) {
			t.Fatalf("salt forgotten %v into the window", step)
		}
	}
	f.add(b)
	now = now.Add(2*time.Hour + time.Second)
	if !f.add(a) || !f.add(b) {
		t.Fatal("salt kept past twice the window")
	}
}

func TestPerIPCap(t *testing.T) {
	k, _ := NewKey(AES2022)
	h := newHarness(t, Options{MaxConnsPerIP: 2, HandshakeTimeout: 60 * time.Second}, k)
	c1, c2 := h.dial(), h.dial()
	_ = c1
	_ = c2
	// Both wait in the handshake; a third from the same address is closed
	// at once.
	c3 := h.dial()
	h.wantRefused(RefusedPerIP)
	b := make([]byte, 1)
	if n, err := c3.Read(b); n != 0 || err == nil {
		t.Fatalf("third connection: %d %v", n, err)
	}
}

type recorder struct {
	net.Conn
	sent bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.sent.Write(p)
	return r.Conn.Write(p)
}
