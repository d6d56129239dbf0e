package relay

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/acme"
)

func gateTestCert(t *testing.T) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := acme.SelfSignedCert([]string{"gate.test"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// gateServer accepts connections as the relay does (limitedConn) and runs
// a TLS handshake on each with conf; it returns the address and a channel
// of handshake results.
func gateServer(t *testing.T, conf *tls.Config) (string, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 64)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			lc := &limitedConn{Conn: c, release: func() {}}
			wg.Go(func() {
				defer lc.Close()
				tc := tls.Server(lc, conf)
				lc.SetDeadline(time.Now().Add(30 * time.Second))
				err := tc.Handshake()
				if err == nil && lc.gate.Load() != nil {
					err = errors.New("still gated after the handshake")
				}
				if err == nil {
					// One byte back and forth after the handshake.
					b := make([]byte, 1)
					if _, err = tc.Read(b); err == nil {
						_, err = tc.Write(b)
					}
				}
				results <- err
			})
		}
	})
	return ln.Addr().String(), results
}

func gateClient(addr string) error {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{InsecureSkipVerify: true, ServerName: "gate.test"}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

// With one slot, the work after a ClientHello (here: choosing the
// certificate, where a test can hold a handshake) runs for one handshake
// at a time, and every handshake still completes.
func TestHandshakeGateOneAtATime(t *testing.T) {
	cert := gateTestCert(t)
	g := newHandshakeGate(1)
	var cur, most atomic.Int32
	entered := make(chan struct{}, 16)
	proceed := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(proceed) }) }
	conf := g.wrap(&tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		n := cur.Add(1)
		defer cur.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		entered <- struct{}{}
		<-proceed
		return &cert, nil
	}})
	addr, results := gateServer(t, conf)
	t.Cleanup(open) // runs before gateServer's, which waits for the handshakes
	const n = 4
	clientErrs := make(chan error, n)
	for range n {
		go func() { clientErrs <- gateClient(addr) }()
	}
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatal("no handshake reached the certificate")
	}
	// The first holds the only slot: nobody else may get to the
	// certificate while it does.
	select {
	case <-entered:
		t.Fatal("a second handshake computed while the first held the only slot")
	case <-time.After(300 * time.Millisecond):
	}
	open()
	for i := range n {
		if err := <-clientErrs; err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if err := <-results; err != nil {
			t.Fatalf("server %d: %v", i, err)
		}
	}
	if m := most.Load(); m != 1 {
		t.Fatalf("%d handshakes computed at once, want 1", m)
	}
	if g.inUse() != 0 || g.gated.Load() != n || g.bypassed.Load() != 0 {
		t.Fatalf("after the handshakes: %d slots held, %d gated, %d bypassed; want 0, %d, 0", g.inUse(), g.gated.Load(), g.bypassed.Load(), n)
	}
}

// A client that stalls mid-handshake holds no slot while the server waits
// for it, so it cannot stop other handshakes; one that goes away gives its
// slot back. The staller offers a key share the server does not take, so
// the server computes, asks again (HelloRetryRequest: its first write,
// which ends the gating) and waits.
func TestHandshakeGateStalledClientHoldsNothing(t *testing.T) {
	cert := gateTestCert(t)
	g := newHandshakeGate(1)
	conf := g.wrap(&tls.Config{Certificates: []tls.Certificate{cert}, CurvePreferences: []tls.CurveID{tls.CurveP256}})
	addr, results := gateServer(t, conf)

	// A real ClientHello, captured from a client that is never answered.
	hello := make(chan []byte, 1)
	cc, sc := net.Pipe()
	go func() {
		b := make([]byte, 64<<10)
		n, _ := sc.Read(b)
		hello <- b[:n]
		sc.Close()
	}()
	go tls.Client(cc, &tls.Config{InsecureSkipVerify: true, ServerName: "gate.test", CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}).Handshake()
	ch := <-hello
	cc.Close()

	staller, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer staller.Close()
	if _, err := staller.Write(ch); err != nil {
		t.Fatal(err)
	}
	// The HelloRetryRequest arrives; the server now waits for a second
	// ClientHello, which never comes.
	staller.SetReadDeadline(time.Now().Add(20 * time.Second))
	hrr := make([]byte, 38)
	if _, err := io.ReadFull(staller, hrr); err != nil {
		t.Fatalf("no answer to the ClientHello: %v", err)
	}
	// RFC 8446 section 4.1.3: a HelloRetryRequest is a ServerHello with
	// this random (record header 5, handshake header 4, version 2).
	if !bytes.HasPrefix(hrr[11:], []byte{0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11}) {
		t.Fatalf("the server did not ask again: %x", hrr)
	}
	// If the server held its slot while it waits, the next handshake's
	// wait for one would run out (bypassed below).
	if err := gateClient(addr); err != nil {
		t.Fatalf("handshake beside a stalled one: %v", err)
	}
	if err := <-results; err != nil {
		t.Fatalf("server: %v", err)
	}
	staller.Close()
	if err := <-results; err == nil {
		t.Fatal("the stalled handshake succeeded")
	}
	if g.inUse() != 0 || g.bypassed.Load() != 0 || g.gated.Load() != 2 {
		t.Fatalf("%d slots held, %d bypassed, %d gated; want 0, 0, 2", g.inUse(), g.bypassed.Load(), g.gated.Load())
	}
}

// A wait for a slot ends: a slot that is never given back slows
// handshakes, it does not stop them.
func TestHandshakeGateWaitIsBounded(t *testing.T) {
	cert := gateTestCert(t)
	g := newHandshakeGate(1)
	g.maxWait = 50 * time.Millisecond
	g.slots <- struct{}{} // lost forever
	conf := g.wrap(&tls.Config{Certificates: []tls.Certificate{cert}})
	addr, results := gateServer(t, conf)
	if err := gateClient(addr); err != nil {
		t.Fatal(err)
	}
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	if g.bypassed.Load() == 0 {
		t.Fatal("no wait ran out")
	}
}

// Every kind of handshake ends the gating: TLS 1.2 (port 25 allows it)
// and 1.3, full and resumed (gateServer checks that the connection is no
// longer gated once its handshake is done).
func TestHandshakeGateEndsWithEveryKindOfHandshake(t *testing.T) {
	cert := gateTestCert(t)
	g := newHandshakeGate(1)
	conf := g.wrap(&tls.Config{Certificates: []tls.Certificate{cert}})
	addr, results := gateServer(t, conf)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cc := &tls.Config{InsecureSkipVerify: true, ServerName: "gate.test", MaxVersion: v, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
		for i, want := range []bool{false, true} {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cc)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write([]byte{'x'}); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Read(make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			if got := c.ConnectionState().DidResume; got != want || c.ConnectionState().Version != v {
				t.Fatalf("version %x, handshake %d: resumed %v, version %x", v, i, got, c.ConnectionState().Version)
			}
			c.Close()
			if err := <-results; err != nil {
				t.Fatalf("version %x, handshake %d: %v", v, i, err)
			}
		}
	}
	if g.inUse() != 0 || g.gated.Load() != 4 {
		t.Fatalf("%d slots held, %d gated; want 0, 4", g.inUse(), g.gated.Load())
	}
}
