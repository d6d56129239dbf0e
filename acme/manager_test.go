package acme

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

var localhostNames = []string{"localhost", "mta-sts.localhost", "www.localhost"}

// newAutoManager makes an "auto" Manager for localhost against the test
// CA, with retries fast enough for a test.
func newAutoManager(t *testing.T, ca *testCA, cfg Config) *Manager {
	t.Helper()
	cfg.Mode = ModeAuto
	cfg.Domain = "localhost"
	cfg.DataDir = t.TempDir()
	cfg.CA = ca.DirURL
	cfg.CARoots = ca.Trust
	cfg.RetryMin = 20 * time.Millisecond
	cfg.RetryMax = 200 * time.Millisecond
	cfg.Logger = testLogger(t)
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func start(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// allIssued: every name has its ACME certificate.
func allIssued(m *Manager) func() bool {
	return func() bool {
		st := m.Status()
		return !st.SelfSigned && len(st.Waiting) == 0 && st.LastError == ""
	}
}

// checkServedByCA dials addr for each name, verifying against the test
// CA's root as a strict client would.
func checkServedByCA(t *testing.T, addr string, ca *testCA, alpn []string, names ...string) {
	t.Helper()
	for _, name := range names {
		cs, err := dialTLS(addr, &tls.Config{ServerName: name, RootCAs: ca.Roots, NextProtos: alpn})
		if err != nil {
			t.Fatalf("%s at %s (ALPN %v): %v", name, addr, alpn, err)
		}
		if got := cs.PeerCertificates[0].Issuer.String(); got != ca.Issuing {
			t.Errorf("%s: issuer %q, want %q", name, got, ca.Issuing)
		}
	}
}

func TestAutoObtainsViaTLSALPN01ThroughMux(t *testing.T) {
	ln443 := listen(t)
	ca := startTestCA(t, 1, port(ln443)) // port 1: nothing answers HTTP-01
	m := newAutoManager(t, ca, Config{AltTLSALPNPort: port(ln443), DisableHTTPChallenge: true})
	if !m.SelfSigned() {
		t.Fatal("before Start: want the self-signed certificate")
	}

	mux := NewMux(ln443, m.TLSConfig())
	go mux.Serve()
	t.Cleanup(func() { mux.Close() })
	start(t, m)
	waitFor(t, m, "certificates for all names", allIssued(m))

	// Through the Mux, as Delta Chat would on 443 with ALPN imap.
	addr := ln443.Addr().String()
	for _, name := range localhostNames {
		checkServedByCA(t, addr, ca, []string{ALPNIMAP}, name)
		c, err := mux.IMAP().Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}

	// On an ordinary listener (993, 465, ...), with and without ALPN.
	plain, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	serveHandshakes(t, plain)
	checkServedByCA(t, plain.Addr().String(), ca, nil, localhostNames...)
	checkServedByCA(t, plain.Addr().String(), ca, []string{ALPNSMTP}, "localhost")

	st := m.Status()
	if st.Issuer != ca.Issuing || st.NotAfter.Before(time.Now()) || st.LastAttempt.IsZero() {
		t.Errorf("status %+v", st)
	}
	c, err := m.Certificate()
	if err != nil || c.Leaf.DNSNames[0] != "localhost" {
		t.Errorf("Certificate() = %v, %v", c, err)
	}
}

func TestAutoObtainsViaHTTP01(t *testing.T) {
	ln80 := listen(t)
	ca := startTestCA(t, port(ln80), 1) // port 1: nothing answers TLS-ALPN-01
	m := newAutoManager(t, ca, Config{AltHTTPPort: port(ln80), DisableTLSALPNChallenge: true})

	redirect := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://"+r.Host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
	srv80 := &http.Server{Handler: m.HTTPChallengeHandler(redirect), ReadHeaderTimeout: 10 * time.Second}
	go srv80.Serve(ln80)
	t.Cleanup(func() { srv80.Close() })

	start(t, m)
	waitFor(t, m, "certificates for all names", allIssued(m))

	plain, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	serveHandshakes(t, plain)
	checkServedByCA(t, plain.Addr().String(), ca, nil, localhostNames...)

	// HTTPS through the Mux with a real http.Server behind it, verified
	// against the CA.
	ln443 := listen(t)
	mux := NewMux(ln443, m.TLSConfig())
	go mux.Serve()
	t.Cleanup(func() { mux.Close() })
	srv443 := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.Proto)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv443.Serve(mux.HTTPS())
	t.Cleanup(func() { srv443.Close() })
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, ln443.Addr().String())
		},
	}}
	resp, err := client.Get("https://www.localhost/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "hello HTTP/1.1") {
		t.Errorf("HTTPS through mux: %q", body)
	}

	// Port 80 hands everything that is not a challenge to next.
	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err = noRedirect.Get("http://" + ln80.Addr().String() + "/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect || !strings.HasPrefix(resp.Header.Get("Location"), "https://") {
		t.Errorf("port 80: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestAutoServesSelfSignedWhileCADownThenSwitches(t *testing.T) {
	ln443 := listen(t)
	ca := startTestCA(t, 1, port(ln443))
	ca.SetUp(false)
	m := newAutoManager(t, ca, Config{AltTLSALPNPort: port(ln443), DisableHTTPChallenge: true})
	mux := NewMux(ln443, m.TLSConfig())
	go mux.Serve()
	t.Cleanup(func() { mux.Close() })
	addr := ln443.Addr().String()
	self, _ := m.Certificate()

	start(t, m)
	waitFor(t, m, "a failed attempt recorded", func() bool {
		st := m.Status()
		return !st.LastAttempt.IsZero() && !st.NextAttempt.IsZero() && st.LastError != "no certificate obtained yet"
	})
	st := m.Status()
	if !st.SelfSigned || !m.SelfSigned() || st.LastError == "" {
		t.Fatalf("CA down: status %+v", st)
	}
	t.Logf("while CA down: %s", st.LastError)
	mux.HTTPS().Close() // nobody serves HTTPS here: refuse at once instead of holding conns
	// A strict client refuses what is served; one that trusts the
	// self-signed certificate (Delta Chat with "accept invalid
	// certificates") gets through.
	if _, err := dialTLS(addr, &tls.Config{ServerName: "localhost", RootCAs: ca.Roots}); err == nil || !isUnknownAuthority(err) {
		t.Fatalf("CA down: strict client: %v", err)
	}
	if _, err := dialTLS(addr, &tls.Config{ServerName: "localhost", RootCAs: poolOf(self.Leaf)}); err != nil {
		t.Fatalf("CA down: self-signed not served: %v", err)
	}

	ca.SetUp(true)
	waitFor(t, m, "the real certificate", allIssued(m))
	checkServedByCA(t, addr, ca, []string{ALPNIMAP}, localhostNames...)
	if m.SelfSigned() {
		t.Error("SelfSigned() after the CA came up")
	}
}

func TestAutoRestartServesStoredCertificateWithoutCA(t *testing.T) {
	ln443 := listen(t)
	ca := startTestCA(t, 1, port(ln443))
	cfg := Config{AltTLSALPNPort: port(ln443), DisableHTTPChallenge: true, ExtraNames: []string{}}
	m := newAutoManager(t, ca, cfg)
	mux := NewMux(ln443, m.TLSConfig())
	go mux.Serve()
	t.Cleanup(func() { mux.Close() })
	start(t, m)
	waitFor(t, m, "the certificate", allIssued(m))
	first, _ := m.Certificate()
	m.Close()

	ca.SetUp(false)
	cfg.Mode, cfg.Domain, cfg.DataDir, cfg.CA, cfg.CARoots = ModeAuto, "localhost", m.cfg.DataDir, ca.DirURL, ca.Trust
	cfg.Logger = testLogger(t)
	again, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	c, _ := again.Certificate()
	if again.SelfSigned() || !bytes.Equal(c.Certificate[0], first.Certificate[0]) {
		t.Fatal("after restart: stored ACME certificate not served")
	}
}
