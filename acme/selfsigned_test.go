package acme

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSelfSignedCert(t *testing.T) {
	certPEM, keyPEM, err := SelfSignedCert([]string{"_relay.example", "localhost"}, []net.IP{net.ParseIP("127.0.0.2")}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if !slices.Equal(leaf.DNSNames, []string{"_relay.example", "localhost"}) ||
		len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.2")) {
		t.Errorf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if d := leaf.NotAfter.Sub(time.Now()); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("NotAfter in %v, want about 24h", d)
	}
	// Self-signed: it verifies against itself, as a client that pinned it
	// would check, for the IP and for a "_" name.
	for _, host := range []string{"127.0.0.2", "localhost"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: poolOf(leaf)}); err != nil {
			t.Errorf("verify %s: %v", host, err)
		}
	}
	if _, _, err := SelfSignedCert(nil, nil, time.Hour); err == nil {
		t.Error("no names and no IPs accepted")
	}
}

func TestSelfSignedPersistsAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Mode: ModeSelfSigned, Domain: "_relay.example", DataDir: dir, Logger: testLogger(t)}
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := first.Certificate()

	keyInfo, err := os.Stat(filepath.Join(dir, "tls", "selfsigned.key"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := keyInfo.Mode().Perm(); perm != 0o600 {
		t.Errorf("key mode %v, want 0600", perm)
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, "tls", "selfsigned.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(onDisk); b == nil || !bytes.Equal(b.Bytes, c1.Certificate[0]) {
		t.Error("stored certificate is not the served one")
	}

	second, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := second.Certificate()
	if !sameCert(c1, c2) {
		t.Error("restart served a different self-signed certificate")
	}

	// A new name replaces it: the old one would not match the host.
	cfg.ExtraNames = []string{"mta-sts._relay.example"}
	third, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c3, _ := third.Certificate()
	if sameCert(c1, c3) || !slices.Contains(c3.Leaf.DNSNames, "mta-sts._relay.example") {
		t.Error("name change did not make a new certificate")
	}

	// No temp files left behind.
	entries, _ := os.ReadDir(filepath.Join(dir, "tls"))
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("left over %s", e.Name())
		}
	}
}

func TestSelfSignedModeChosen(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		host string // what a client connects to
	}{
		{"IP mode", Config{IP: "127.0.0.2"}, "127.0.0.2"},
		{"underscore domain", Config{Domain: "_relay.example"}, "_relay.example"},
		{"explicit", Config{Mode: ModeSelfSigned, Domain: "relay.example"}, "relay.example"},
		{"localhost with Let's Encrypt", Config{Domain: "localhost"}, "localhost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.DataDir = t.TempDir()
			tt.cfg.Logger = testLogger(t)
			m, err := New(tt.cfg) // Mode empty means auto; no CA is ever contacted
			if err != nil {
				t.Fatal(err)
			}
			st := m.Status()
			if st.Mode != ModeSelfSigned || !st.SelfSigned || !m.SelfSigned() || st.LastError != "" {
				t.Errorf("status %+v", st)
			}
			c, _ := m.Certificate()
			if err := c.Leaf.VerifyHostname(tt.host); err != nil {
				t.Error(err)
			}
			if m.HTTPChallengeHandler(nil) != nil {
				t.Error("challenge handler in self-signed mode")
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"unknown mode":      {Mode: "letsencrypt", Domain: "example.org", DataDir: "x"},
		"no domain, no ip":  {Mode: ModeSelfSigned},
		"bad ip":            {IP: "300.1.1.1"},
		"auto without dir":  {Domain: "example.org"},
		"files without key": {Mode: ModeFiles, CertFile: "c.pem"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
