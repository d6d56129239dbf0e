package dkim

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/chatrelay/chatrelay/internal/testmsg"
)

var (
	testKeyOnce sync.Once
	testKey     *Key
)

// key returns one key for the whole test binary: RSA generation is slow.
func key(t *testing.T) *Key {
	t.Helper()
	testKeyOnce.Do(func() {
		k, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		testKey = k
	})
	return testKey
}

// publish is a lookup that knows one key at sel._domainkey.domain.
func publish(k *Key, domain, sel string) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		if strings.EqualFold(name, sel+"._domainkey."+domain) {
			return []string{k.TXTRecord()}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
}

func sign(t *testing.T, k *Key, domain string, msg []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := Sign(k, domain, "dkim", bytes.NewReader(msg), &out); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func msgFrom(from string) []byte {
	m := testmsg.Encrypted(from, "bob@other.example", 0)
	// Put an Autocrypt header in, as Delta Chat does.
	return append([]byte("Autocrypt: addr="+from+"; keydata=AAAA\r\nChat-Version: 1.0\r\n"), m...)
}

func TestLoadOrCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dkim", "private.pem")
	k1, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	dst, _ := os.Stat(filepath.Dir(path))
	if dst.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %v, want 0700", dst.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if !bytes.HasPrefix(data, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Errorf("key file is not PKCS#8 PEM: %.40q", data)
	}
	if n := k1.priv.N.BitLen(); n != 2048 {
		t.Errorf("key has %d bits, want 2048", n)
	}
	k2, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1.TXTRecord() != k2.TXTRecord() {
		t.Error("second LoadOrCreate made a new key instead of reading the file")
	}
	if !strings.HasPrefix(k1.TXTRecord(), "v=DKIM1; k=rsa; p=MII") {
		t.Errorf("TXT record %.30q", k1.TXTRecord())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("key dir holds %d entries, want only the key", len(entries))
	}
}

func TestLoadOrCreateRejectsGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "private.pem")
	os.WriteFile(path, []byte("not a key"), 0o600)
	if _, err := LoadOrCreate(path); err == nil {
		t.Fatal("LoadOrCreate accepted a file that is not a key")
	}
	if data, _ := os.ReadFile(path); string(data) != "not a key" {
		t.Fatal("LoadOrCreate overwrote an existing file")
	}
}

func TestSignThenVerify(t *testing.T) {
	k := key(t)
	signed := sign(t, k, "relay.example", msgFrom("alice@relay.example"))
	if err := Verify(bytes.NewReader(signed), "relay.example", publish(k, "relay.example", "dkim")); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if err := Verify(bytes.NewReader(signed), "RELAY.example", publish(k, "relay.example", "dkim")); err != nil {
		t.Fatalf("Verify with upper-case From domain: %v", err)
	}
}

func TestSignatureTags(t *testing.T) {
	k := key(t)
	sig, err := Signature(k, "relay.example", "sel1", bytes.NewReader(msgFrom("alice@relay.example")))
	if err != nil {
		t.Fatal(err)
	}
	unfolded := strings.Join(strings.Fields(sig), "")
	for _, want := range []string{"a=rsa-sha256;", "c=relaxed/simple;", "d=relay.example;", "s=sel1;"} {
		if !strings.Contains(unfolded, want) {
			t.Errorf("signature lacks %s: %s", want, sig)
		}
	}
	h := tag(unfolded, "h")
	count := map[string]int{}
	for _, name := range strings.Split(h, ":") {
		count[strings.ToLower(name)]++
	}
	// The message has one of each; oversigned ones appear once more.
	for name, want := range map[string]int{"from": 2, "subject": 2, "autocrypt": 2, "to": 1, "date": 1, "message-id": 1, "content-type": 1, "mime-version": 1, "chat-version": 1, "secure-join": 1} {
		if count[name] != want {
			t.Errorf("h= lists %s %d times, want %d (h=%s)", name, count[name], want, h)
		}
	}
	if !strings.HasSuffix(sig, "\r\n") || !strings.HasPrefix(sig, "DKIM-Signature:") {
		t.Errorf("Signature is not a header field line: %.40q", sig)
	}
}

