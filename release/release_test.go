package release

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aead.dev/minisign"
)

func testKey(t *testing.T) (minisign.PublicKey, minisign.PrivateKey) {
	t.Helper()
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// signedFile writes a file of random bytes and its signature.
func signedFile(t *testing.T, priv minisign.PrivateKey, m Meta) (string, []byte) {
	t.Helper()
	data := make([]byte, 100_000)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), m.Name)
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := SignFile(priv, path, m); err != nil {
		t.Fatal(err)
	}
	return path, data
}

var testMeta = Meta{Name: "chatrelay-1.2.3-linux-amd64", Version: "1.2.3", Target: "linux/amd64", Schema: 2, Time: 1765000000}

func TestVerifyGoodSignature(t *testing.T) {
	pub, priv := testKey(t)
	path, data := signedFile(t, priv, testMeta)
	v, err := VerifyFile(pub, path, "")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if v.Meta != testMeta || v.SHA256 != hex.EncodeToString(sum[:]) || v.KeyID != KeyID(pub.ID()) {
		t.Errorf("verified %+v, want %+v and sha256 %x", v, testMeta, sum)
	}
	// The file is a plain minisign signature: minisign's own check
	// agrees.
	sig, _ := os.ReadFile(path + SigSuffix)
	mr := minisign.NewReader(bytes.NewReader(data))
	io.Copy(io.Discard, mr)
	if !mr.Verify(pub, sig) {
		t.Error("minisign does not accept the signature")
	}
}

func TestVerifyRefuses(t *testing.T) {
	pub, priv := testKey(t)
	otherPub, otherPriv := testKey(t)

	t.Run("flipped byte", func(t *testing.T) {
		path, data := signedFile(t, priv, testMeta)
		data[len(data)/2] ^= 0x01
		os.WriteFile(path, data, 0o755)
		_, err := VerifyFile(pub, path, "")
		if !errors.Is(err, ErrBadSig) || !strings.Contains(err.Error(), "changed after it was signed") {
			t.Errorf("flipped byte: %v", err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		path, _ := signedFile(t, otherPriv, testMeta)
		_, err := VerifyFile(pub, path, "")
		if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), KeyID(otherPub.ID())) {
			t.Errorf("wrong key: %v", err)
		}
	})
	t.Run("wrong key with the same id", func(t *testing.T) {
		// A key id is only a hint: a forger can copy it.
		path, _ := signedFile(t, otherPriv, testMeta)
		sigPath := path + SigSuffix
		var sig minisign.Signature
		text, _ := os.ReadFile(sigPath)
		if err := sig.UnmarshalText(text); err != nil {
			t.Fatal(err)
		}
		sig.KeyID = pub.ID()
		text, _ = sig.MarshalText()
		os.WriteFile(sigPath, text, 0o644)
		if _, err := VerifyFile(pub, path, ""); !errors.Is(err, ErrBadSig) {
			t.Errorf("forged key id: %v", err)
		}
	})
	t.Run("unsigned", func(t *testing.T) {
		path, _ := signedFile(t, priv, testMeta)
		os.Remove(path + SigSuffix)
		_, err := VerifyFile(pub, path, "")
		if !errors.Is(err, ErrUnsigned) || !strings.Contains(err.Error(), testMeta.Name+SigSuffix) {
			t.Errorf("unsigned: %v", err)
		}
	})
	t.Run("garbage signature", func(t *testing.T) {
		path, _ := signedFile(t, priv, testMeta)
		os.WriteFile(path+SigSuffix, []byte("hello\n"), 0o644)
		if _, err := VerifyFile(pub, path, ""); !errors.Is(err, ErrUnsigned) {
			t.Errorf("garbage signature: %v", err)
		}
	})
	t.Run("edited trusted comment", func(t *testing.T) {
		// Passing an old binary off as a new one, or hiding a schema
		// change, means editing the comment: the signature covers it.
		path, _ := signedFile(t, priv, testMeta)
		text, _ := os.ReadFile(path + SigSuffix)
		edited := bytes.Replace(text, []byte("version=1.2.3"), []byte("version=9.9.9"), 1)
		if bytes.Equal(edited, text) {
			t.Fatal("no version in the signature")
		}
		os.WriteFile(path+SigSuffix, edited, 0o644)
		if _, err := VerifyFile(pub, path, ""); !errors.Is(err, ErrBadSig) {
			t.Errorf("edited comment: %v", err)
		}
	})
	t.Run("foreign comment", func(t *testing.T) {
		path, data := signedFile(t, priv, testMeta)
		mr := minisign.NewReader(bytes.NewReader(data))
		io.Copy(io.Discard, mr)
		sig := mr.SignWithComments(priv, "timestamp:1\tfile:x", "")
		os.WriteFile(path+SigSuffix, sig, 0o644)
		if _, err := VerifyFile(pub, path, ""); err == nil || !strings.Contains(err.Error(), "not a chatrelay release") {
			t.Errorf("foreign comment: %v", err)
		}
	})
}

