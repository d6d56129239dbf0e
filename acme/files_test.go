package acme

import (
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"
)

func writePair(t *testing.T, certPath, keyPath string, names ...string) {
	t.Helper()
	certPEM, keyPEM, err := SelfSignedCert(names, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
}

// servedNames handshakes with addr without verification and returns the
// names on the certificate it was given.
func servedNames(t *testing.T, addr string) []string {
	t.Helper()
	cs, err := dialTLS(addr, &tls.Config{ServerName: "relay.example", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	return cs.PeerCertificates[0].DNSNames
}

func TestFilesReloadedWhenReplaced(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	writePair(t, certPath, keyPath, "relay.example", "old.relay.example")

	m, err := New(Config{Mode: ModeFiles, CertFile: certPath, KeyFile: keyPath,
		ReloadInterval: time.Nanosecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	serveHandshakes(t, ln)
	addr := ln.Addr().String()
	if got := servedNames(t, addr); len(got) != 2 || got[1] != "old.relay.example" {
		t.Fatalf("served %v", got)
	}
	if m.SelfSigned() || m.Status().Mode != ModeFiles {
		t.Errorf("status %+v", m.Status())
	}

	changed := m.Changed()
	writePair(t, certPath, keyPath, "relay.example", "new.relay.example")
	if got := servedNames(t, addr); len(got) != 2 || got[1] != "new.relay.example" {
		t.Fatalf("after replacing the files: served %v", got)
	}
	select {
	case <-changed:
	default:
		t.Error("reload did not signal Changed")
	}

	// A half-written replacement (a key that does not match) keeps the
	// last good pair in service.
	certPEM, _, _ := SelfSignedCert([]string{"broken.relay.example"}, nil, time.Hour)
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := servedNames(t, addr); len(got) != 2 || got[1] != "new.relay.example" {
		t.Fatalf("after a broken replacement: served %v", got)
	}
}

func TestFilesModeNeedsReadableFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := New(Config{Mode: ModeFiles, CertFile: filepath.Join(dir, "a"), KeyFile: filepath.Join(dir, "b")})
	if err == nil {
		t.Fatal("missing files accepted")
	}
}

func TestTLSConfigALPNAndVersions(t *testing.T) {
	m, client := selfSignedManager(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	serveHandshakes(t, ln)
	addr := ln.Addr().String()

	for _, tt := range []struct {
		offer []string
		want  string
	}{
		{[]string{"imap"}, "imap"}, // Delta Chat on every IMAP port but 993
		{[]string{"smtp"}, "smtp"},
		{nil, ""},
		{[]string{"h2", "http/1.1"}, "h2"},
	} {
		cfg := client.Clone()
		cfg.NextProtos = tt.offer
		cs, err := dialTLS(addr, cfg)
		if err != nil {
			t.Errorf("ALPN %v: %v", tt.offer, err)
			continue
		}
		if cs.NegotiatedProtocol != tt.want {
			t.Errorf("ALPN %v: negotiated %q, want %q", tt.offer, cs.NegotiatedProtocol, tt.want)
		}
	}

	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		cfg := client.Clone()
		cfg.MinVersion, cfg.MaxVersion = v, v
		if _, err := dialTLS(addr, cfg); err == nil {
			t.Errorf("TLS version %x accepted", v)
		}
	}
	cfg := client.Clone()
	cfg.MaxVersion = tls.VersionTLS12
	if cs, err := dialTLS(addr, cfg); err != nil || cs.Version != tls.VersionTLS12 {
		t.Errorf("TLS 1.2: %v", err)
	}
}

// The acme-tls/1 ALPN is listed (so TLS-ALPN-01 can be answered on any
// listener) yet, outside "auto", such a handshake just gets the served
// certificate: there is no challenge to answer.
func TestTLSConfigWithoutACME(t *testing.T) {
	m, client := selfSignedManager(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	serveHandshakes(t, ln)
	cfg := client.Clone()
	cfg.NextProtos = []string{ALPNACME}
	if _, err := dialTLS(ln.Addr().String(), cfg); err != nil {
		t.Fatal(err)
	}
}
