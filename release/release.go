// Package release signs and verifies chatrelay release files (SPEC section
// 13): static binaries and SHA256SUMS, each with a minisign signature
// (Ed25519, aead.dev/minisign) in FILE.minisig beside it.
//
// What a release file is (version, target, index schema) is written into
// the signature's trusted comment, which the signature covers, so a relay
// can read it from a hand-carried file without running the file.
package release

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"aead.dev/minisign"
)

// SigSuffix names a file's signature: FILE.minisig, as minisign does.
const SigSuffix = ".minisig"

// compiledKey is the release public key in minisign's one-line form
// ("RWQ..."), set at build time:
//
//	-ldflags "-X github.com/chatrelay/chatrelay/release.compiledKey=RWQ..."
//
// `make release` takes it from RELEASE_PUB or the file release.pub at the
// repository root. Empty in a build without one.
var compiledKey string

// ErrNoKey says this build carries no release key and none was given.
var ErrNoKey = errors.New("this chatrelay was built without a release key: give the release public key with --key FILE (get it from a source you trust, not from the same USB stick)")

// CompiledKey returns the release public key compiled into this binary.
func CompiledKey() (minisign.PublicKey, error) {
	if compiledKey == "" {
		return minisign.PublicKey{}, ErrNoKey
	}
	var k minisign.PublicKey
	if err := k.UnmarshalText([]byte(compiledKey)); err != nil {
		return minisign.PublicKey{}, fmt.Errorf("the release key compiled into this chatrelay is broken: %w", err)
	}
	return k, nil
}

// LoadKey reads a minisign public key file (the two-line .pub form or the
// bare one-line key).
func LoadKey(path string) (minisign.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return minisign.PublicKey{}, fmt.Errorf("release key: %w", err)
	}
	var k minisign.PublicKey
	if err := k.UnmarshalText(data); err != nil {
		return minisign.PublicKey{}, fmt.Errorf("release key %s is not a minisign public key: %w", path, err)
	}
	return k, nil
}

// LoadSecretKey reads an unencrypted minisign secret key file, or an
// encrypted one with the password from the environment variable
// RELEASE_KEY_PASSWORD.
func LoadSecretKey(path string) (minisign.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("release secret key: %w", err)
	}
	if minisign.IsEncrypted(data) {
		pw := os.Getenv("RELEASE_KEY_PASSWORD")
		if pw == "" {
			return minisign.PrivateKey{}, fmt.Errorf("release secret key %s is encrypted: set RELEASE_KEY_PASSWORD", path)
		}
		return minisign.DecryptKey(pw, data)
	}
	var k minisign.PrivateKey
	if err := k.UnmarshalText(data); err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("release secret key %s: %w", path, err)
	}
	return k, nil
}

// KeyID is a key's id as minisign prints it.
func KeyID(id uint64) string { return strings.ToUpper(strconv.FormatUint(id, 16)) }

// Meta is what a release file is, as its signature's trusted comment
// says.
type Meta struct {
	Name    string // file name at signing
	Version string // main.version of the binary, or the release's for SHA256SUMS
	Target  string // GOOS/GOARCH; empty for SHA256SUMS
	Schema  uint64 // index schema version the binary reads and writes; 0 for SHA256SUMS
	Time    int64  // unix seconds: the commit's time, so signatures reproduce
}

// Comment is the trusted comment for m: space-separated key=value pairs
// after "chatrelay".
func (m Meta) Comment() string {
	var b strings.Builder
	b.WriteString("chatrelay")
	add := func(k, v string) {
		if v != "" {
			b.WriteString(" " + k + "=" + v)
		}
	}
	add("file", m.Name)
	add("version", m.Version)
	add("target", m.Target)
	if m.Schema != 0 {
		add("schema", strconv.FormatUint(m.Schema, 10))
	}
	add("timestamp", strconv.FormatInt(m.Time, 10))
	return b.String()
}

// ParseComment reads a trusted comment written by Comment.
func ParseComment(c string) (Meta, error) {
	fields := strings.Fields(c)
	if len(fields) == 0 || fields[0] != "chatrelay" {
		return Meta{}, fmt.Errorf("the signature's trusted comment %q is not a chatrelay release's", c)
	}
	var m Meta
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Meta{}, fmt.Errorf("trusted comment: bad field %q", f)
		}
		var err error
		switch k {
		case "file":
			m.Name = v
		case "version":
			m.Version = v
		case "target":
			m.Target = v
		case "schema":
			m.Schema, err = strconv.ParseUint(v, 10, 32)
		case "timestamp":
			m.Time, err = strconv.ParseInt(v, 10, 64)
		}
		if err != nil {
			return Meta{}, fmt.Errorf("trusted comment: bad %s %q", k, v)
		}
	}
	if m.Version == "" {
		return Meta{}, fmt.Errorf("trusted comment %q names no version", c)
	}
	return m, nil
}