func TestSignatureReproduces(t *testing.T) {
	_, priv := testKey(t)
	a, _ := Sign(priv, strings.NewReader("same bytes"), testMeta)
	b, _ := Sign(priv, strings.NewReader("same bytes"), testMeta)
	if !bytes.Equal(a, b) {
		t.Errorf("two signatures of the same file differ:\n%s\n%s", a, b)
	}
}

func TestCommentRoundTrip(t *testing.T) {
	for _, m := range []Meta{testMeta, {Name: "SHA256SUMS", Version: "1.2.3", Time: 5}} {
		got, err := ParseComment(m.Comment())
		if err != nil || got != m {
			t.Errorf("%q: %+v, %v", m.Comment(), got, err)
		}
	}
	for _, bad := range []string{"", "timestamp:1", "chatrelay file=x", "chatrelay version=1 schema=x", "chatrelay version=1 junk"} {
		if _, err := ParseComment(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestCompiledKey(t *testing.T) {
	pub, _ := testKey(t)
	old := compiledKey
	t.Cleanup(func() { compiledKey = old })

	compiledKey = ""
	if _, err := CompiledKey(); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "without a release key") {
		t.Errorf("no key: %v", err)
	}
	compiledKey = pub.String()
	k, err := CompiledKey()
	if err != nil || !k.Equal(pub) {
		t.Errorf("compiled key: %v %v", k, err)
	}
	// LoadKey takes minisign's .pub file.
	text, _ := pub.MarshalText()
	path := filepath.Join(t.TempDir(), "release.pub")
	os.WriteFile(path, text, 0o644)
	if k, err := LoadKey(path); err != nil || !k.Equal(pub) {
		t.Errorf("LoadKey: %v %v", k, err)
	}
}

func TestWords(t *testing.T) {
	sum := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	lines := Words(sum)
	if len(lines) != 8 {
		t.Fatalf("%d lines", len(lines))
	}
	if want := "1. 01234567  zero one two three / four five six seven"; lines[0] != want {
		t.Errorf("line 1 %q, want %q", lines[0], want)
	}
	if want := "2. 89abcdef  eight nine alfa bravo / charlie delta echo foxtrot"; lines[1] != want {
		t.Errorf("line 2 %q, want %q", lines[1], want)
	}
}

func TestLoadSecretKey(t *testing.T) {
	_, priv := testKey(t)
	dir := t.TempDir()
	plain, _ := priv.MarshalText()
	os.WriteFile(filepath.Join(dir, "plain.key"), plain, 0o600)
	if k, err := LoadSecretKey(filepath.Join(dir, "plain.key")); err != nil || !k.Equal(priv) {
		t.Errorf("plain key: %v", err)
	}
	// An encrypted key, as minisign -G writes it: encrypting costs as
	// much as decrypting, so this is one by its header only.
	enc := []byte("untrusted comment: minisign encrypted secret key\n" + base64.StdEncoding.EncodeToString(append([]byte("EdSc"), make([]byte, 154)...)) + "\n")
	os.WriteFile(filepath.Join(dir, "enc.key"), enc, 0o600)
	t.Setenv("RELEASE_KEY_PASSWORD", "")
	if _, err := LoadSecretKey(filepath.Join(dir, "enc.key")); err == nil || !strings.Contains(err.Error(), "RELEASE_KEY_PASSWORD") {
		t.Errorf("encrypted key without password: %v", err)
	}
	// Decrypting runs scrypt at minisign's cost (1 GiB): left to
	// minisign's own tests.
}

func TestFileName(t *testing.T) {
	for name, want := range map[string]string{
		"chatrelay-1.0.0-linux-amd64": "chatrelay-1.0.0-linux-amd64",
		"../chatrelay-x":              "chatrelay-1.0.0-linux-amd64",
		"chatrelay-/../../etc/passwd": "chatrelay-1.0.0-linux-amd64",
		"index.db":                    "chatrelay-1.0.0-linux-amd64",
		"":                            "chatrelay-1.0.0-linux-amd64",
	} {
		v := &Verified{Meta: Meta{Name: name, Version: "1.0.0", Target: "linux/amd64"}}
		if got := v.FileName(); got != want {
			t.Errorf("%q: %q, want %q", name, got, want)
		}
	}
}
