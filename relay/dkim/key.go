// Package dkim signs the mail that leaves the relay and verifies the mail
// that arrives (RFC 6376), on top of github.com/emersion/go-msgauth/dkim.
//
// Signatures use rsa-sha256 with relaxed header and simple body
// canonicalization. From, Subject and Autocrypt are oversigned
// (RFC 6376 section 5.4.2): they are listed in h= once more than the
// message has them, so a copy added in transit breaks the signature.
package dkim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/chatrelay/chatrelay/internal/safeio"
)

// KeyBits is the size of the keys Generate makes. 2048 is what every
// receiver accepts (RFC 8301 section 3.2 asks for at least 1024, and
// 4096-bit keys do not fit a single DNS TXT string and trip some
// resolvers).
const KeyBits = 2048

// Key is the relay's DKIM signing key.
type Key struct {
	priv *rsa.PrivateKey
}

// Generate makes a new RSA key of KeyBits bits.
func Generate() (*Key, error) {
	priv, err := rsa.GenerateKey(rand.Reader, KeyBits)
	if err != nil {
		return nil, fmt.Errorf("generate dkim key: %w", err)
	}
	return &Key{priv: priv}, nil
}

// ParsePEM reads an RSA private key from PEM: PKCS#8 ("PRIVATE KEY", what
// LoadOrCreate writes) or PKCS#1 ("RSA PRIVATE KEY", what openssl and
// opendkim-genkey often make).
func ParsePEM(data []byte) (*Key, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("dkim key: no PEM block")
	}
	switch block.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("dkim key: %w", err)
		}
		priv, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("dkim key: %T is not an RSA key", k)
		}
		return &Key{priv: priv}, nil
	case "RSA PRIVATE KEY":
		priv, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("dkim key: %w", err)
		}
		return &Key{priv: priv}, nil
	default:
		return nil, fmt.Errorf("dkim key: unexpected PEM block %q", block.Type)
	}
}

// LoadOrCreate reads the key at path, or makes one and writes it there as
// PKCS#8 PEM (file mode 0600, directory 0700) when no file exists. The write
// is crash-safe: a half-written key is never left at path.
func LoadOrCreate(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := ParsePEM(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read dkim key: %w", err)
	}
	k, err := Generate()
	if err != nil {
		return nil, err
	}
	pemData, err := k.MarshalPEM()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create dkim key directory: %w", err)
	}
	if err := safeio.WriteFile(path, pemData, 0o600); err != nil {
		return nil, fmt.Errorf("write dkim key: %w", err)
	}
	return k, nil
}

// MarshalPEM returns the private key as PKCS#8 PEM.
func (k *Key) MarshalPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("marshal dkim key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Signer is the key as a crypto.Signer.
func (k *Key) Signer() crypto.Signer { return k.priv }

// TXTRecord is the value to publish at <selector>._domainkey.<domain>:
// "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" (RFC 6376 section
// 3.6.1). It is longer than 255 bytes, so a zone file must split it into
// several quoted strings of one TXT record.
func (k *Key) TXTRecord() string {
	der, err := x509.MarshalPKIXPublicKey(&k.priv.PublicKey)
	if err != nil {
		// An RSA public key always marshals.
		panic(err)
	}
	return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
}
