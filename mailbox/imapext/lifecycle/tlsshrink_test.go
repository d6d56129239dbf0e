package lifecycle

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// gate passes the client's bytes to the server: all of them (allow < 0),
// or as many as allowed.
type gate struct {
	mu    sync.Mutex
	cond  sync.Cond
	allow int
}

func (g *gate) set(n int) {
	g.mu.Lock()
	g.allow = n
	g.cond.Broadcast()
	g.mu.Unlock()
}

// tlsPair is a TLS connection over pipes; the client's bytes pass the gate.
func tlsPair(t *testing.T) (client, server *tls.Conn, g *gate) {
	t.Helper()
	cert := testCert(t)
	c1, c2 := net.Pipe() // client side
	s1, s2 := net.Pipe() // server side
	t.Cleanup(func() { c1.Close(); c2.Close(); s1.Close(); s2.Close() })
	g = &gate{allow: -1}
	g.cond.L = &g.mu
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, err := c2.Read(buf)
			if err != nil {
				return
			}
			for data := buf[:k]; len(data) > 0; {
				g.mu.Lock()
				for g.allow == 0 {
					g.cond.Wait()
				}
				m := len(data)
				if g.allow > 0 {
					m = min(m, g.allow)
					g.allow -= m
				}
				g.mu.Unlock()
				if _, err := s2.Write(data[:m]); err != nil {
					return
				}
				data = data[m:]
			}
		}
	}()
	go io.Copy(c2, s2) // server to client
	client = tls.Client(c1, &tls.Config{InsecureSkipVerify: true})
	server = tls.Server(s1, &tls.Config{Certificates: []tls.Certificate{cert}})
	done := make(chan error, 1)
	go func() { done <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return client, server, g
}

func readN(t *testing.T, c *tls.Conn, n int) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The handshake's buffers go, and the connection goes on in both
// directions; buffers holding bytes stay.
func TestShrinkTLS(t *testing.T) {
	if !tlsShrinks {
		t.Skip("shrinkTLS is reviewed for Go 1.26 only (tlsshrink.go): review crypto/tls of this release")
	}
	if !tlsFields.ok {
		t.Fatal("crypto/tls no longer has rawInput, input and hand as bytes.Buffer/Reader: shrinkTLS does nothing")
	}
	client, server, g := tlsPair(t)
	go client.Write([]byte("hello"))
	if got := readN(t, server, 5); got != "hello" {
		t.Fatalf("got %q", got)
	}
	if n := shrinkTLS(server); n < 1024 {
		t.Fatalf("shrinkTLS let %d bytes go, want the handshake's buffers", n)
	}
	if n := shrinkTLS(server); n != 0 {
		t.Fatalf("again: %d bytes", n)
	}
	go client.Write([]byte("after the shrink"))
	if got := readN(t, server, 16); got != "after the shrink" {
		t.Fatalf("got %q", got)
	}
	go server.Write([]byte("and back"))
	if got := readN(t, client, 8); got != "and back" {
		t.Fatalf("got %q", got)
	}

	// Plaintext not read yet stays.
	go client.Write([]byte("abcdef"))
	if got := readN(t, server, 2); got != "ab" {
		t.Fatalf("got %q", got)
	}
	if n := shrinkTLS(server); n != 0 {
		t.Fatalf("shrank with plaintext pending: %d bytes", n)
	}
	if got := readN(t, server, 4); got != "cdef" {
		t.Fatalf("got %q", got)
	}

	// So does a record that came in part.
	g.set(9) // the header and a little
	go client.Write([]byte("a record in two parts"))
	server.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := server.Read(make([]byte, 64)); !os.IsTimeout(err) {
		t.Fatalf("read of a partial record: %v", err)
	}
	if n := shrinkTLS(server); n != 0 {
		t.Fatalf("shrank with part of a record: %d bytes", n)
	}
	g.set(-1)
	if got := readN(t, server, 21); got != "a record in two parts" {
		t.Fatalf("got %q", got)
	}
}

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.test"},
		DNSNames:     []string{"relay.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
