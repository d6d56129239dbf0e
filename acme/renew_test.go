package acme

import (
	"bytes"
	"context"
	"crypto/x509"
	"net/http"
	"testing"
	"time"
)

// A renewal keeps the private key (SPEC section 8): Delta Chat pins the
// SPKI of a host it verified once, and then accepts that key even from an
// expired certificate, so a relay whose renewals fail during a CA outage
// keeps its users connected only if every renewal kept the key.
func TestRenewalKeepsTheKey(t *testing.T) {
	ln80 := listen(t)
	ca := startTestCA(t, port(ln80), 1)
	m := newAutoManager(t, ca, Config{AltHTTPPort: port(ln80), DisableTLSALPNChallenge: true})
	srv80 := &http.Server{Handler: m.HTTPChallengeHandler(http.NotFoundHandler()), ReadHeaderTimeout: 10 * time.Second}
	go srv80.Serve(ln80)
	t.Cleanup(func() { srv80.Close() })
	start(t, m)
	waitFor(t, m, "certificates for all names", allIssued(m))

	leaf := func() *x509.Certificate {
		c := m.serving("localhost")
		if c == nil || c.Leaf == nil {
			t.Fatal("no certificate served for localhost")
		}
		return c.Leaf
	}
	before := leaf()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := m.magic.RenewCertSync(ctx, "localhost", true); err != nil {
		t.Fatalf("renewal: %v", err)
	}
	// RenewCertSync stores the new certificate; certmagic's maintenance
	// loads it into the cache, which here is done at once.
	if _, err := m.magic.CacheManagedCertificate(ctx, "localhost"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitTimeout)
	for leaf().SerialNumber.Cmp(before.SerialNumber) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate is not served")
		}
		time.Sleep(20 * time.Millisecond)
	}
	after := leaf()
	if !bytes.Equal(before.RawSubjectPublicKeyInfo, after.RawSubjectPublicKeyInfo) {
		t.Fatal("the renewal changed the key: clients that pinned it lose the relay when a later renewal fails")
	}
}