func tag(sig, name string) string {
	for _, kv := range strings.Split(strings.TrimPrefix(sig, "DKIM-Signature:"), ";") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

func TestOversignCountsRepeatedHeaders(t *testing.T) {
	head := []byte("From: a@x\r\nAutocrypt: 1\r\nAutocrypt: 2\r\nTo: b@y\r\nTo: c@z\r\n folded\r\n\r\n")
	keys := headerKeys(head)
	count := map[string]int{}
	for _, k := range keys {
		count[k]++
	}
	if count["From"] != 2 || count["Autocrypt"] != 3 || count["To"] != 2 || count["Subject"] != 1 || count["Cc"] != 1 {
		t.Errorf("h= counts %v", count)
	}
}

func TestVerifyFailures(t *testing.T) {
	k := key(t)
	lookup := publish(k, "relay.example", "dkim")
	signed := sign(t, k, "relay.example", msgFrom("alice@relay.example"))
	other, err := Generate()
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		msg    []byte
		domain string
		lookup func(string) ([]string, error)
		kind   error
		temp   bool
	}{
		{"unsigned", msgFrom("alice@relay.example"), "relay.example", lookup, ErrNoSignature, false},
		{"tampered body", bytes.Replace(signed, []byte("Version: 1"), []byte("Version: 2"), 1), "relay.example", lookup, ErrBadSignature, false},
		{"tampered From", bytes.Replace(signed, []byte("From: <alice@"), []byte("From: <mallory@"), 1), "relay.example", lookup, ErrBadSignature, false},
		{"From added after signing", append([]byte("From: <mallory@relay.example>\r\n"), signed...), "relay.example", lookup, ErrBadSignature, false},
		{"Autocrypt added after signing", append([]byte("Autocrypt: addr=alice@relay.example; keydata=BBBB\r\n"), signed...), "relay.example", lookup, ErrBadSignature, false},
		{"d= is another domain", signed, "evil.example", lookup, ErrDomainMismatch, false},
		{"d= is the parent domain", sign(t, k, "example", msgFrom("alice@relay.example")), "relay.example", publish(k, "example", "dkim"), ErrDomainMismatch, false},
		{"wrong key published", signed, "relay.example", publish(other, "relay.example", "dkim"), ErrBadSignature, false},
		{"no key published", signed, "relay.example", publish(k, "relay.example", "other"), ErrKeyLookup, false},
		{"no key (ErrNoKey)", signed, "relay.example", func(string) ([]string, error) { return nil, ErrNoKey }, ErrKeyLookup, false},
		{"DNS timeout", signed, "relay.example", func(n string) ([]string, error) {
			return nil, &net.DNSError{Err: "i/o timeout", Name: n, IsTimeout: true, IsTemporary: true}
		}, ErrKeyLookup, true},
		{"SERVFAIL", signed, "relay.example", func(n string) ([]string, error) {
			return nil, &net.DNSError{Err: "server misbehaving", Name: n}
		}, ErrKeyLookup, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(bytes.NewReader(tc.msg), tc.domain, tc.lookup)
			if err == nil {
				t.Fatal("Verify passed")
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %v, want kind %v", err, tc.kind)
			}
			if IsTemporary(err) != tc.temp {
				t.Errorf("IsTemporary(%v) = %v, want %v", err, IsTemporary(err), tc.temp)
			}
		})
	}
}

func TestVerifyAsksOnlyAboutFromDomain(t *testing.T) {
	k := key(t)
	signed := sign(t, k, "attacker.example", msgFrom("alice@relay.example"))
	var asked []string
	err := Verify(bytes.NewReader(signed), "relay.example", func(name string) ([]string, error) {
		asked = append(asked, name)
		return []string{k.TXTRecord()}, nil
	})
	if !errors.Is(err, ErrDomainMismatch) {
		t.Errorf("error %v, want ErrDomainMismatch", err)
	}
	if len(asked) != 0 {
		t.Errorf("looked up %v for a signature of another domain", asked)
	}
}

func TestVerifyPassesWithExtraForeignSignature(t *testing.T) {
	k := key(t)
	signed := sign(t, k, "relay.example", msgFrom("alice@relay.example"))
	// A forwarder adds its own signature on top; ours still counts.
	twice := sign(t, k, "forwarder.example", signed)
	if err := Verify(bytes.NewReader(twice), "relay.example", publish(k, "relay.example", "dkim")); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestSignLongHeaderLine(t *testing.T) {
	k := key(t)
	// A header line longer than bufio's buffer, ending exactly at its edge,
	// must not be taken for the end of the header section.
	long := "X-Long: " + strings.Repeat("a", 4096-len("X-Long: ")) + "\r\n"
	msg := append([]byte(long), msgFrom("alice@relay.example")...)
	signed := sign(t, k, "relay.example", msg)
	if err := Verify(bytes.NewReader(signed), "relay.example", publish(k, "relay.example", "dkim")); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if h := tag(strings.Join(strings.Fields(string(signed[:bytes.Index(signed, []byte("\r\n\r\n"))])), ""), "h"); strings.Count(strings.ToLower(h), "from") != 2 {
		t.Errorf("From not found past the long line: h=%s", h)
	}
}
