// Package shadowsocks is a Shadowsocks TCP server (and a small client for
// tests), written from the specifications: SIP004 AEAD with
// chacha20-ietf-poly1305 and SIP022 (Shadowsocks 2022) with
// 2022-blake3-aes-256-gcm. The server does not forward anywhere by itself:
// its caller decides what each requested target is (Options.Route), so it
// cannot become an open proxy by accident.
package shadowsocks

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
)

// The supported methods.
const (
	// Chacha20 is the SIP004 AEAD method: the key comes from a password
	// (EVP_BytesToKey with MD5), the session subkey from HKDF-SHA1.
	Chacha20 = "chacha20-ietf-poly1305"
	// AES2022 is the SIP022 method: the key is 32 random bytes (base64 in
	// configs and URLs), the session subkey is BLAKE3 derive_key.
	AES2022 = "2022-blake3-aes-256-gcm"
)

const (
	keySize  = 32 // both methods: 256-bit keys
	saltSize = 32 // SIP004: salt as long as the key; SIP022: same
	tagSize  = 16
	// SIP004: "payload length is a 2-byte big-endian unsigned integer
	// capped at 0x3FFF".
	maxChunk2017 = 0x3FFF
	// SIP022: chunks up to 0xFFFF bytes.
	maxChunk2022 = 0xFFFF

	subkeyInfo2017    = "ss-subkey"
	subkeyContext2022 = "shadowsocks 2022 session subkey"
)

// Methods lists the supported methods, the default first.
func Methods() []string { return []string{AES2022, Chacha20} }

// Key is a method with its master key.
type Key struct {
	Method   string
	Password string // as in the URL: a password (SIP004) or base64 key (SIP022)
	master   []byte
}

// ParseKey checks a method and password and derives the master key.
func ParseKey(method, password string) (Key, error) {
	switch method {
	case Chacha20:
		if password == "" {
			return Key{}, errors.New("shadowsocks: empty password")
		}
		return Key{Method: method, Password: password, master: evpBytesToKey(password, keySize)}, nil
	case AES2022:
		k, err := base64.StdEncoding.DecodeString(password)
		if err != nil || len(k) != keySize {
			return Key{}, fmt.Errorf("shadowsocks: %s needs a base64 key of %d bytes", method, keySize)
		}
		return Key{Method: method, Password: password, master: k}, nil
	default:
		return Key{}, fmt.Errorf("shadowsocks: unknown method %q (supported: %s, %s)", method, AES2022, Chacha20)
	}
}

// NewKey makes a random key for method.
func NewKey(method string) (Key, error) {
	b := make([]byte, keySize)
	rand.Read(b)
	// For the password-based method a random base64 string is as good a
	// password as any, with the full 256 bits in it.
	return ParseKey(method, base64.StdEncoding.EncodeToString(b))
}

func (k Key) is2022() bool { return k.Method == AES2022 }

func (k Key) maxChunk() int {
	if k.is2022() {
		return maxChunk2022
	}
	return maxChunk2017
}

// sessionAEAD derives the per-session subkey from the salt and makes the
// AEAD of the method.
func (k Key) sessionAEAD(salt []byte) (cipher.AEAD, error) {
	sub, err := k.subkey(salt)
	if err != nil {
		return nil, err
	}
	if k.is2022() {
		block, err := aes.NewCipher(sub)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(block)
	}
	return chacha20poly1305.New(sub)
}

// subkey is the session key for salt: SIP004 HKDF-SHA1(key, salt,
// "ss-subkey"); SIP022 BLAKE3 derive_key(context, key || salt).
func (k Key) subkey(salt []byte) ([]byte, error) {
	if k.master == nil {
		return nil, errors.New("shadowsocks: key not parsed")
	}
	if k.is2022() {
		material := make([]byte, 0, len(k.master)+len(salt))
		material = append(append(material, k.master...), salt...)
		sub := make([]byte, keySize)
		blake3.DeriveKey(subkeyContext2022, material, sub)
		return sub, nil
	}
	return hkdf.Key(sha1.New, k.master, salt, subkeyInfo2017, keySize)
}

// evpBytesToKey is OpenSSL's EVP_BytesToKey with MD5, one iteration and
// no salt, which SIP004 keeps for password-based keys:
// D_i = MD5(D_{i-1} || password), key = D_1 || D_2 || ...
func evpBytesToKey(password string, n int) []byte {
	var out, prev []byte
	for len(out) < n {
		h := md5.New()
		h.Write(prev)
		h.Write([]byte(password))
		prev = h.Sum(nil)
		out = append(out, prev...)
	}
	return out[:n]
}

// nonce is the AEAD nonce: a little-endian counter from zero, one step per
// seal or open (SIP004, SIP022).
type nonce [12]byte

func (n *nonce) next() {
	for i := range n {
		n[i]++
		if n[i] != 0 {
			return
		}
	}
}