// Sign reads r and returns its minisign signature (pre-hashed, as
// minisign -H) with m as the trusted comment. Ed25519 signatures are
// deterministic, so the same file, key and Meta give the same bytes.
func Sign(key minisign.PrivateKey, r io.Reader, m Meta) ([]byte, error) {
	mr := minisign.NewReader(r)
	if _, err := io.Copy(io.Discard, mr); err != nil {
		return nil, err
	}
	untrusted := "signature from chatrelay release key " + KeyID(key.ID())
	return mr.SignWithComments(key, m.Comment(), untrusted), nil
}

// SignFile writes path+SigSuffix for path.
func SignFile(key minisign.PrivateKey, path string, m Meta) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sig, err := Sign(key, f, m)
	if err != nil {
		return fmt.Errorf("sign %s: %w", path, err)
	}
	return os.WriteFile(path+SigSuffix, sig, 0o644)
}

// Verified is a release file whose signature checked out.
type Verified struct {
	Meta
	KeyID  string
	SHA256 string // hex
}

// Errors of Verify, for callers that must tell them apart. The messages
// around them say what to do.
var (
	ErrUnsigned = errors.New("not signed")
	ErrWrongKey = errors.New("signed by another key")
	ErrBadSig   = errors.New("does not match its signature")
)

// VerifyFile checks path against its signature sigPath (path+SigSuffix
// when empty) under key.
func VerifyFile(key minisign.PublicKey, path, sigPath string) (*Verified, error) {
	if sigPath == "" {
		sigPath = path + SigSuffix
	}
	name := filepath.Base(path)
	sigText, err := os.ReadFile(sigPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s is %w: no signature %s beside it (a release file comes with its %s file; without it nobody can tell a tampered copy)", name, ErrUnsigned, filepath.Base(sigPath), SigSuffix)
	}
	if err != nil {
		return nil, err
	}
	var sig minisign.Signature
	if err := sig.UnmarshalText(sigText); err != nil {
		return nil, fmt.Errorf("%s is %w: %s is not a minisign signature (%v)", name, ErrUnsigned, filepath.Base(sigPath), err)
	}
	if sig.KeyID != key.ID() {
		return nil, fmt.Errorf("%s is %w: key %s, not the release key %s; do not use it", name, ErrWrongKey, KeyID(sig.KeyID), KeyID(key.ID()))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	mr := minisign.NewReader(io.TeeReader(f, h))
	if _, err := io.Copy(io.Discard, mr); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	// Verify checks the file's signature and the trusted comment's.
	if !mr.Verify(key, sigText) {
		return nil, fmt.Errorf("%s %w: it was changed after it was signed, or the signature is another file's; do not use it", name, ErrBadSig)
	}
	m, err := ParseComment(sig.TrustedComment)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Verified{Meta: m, KeyID: KeyID(key.ID()), SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// hexWords are the words for the sixteen hex digits, as read over a phone
// (ICAO spelling for the letters).
var hexWords = [16]string{
	"zero", "one", "two", "three", "four", "five", "six", "seven",
	"eight", "nine", "alfa", "bravo", "charlie", "delta", "echo", "foxtrot",
}

// Words spells a hex string for reading aloud: one line per 8 digits, in
// two groups of four words, each line numbered so two people on a phone
// keep their place.
func Words(hexSum string) []string {
	var lines []string
	for i := 0; i < len(hexSum); i += 8 {
		chunk := hexSum[i:min(i+8, len(hexSum))]
		var w []string
		for j, c := range strings.ToLower(chunk) {
			d := strings.IndexRune("0123456789abcdef", c)
			if d < 0 {
				w = append(w, string(c))
			} else {
				w = append(w, hexWords[d])
			}
			if j == 3 && len(chunk) > 4 {
				w = append(w, "/")
			}
		}
		lines = append(lines, fmt.Sprintf("%d. %s  %s", i/8+1, chunk, strings.Join(w, " ")))
	}
	return lines
}

// Key returns the key a command should verify with: the file given
// (--key), else the one compiled in. source says which, for the report.
func Key(path string) (key minisign.PublicKey, source string, err error) {
	if path != "" {
		k, err := LoadKey(path)
		return k, "the key in " + path, err
	}
	k, err := CompiledKey()
	return k, "the release key built into this chatrelay", err
}

// Print writes what a person checks: the signer, what the file is, and
// its SHA-256 spelled for reading aloud.
func (v *Verified) Print(w io.Writer, keySource string) {
	fmt.Fprintf(w, "good signature by key %s (%s)\n", v.KeyID, keySource)
	if v.Name != "" {
		fmt.Fprintf(w, "signed as: %s\n", v.Name)
	}
	fmt.Fprintf(w, "version:   %s\n", v.Version)
	if v.Target != "" {
		fmt.Fprintf(w, "target:    %s\n", v.Target)
	}
	if v.Schema != 0 {
		fmt.Fprintf(w, "schema:    %d (index layout)\n", v.Schema)
	}
	fmt.Fprintf(w, "sha256:    %s\n", v.SHA256)
	fmt.Fprintln(w, "read aloud to compare by phone (the other side runs `chatrelay verify` or sha256sum):")
	for _, l := range Words(v.SHA256) {
		fmt.Fprintf(w, "  %s\n", l)
	}
}
