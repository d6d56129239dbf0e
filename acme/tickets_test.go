package acme

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/testclock"
)

// serveOnce accepts TLS connections on a fresh listener with m's config
// and writes one byte on each, so that the client reads the TLS 1.3
// session ticket that follows the handshake.
func serveOnce(t *testing.T, m *Manager) string {
	t.Helper()
	ln := tls.NewListener(listen(t), m.TLSConfig())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitTimeout))
				c.Write([]byte{'x'})
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// resumes connects with the client's session cache and tells whether the
// handshake resumed a session.
func resumes(t *testing.T, addr string, cache tls.ClientSessionCache) bool {
	t.Helper()
	d := &net.Dialer{Timeout: waitTimeout}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		ServerName:         "_relay.example",
		InsecureSkipVerify: true,
		ClientSessionCache: cache,
		NextProtos:         []string{ALPNIMAP},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return c.ConnectionState().DidResume
}

func TestSessionTicketsResumeAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Mode: ModeSelfSigned, Domain: "_relay.example", DataDir: dir, Logger: testLogger(t)}
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cache := tls.NewLRUClientSessionCache(8)
	addr := serveOnce(t, first)
	if resumes(t, addr, cache) {
		t.Fatal("the first connection resumed")
	}
	if !resumes(t, addr, cache) {
		t.Fatal("a second connection to the same server did not resume")
	}
	fi, err := os.Stat(filepath.Join(dir, "tls", ticketKeysName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("ticket key file mode %v, want 0600", fi.Mode().Perm())
	}

	// A restart: a new Manager on the same data directory.
	second, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !resumes(t, serveOnce(t, second), cache) {
		t.Fatal("after a restart the client's ticket did not resume")
	}

	// Another relay's keys do not open it.
	cfg.DataDir = t.TempDir()
	other, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if resumes(t, serveOnce(t, other), cache) {
		t.Fatal("a relay with other ticket keys resumed the session")
	}
}

func TestSessionTicketKeysRotate(t *testing.T) {
	dir := t.TempDir()
	clock := testclock.New(time.Now())
	cfg := Config{Mode: ModeSelfSigned, Domain: "_relay.example", DataDir: dir, Logger: testLogger(t), Now: clock.Now}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveOnce(t, m)
	// Two clients with tickets under the first key (a resumed session
	// gets a new ticket, so each check below uses up one client).
	old, older := tls.NewLRUClientSessionCache(8), tls.NewLRUClientSessionCache(8)
	resumes(t, addr, old)
	resumes(t, addr, older)
	keyFile := filepath.Join(dir, "tls", ticketKeysName)
	first, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}

	clock.Advance(25 * time.Hour)
	fresh := tls.NewLRUClientSessionCache(8)
	resumes(t, addr, fresh) // a ticket under a new key
	second, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(second) != 2*ticketRecordLen || string(second[ticketRecordLen:]) != string(first) {
		t.Fatalf("after a day the key file holds %d bytes, want the new key before the old one", len(second))
	}
	if !resumes(t, addr, old) {
		t.Fatal("a ticket of yesterday's key did not resume")
	}

	clock.Advance(48 * time.Hour) // the first key is 73 h old
	if resumes(t, addr, older) {
		t.Fatal("a ticket of a key past its time resumed")
	}
	if !resumes(t, addr, fresh) {
		t.Fatal("a ticket of the kept key did not resume")
	}
}
