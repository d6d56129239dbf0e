package acme

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/acme/acmetest"
)

// waitTimeout bounds every wait for an event in these tests; the events
// themselves come in well under a second on a quiet machine.
const waitTimeout = 60 * time.Second

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// testLogger logs to the test log while the test runs; certmagic's
// goroutines may outlive the test, and their late lines are dropped.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(acmetest.LogWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor waits until cond holds, re-checking whenever m reports a change.
func waitFor(t *testing.T, m *Manager, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		changed := m.Changed()
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; status %+v", what, m.Status())
		}
	}
}

// dialTLS handshakes with addr as a client would and returns the
// connection state.
func dialTLS(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	return c.ConnectionState(), nil
}

// serveHandshakes completes the TLS handshake of every connection to ln
// and closes it, until ln is closed.
func serveHandshakes(t *testing.T, ln net.Listener) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.(*tls.Conn).Handshake()
			})
		}
	})
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func isUnknownAuthority(err error) bool {
	var ua x509.UnknownAuthorityError
	return errors.As(err, &ua) || strings.Contains(err.Error(), "unknown authority")
}
