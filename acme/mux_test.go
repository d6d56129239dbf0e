package acme

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// selfSignedManager is a "selfsigned" Manager for localhost and a client
// config that trusts its certificate.
func selfSignedManager(t *testing.T) (*Manager, *tls.Config) {
	t.Helper()
	m, err := New(Config{Mode: ModeSelfSigned, Domain: "localhost", DataDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return m, &tls.Config{ServerName: "localhost", RootCAs: poolOf(c.Leaf)}
}

func startMux(t *testing.T, m *Manager, handshakeTimeout time.Duration) *Mux {
	t.Helper()
	mux := NewMux(listen(t), m.TLSConfig())
	mux.HandshakeTimeout = handshakeTimeout
	served := make(chan error, 1)
	go func() { served <- mux.Serve() }()
	t.Cleanup(func() {
		mux.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve after Close: %v", err)
		}
	})
	return mux
}

func TestMuxRoutesByALPN(t *testing.T) {
	m, client := selfSignedManager(t)
	mux := startMux(t, m, 10*time.Second)
	addr := mux.ln.Addr().String()

	tests := []struct {
		name  string
		offer []string
		route net.Listener
		want  string // negotiated protocol
	}{
		{"imap", []string{"imap"}, mux.IMAP(), "imap"},
		{"smtp", []string{"smtp"}, mux.SMTP(), "smtp"},
		{"http/1.1", []string{"http/1.1"}, mux.HTTPS(), "http/1.1"},
		{"h2 preferred", []string{"h2", "http/1.1"}, mux.HTTPS(), "h2"},
		{"no ALPN", nil, mux.HTTPS(), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := client.Clone()
			cfg.NextProtos = tt.offer
			c, err := tls.Dial("tcp", addr, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := c.ConnectionState().NegotiatedProtocol; got != tt.want {
				t.Fatalf("client negotiated %q, want %q", got, tt.want)
			}
			// Say something the server side must read from the routed conn.
			if _, err := io.WriteString(c, tt.name); err != nil {
				t.Fatal(err)
			}
			sc, err := tt.route.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			tc, ok := sc.(*tls.Conn)
			if !ok {
				t.Fatalf("routed conn is %T, want *tls.Conn", sc)
			}
			if st := tc.ConnectionState(); !st.HandshakeComplete || st.NegotiatedProtocol != tt.want {
				t.Fatalf("server side: complete=%v proto=%q", st.HandshakeComplete, st.NegotiatedProtocol)
			}
			buf := make([]byte, len(tt.name))
			tc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != tt.name {
				t.Fatalf("read %q, %v", buf, err)
			}
		})
	}

	// A protocol nobody listed fails the handshake (Go's server refuses
	// rather than ignoring ALPN); it is not routed anywhere.
	cfg := client.Clone()
	cfg.NextProtos = []string{"pop3"}
	if _, err := dialTLS(addr, cfg); err == nil {
		t.Error("ALPN pop3 accepted")
	}
}

func TestMuxSlowHandshakeDoesNotBlockOthers(t *testing.T) {
	m, client := selfSignedManager(t)

	// A generous timeout: the stalled client is still being waited for
	// while the good one is served.
	mux := startMux(t, m, time.Minute)
	addr := mux.ln.Addr().String()
	stalled := make([]net.Conn, 3)
	for i := range stalled {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello, then nothing
		stalled[i] = c
	}
	cfg := client.Clone()
	cfg.NextProtos = []string{"imap"}
	if _, err := dialTLS(addr, cfg); err != nil {
		t.Fatalf("good client behind stalled ones: %v", err)
	}
	c, err := mux.IMAP().Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	stalled[0].SetReadDeadline(time.Now().Add(time.Millisecond))
	if _, err := stalled[0].Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled conn should still be waiting, read: %v", err)
	}

	// A short timeout: the stalled client is dropped.
	short := startMux(t, m, 100*time.Millisecond)
	sc, err := net.Dial("tcp", short.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := sc.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled conn not closed after the handshake timeout: %v", err)
	}
}

func TestIdleUnauthenticatedHandshakesEvictedForNewcomer(t *testing.T) {
	m, client := selfSignedManager(t)
	mux := NewMux(listen(t), m.TLSConfig())
	mux.HandshakeTimeout = time.Minute
	mux.MaxHandshakes = 3
	served := make(chan error, 1)
	go func() { served <- mux.Serve() }()
	t.Cleanup(func() { mux.Close(); <-served })
	addr := mux.ln.Addr().String()
	// Every handshake slot taken by a client that never finishes.
	stalled := make([]net.Conn, 3)
	for i := range stalled {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte{0x16, 0x03, 0x01})
		stalled[i] = c
	}
	// Each is in flight before the newcomer comes: a byte of a ClientHello
	// read is not observable, so wait until a 4th stalled one evicts the
	// 1st, proving the slots are full.
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	stalled[0].SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := stalled[0].Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("oldest stalled handshake not aborted for a newcomer: %v", err)
	}
	// A real client still gets through and is routed.
	cfg := client.Clone()
	cfg.NextProtos = []string{"imap"}
	if _, err := dialTLS(addr, cfg); err != nil {
		t.Fatalf("client behind a full set of stalled handshakes: %v", err)
	}
	c, err := mux.IMAP().Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestMuxCloseStopsEverything(t *testing.T) {
	m, _ := selfSignedManager(t)
	ln := listen(t)
	mux := NewMux(ln, m.TLSConfig())
	served := make(chan error, 1)
	go func() { served <- mux.Serve() }()
	accepted := make(chan error, 3)
	for _, l := range []net.Listener{mux.IMAP(), mux.SMTP(), mux.HTTPS()} {
		go func() { _, err := l.Accept(); accepted <- err }()
	}
	if err := mux.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(waitTimeout)
	for range 3 {
		select {
		case err := <-accepted:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Accept after Close: %v", err)
			}
		case <-deadline:
			t.Fatal("Accept did not return after Close")
		}
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-deadline:
		t.Fatal("Serve did not return after Close")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still accepting after Close")
	}
}
