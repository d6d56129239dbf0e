package mailbox

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/chatrelay/chatrelay/internal/safeio"
	"golang.org/x/crypto/argon2"
)

// PasswordKind says where a password came from, which decides how it is
// stored (SPEC section 4).
type PasswordKind int

const (
	// Chosen passwords come from a client (first-login creation) or an
	// operator: they may be weak, so they get a slow hash.
	Chosen PasswordKind = iota
	// Generated passwords were made by the relay with at least 128 bits
	// of randomness (/new, invites, `account add` without a password): a
	// slow hash adds nothing against guessing them, so they get a keyed
	// fast one.
	Generated
)

// Argon2id for chosen passwords at OWASP's minimum (19 MiB, t=2, p=1).
// The parameters are stored in each hash, so they can change without
// breaking old accounts.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
)

// legacyArgon is what accounts were hashed with before the two kinds
// existed (m=4 MiB, t=1); such records are converted at their next
// successful login.
func legacyArgon(m, t uint32) bool { return m < argonMemory || t < argonTime }

// PasswordKeyFile is the per-relay secret of generated passwords' HMACs,
// kept apart from the index (a copy of index.db alone does not let anyone
// test guesses) and included in backups with the other key files.
const PasswordKeyFile = "password.key"

// keyPasswordKeyID, a store-wide setting, holds a fingerprint of the password
// key the index's hashes are made with, so that a lost or swapped key file
// is an error at start instead of every generated account failing to log
// in.
const keyPasswordKeyID = "password-key-id"

// hashPrefixHMAC starts a generated password's record:
// $hmac-sha256$<salt>$<HMAC-SHA-256(key, salt || password)>.
const hashPrefixHMAC = "$hmac-sha256$"

// passwords hashes and checks account passwords for one store. slots
// bounds concurrent slow hashes (Options.SlowHashes, by default
// GOMAXPROCS-1, at least 1): a login storm queues instead of taking every
// core from deliveries, and instead of allocating 19 MiB per waiting
// client.
type passwords struct {
	key   []byte
	slots chan struct{}
}

func (p *passwords) init(key []byte, slow int) {
	if slow <= 0 {
		slow = max(1, runtime.GOMAXPROCS(0)-1)
	}
	p.key = key
	p.slots = make(chan struct{}, slow)
}

// loadPasswordKey reads the password key from dir, making it on the first
// start of an index that has none, and records its fingerprint in the
// index. A key missing or different from the one the index was used with
// is an error.
func loadPasswordKey(dir string, idx Backend) ([]byte, error) {
	path := filepath.Join(dir, PasswordKeyFile)
	used, err := idx.Setting(keyPasswordKeyID)
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(key) != 32 {
			return nil, fmt.Errorf("%s: want 32 bytes, found %d", path, len(key))
		}
		if used != nil && !bytes.Equal(used, keyID(key)) {
			return nil, fmt.Errorf("%s is not the key this index's passwords were stored with: restore the matching file from a backup", path)
		}
	case errors.Is(err, os.ErrNotExist) && used == nil:
		key = make([]byte, 32)
		rand.Read(key)
		if err := safeio.WriteFile(path, key, 0o600); err != nil {
			return nil, fmt.Errorf("write password key: %w", err)
		}
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("%s is missing but this index stored passwords with it: restore it from a backup (accounts with generated passwords cannot log in without it)", path)
	default:
		return nil, fmt.Errorf("read password key: %w", err)
	}
	if used == nil {
		if err := idx.SetSetting(keyPasswordKeyID, keyID(key)); err != nil {
			return nil, fmt.Errorf("record password key: %w", err)
		}
	}
	return key, nil
}

func keyID(key []byte) []byte {
	id := sha256.Sum256(append([]byte("chatrelay password key id\x00"), key...))
	return id[:8]
}

// hash stores password as kind says.
func (p *passwords) hash(password string, kind PasswordKind) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	enc := base64.RawStdEncoding
	if kind == Generated {
		return hashPrefixHMAC + enc.EncodeToString(salt) + "$" + enc.EncodeToString(p.mac(salt, password))
	}
	p.slots <- struct{}{}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	<-p.slots
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", argonMemory, argonTime, argonThreads, enc.EncodeToString(salt), enc.EncodeToString(key))
}

func (p *passwords) mac(salt []byte, password string) []byte {
	m := hmac.New(sha256.New, p.key)
	m.Write(salt)
	m.Write([]byte(password))
	return m.Sum(nil)
}

// verify checks password against a stored record. legacy reports a record
// in a form the relay no longer makes, to be converted after a success.
// Every failure costs at least one slow hash, so that timing tells neither
// which accounts exist nor how their passwords are stored.
func (p *passwords) verify(encoded, password string) (ok, legacy bool) {
	enc := base64.RawStdEncoding
	if rest, found := strings.CutPrefix(encoded, hashPrefixHMAC); found {
		salt, mac, _ := strings.Cut(rest, "$")
		s, err1 := enc.DecodeString(salt)
		want, err2 := enc.DecodeString(mac)
		if err1 == nil && err2 == nil && hmac.Equal(p.mac(s, password), want) {
			return true, false
		}
		p.fail(password)
		return false, false
	}
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		p.fail(password)
		return false, false
	}
	var m, t uint32
	var par uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &par); err != nil || m > 1<<20 || t > 16 || par == 0 {
		p.fail(password)
		return false, false
	}
	salt, err1 := enc.DecodeString(parts[4])
	want, err2 := enc.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		p.fail(password)
		return false, false
	}
	p.slots <- struct{}{}
	got := argon2.IDKey([]byte(password), salt, t, m, par, uint32(len(want)))
	<-p.slots
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return false, false
	}
	return true, legacyArgon(m, t)
}

// fail spends what a wrong chosen password costs.
// It needs no stored hash (computing one at start cost a start-up hash and
// its 19 MiB until the next collection): the same slow hash as a chosen
// password's check, with a fixed salt, its result thrown away.
func (p *passwords) fail(password string) {
	p.slots <- struct{}{}
	argon2.IDKey([]byte(password), failSalt, argonTime, argonMemory, argonThreads, argonKeyLen)
	<-p.slots
}

// failSalt is fail's salt.
var failSalt = []byte("chatrelay: no such password")

// looksGenerated tells whether a password has the shape the relay gives
// its generated ones: 24 letters and digits with all three classes. A
// legacy record (from before the two kinds) with such a password is
// converted to the keyed hash; a person who typed one gets the keyed hash
// too, which is as strong as their password is long and random.
func looksGenerated(password string) bool {
	if len(password) != 24 {
		return false
	}
	var lower, upper, digit bool
	for _, c := range password {
		switch {
		case c >= 'a' && c <= 'z':
			lower = true
		case c >= 'A' && c <= 'Z':
			upper = true
		case c >= '0' && c <= '9':
			digit = true
		default:
			return false
		}
	}
	return lower && upper && digit
}
