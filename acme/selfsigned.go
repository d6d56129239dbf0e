package acme

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

const (
	// selfSignedValidity is long because a self-signed relay (IP mode, a
	// censored country) may run for years without anyone touching it, and
	// Delta Chat users pinned to "accept invalid certificates" gain nothing
	// from rotation.
	selfSignedValidity = 10 * 365 * 24 * time.Hour

	// selfSignedRenewBefore: a stored certificate closer than this to its
	// end is replaced at start rather than served until it breaks.
	selfSignedRenewBefore = 30 * 24 * time.Hour

	selfSignedCertName = "selfsigned.crt"
	selfSignedKeyName  = "selfsigned.key"
)

// SelfSignedCert makes a self-signed ECDSA P-256 server certificate for the
// given DNS names and IP addresses, valid for validFor from now. It returns
// the certificate and its PKCS#8 private key, both PEM encoded.
func SelfSignedCert(names []string, ips []net.IP, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	if len(names) == 0 && len(ips) == 0 {
		return nil, nil, errors.New("self-signed certificate: no names and no IP addresses")
	}
	if validFor <= 0 {
		return nil, nil, fmt.Errorf("self-signed certificate: validity %v is not positive", validFor)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signed certificate: generate key: %w", err)
	}
	// RFC 5280 4.1.2.2: a positive serial of at most 20 octets; 128 random
	// bits keep two certificates of one relay (or of two relays) apart.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, fmt.Errorf("self-signed certificate: serial: %w", err)
	}
	cn := ""
	if len(names) > 0 {
		cn = names[0]
	} else {
		cn = ips[0].String()
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"chatrelay self-signed"}},
		// Backdated so that a client whose clock runs a little slow does
		// not see a certificate from the future.
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              slices.Clone(names),
		IPAddresses:           slices.Clone(ips),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signed certificate: create: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signed certificate: marshal key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// loadOrCreateSelfSigned returns the self-signed certificate stored in dir
// when it still covers names and ips and is not about to expire; otherwise
// it makes a new one and stores it. Keeping the same certificate across
// restarts matters: users who accepted it (or pinned its fingerprint) keep
// working. An empty dir keeps the certificate in memory only.
func loadOrCreateSelfSigned(dir string, names []string, ips []net.IP, log *slog.Logger) (*tls.Certificate, error) {
	certPath := filepath.Join(dir, selfSignedCertName)
	keyPath := filepath.Join(dir, selfSignedKeyName)
	if dir != "" {
		cert, err := loadSelfSigned(certPath, keyPath)
		switch {
		case err == nil && selfSignedUsable(cert.Leaf, names, ips, time.Now()):
			return cert, nil
		case err == nil:
			log.Info("replacing stored self-signed certificate", "reason", "names changed or expiring", "path", certPath)
		case !errors.Is(err, os.ErrNotExist):
			log.Warn("replacing unreadable self-signed certificate", "path", certPath, "err", err)
		}
	}
	certPEM, keyPEM, err := SelfSignedCert(names, ips, selfSignedValidity)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	if dir == "" {
		return &cert, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	// Key first: a crash between the two writes leaves a pair that does not
	// match, which the next start detects and replaces; the other order
	// would be no better, and this way the key is never younger than the
	// certificate on disk for long.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	log.Info("made self-signed certificate", "path", certPath, "names", names, "ips", ips, "not_after", cert.Leaf.NotAfter)
	return &cert, nil
}

func loadSelfSigned(certPath, keyPath string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &cert, nil
}

// selfSignedUsable reports whether leaf names exactly what is wanted now
// and has a good while left to run. Exact, not "covers": a name removed
// from the config should disappear from the certificate too.
func selfSignedUsable(leaf *x509.Certificate, names []string, ips []net.IP, now time.Time) bool {
	if leaf == nil || now.Add(selfSignedRenewBefore).After(leaf.NotAfter) {
		return false
	}
	if !sameStrings(leaf.DNSNames, names) || len(leaf.IPAddresses) != len(ips) {
		return false
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

func sameStrings(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// writeFileAtomic writes data to path so that after a crash path holds
// either the old or the new content, never a torn mix: temp file in the
// same directory, fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// Chmod before writing so a private key is never readable by others,
	// not even for a moment.
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: sync dir: %w", path, err)
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync dir: %w", path, err)
	}
	return nil
}

// sameCert reports whether a and b serve the same leaf: a reloaded file or
// a renewed certificate is a new *tls.Certificate even when nothing changed.
func sameCert(a, b *tls.Certificate) bool {
	if a == nil || b == nil || len(a.Certificate) == 0 || len(b.Certificate) == 0 {
		return a == b
	}
	return bytes.Equal(a.Certificate[0], b.Certificate[0])
}
