package mailbox

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/argon2"
)

// legacyHash is a record as relays made them before the two kinds: argon2id
// with 4 MiB and one pass.
func legacyHash(password string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, 1, 4*1024, 1, 32)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", 4*1024, 1, 1, enc.EncodeToString(salt), enc.EncodeToString(key))
}

func storedHash(t *testing.T, s *Store, addr string) string {
	t.Helper()
	rec, err := s.account(addr)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Hash
}

func setHash(t *testing.T, s *Store, addr, hash string) {
	t.Helper()
	if err := s.updateAccount(addr, func(r *AccountRecord) { r.Hash = hash }); err != nil {
		t.Fatal(err)
	}
	s.auth.forget(addr)
}

const generatedPW = "k3Jd9QmZp2XwL8vTn4RbY7cF" // the shape /new hands out

func TestGeneratedPasswordsStoredAsKeyedHash(t *testing.T) {
	s, clock, dir := openTest(t, 0)
	if err := s.CreateAccount("gen@x.test", generatedPW, Generated); err != nil {
		t.Fatal(err)
	}
	if h := storedHash(t, s, "gen@x.test"); !strings.HasPrefix(h, hashPrefixHMAC) {
		t.Fatalf("generated password stored as %q, want the keyed hash", h)
	}
	fi, err := os.Stat(filepath.Join(dir, PasswordKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("password key file: mode %v, %d bytes; want 0600, 32", fi.Mode().Perm(), fi.Size())
	}
	s.Close()

	// After a restart (no cached logins) the key file verifies it.
	s, err = Open(dir, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Login("gen@x.test", generatedPW, nil); err != nil {
		t.Fatalf("login after restart: %v", err)
	}
	if _, err := s.Login("gen@x.test", generatedPW[:23]+"x", nil); err == nil {
		t.Fatal("a wrong password logged in")
	}
}

func TestChosenPasswordsStoredWithArgon2idAtOWASPMinimum(t *testing.T) {
	s, clock, dir := openTest(t, 0)
	if _, err := s.Login("chosen@x.test", "password123", func(string, string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	h := storedHash(t, s, "chosen@x.test")
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("first-login password stored as %q, want argon2id m=19456,t=2,p=1", h)
	}
	if err := s.CreateAccount("typed@x.test", "operator typed this", Chosen); err != nil {
		t.Fatal(err)
	}
	if h := storedHash(t, s, "typed@x.test"); !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("operator's password stored as %q", h)
	}
	s.Close()
	s, err := Open(dir, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Login("chosen@x.test", "password123", nil); err != nil {
		t.Fatalf("login after restart: %v", err)
	}
}

func TestLegacyPasswordRecordsConvertedAtLogin(t *testing.T) {
	s, _, _ := openTest(t, 0)
	for _, c := range []struct {
		addr, password, wantPrefix string
	}{
		{"old-gen@x.test", generatedPW, hashPrefixHMAC},
		{"old-chosen@x.test", "password123", "$argon2id$v=19$m=19456,t=2,p=1$"},
		// 24 letters and digits but not all three classes: kept slow.
		{"old-weak@x.test", "aaaaaaaaaaaaaaaaaaaaaaaa", "$argon2id$v=19$m=19456,t=2,p=1$"},
	} {
		if err := s.CreateAccount(c.addr, "placeholder", Chosen); err != nil {
			t.Fatal(err)
		}
		old := legacyHash(c.password)
		setHash(t, s, c.addr, old)

		// A wrong password changes nothing.
		if _, err := s.Login(c.addr, c.password+"x", nil); err == nil {
			t.Fatalf("%s: wrong password logged in", c.addr)
		}
		if h := storedHash(t, s, c.addr); h != old {
			t.Fatalf("%s: a failed login changed the record", c.addr)
		}
		if _, err := s.Login(c.addr, c.password, nil); err != nil {
			t.Fatalf("%s: legacy record does not log in: %v", c.addr, err)
		}
		h := storedHash(t, s, c.addr)
		if !strings.HasPrefix(h, c.wantPrefix) {
			t.Fatalf("%s: converted to %q, want prefix %q", c.addr, h, c.wantPrefix)
		}
		s.auth.forget(c.addr)
		if _, err := s.Login(c.addr, c.password, nil); err != nil {
			t.Fatalf("%s: converted record does not log in: %v", c.addr, err)
		}
		if h2 := storedHash(t, s, c.addr); h2 != h {
			t.Fatalf("%s: converted twice", c.addr)
		}
	}
}

func TestPasswordKeyMissingOrSwappedRefusesToStart(t *testing.T) {
	s, clock, dir := openTest(t, 0)
	if err := s.CreateAccount("gen@x.test", generatedPW, Generated); err != nil {
		t.Fatal(err)
	}
	s.Close()
	keyPath := filepath.Join(dir, PasswordKeyFile)
	key, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}

	other := make([]byte, 32)
	rand.Read(other)
	if err := os.WriteFile(keyPath, other, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Now: clock.Now}); err == nil || !strings.Contains(err.Error(), "backup") {
		t.Fatalf("a swapped key file: %v, want a refusal that points to the backup", err)
	}
	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Now: clock.Now}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a missing key file: %v, want a refusal", err)
	}
	if _, err := os.Stat(keyPath); err == nil {
		t.Fatal("a refused start made a new key file")
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{Now: clock.Now})
	if err != nil {
		t.Fatalf("with the right key back: %v", err)
	}
	defer s.Close()
	if _, err := s.Login("gen@x.test", generatedPW, nil); err != nil {
		t.Fatal(err)
	}
}

// TestPasswordKeyMadeForAnUpgradedIndex: an index from before the key
// existed gets one at its first start, and its legacy records still log in.
func TestPasswordKeyMadeForAnUpgradedIndex(t *testing.T) {
	s, clock, dir := openTest(t, 0)
	if err := s.CreateAccount("old@x.test", "placeholder", Chosen); err != nil {
		t.Fatal(err)
	}
	setHash(t, s, "old@x.test", legacyHash("password123"))
	if err := s.DB().Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete([]byte(keyPasswordKeyID)) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := os.Remove(filepath.Join(dir, PasswordKeyFile)); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Login("old@x.test", "password123", nil); err != nil {
		t.Fatal(err)
	}
}

// TestSlowHashesBoundedBelowGOMAXPROCS: however many wrong passwords arrive
// at once, at most GOMAXPROCS-1 slow hashes run, and a login of a generated
// account is not queued behind them.
func TestSlowHashesBoundedBelowGOMAXPROCS(t *testing.T) {
	s, _, _ := openTest(t, 0)
	if err := s.CreateAccount("gen@x.test", generatedPW, Generated); err != nil {
		t.Fatal(err)
	}
	s.auth.forget("gen@x.test")
	want := max(1, runtime.GOMAXPROCS(0)-1)
	if cap(s.pw.slots) != want {
		t.Fatalf("%d slow hashes may run at once, want %d", cap(s.pw.slots), want)
	}

	// Hold every slot: the storm of wrong passwords now waits...
	for range want {
		s.pw.slots <- struct{}{}
	}
	var waiting atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		waiting.Add(1)
		go func() {
			defer wg.Done()
			defer waiting.Add(-1)
			s.Login(fmt.Sprintf("nobody%d@x.test", i), "wrong password", nil)
		}()
	}
	// ...and the generated account logs in all the same.
	done := make(chan error, 1)
	go func() {
		_, err := s.Login("gen@x.test", generatedPW, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a generated account's login waited for the slow hashes")
	}
	if n := waiting.Load(); n != 8 {
		t.Fatalf("%d of 8 wrong-password logins finished while every slot was held", 8-n)
	}
	for range want {
		<-s.pw.slots
	}
	wg.Wait()
}

// The bound on slow hashes is each store's own, sized by SlowHashes: a
// store whose every slot is held does not hold up another store's chosen
// password logins.
func TestSlowHashSlotsArePerStore(t *testing.T) {
	open := func(slow int) *Store {
		t.Helper()
		s, err := Open(t.TempDir(), Options{SlowHashes: slow})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	busy, free := open(1), open(3)
	if cap(busy.pw.slots) != 1 || cap(free.pw.slots) != 3 {
		t.Fatalf("slots %d and %d, want 1 and 3", cap(busy.pw.slots), cap(free.pw.slots))
	}
	busy.pw.slots <- struct{}{}
	defer func() { <-busy.pw.slots }()
	done := make(chan error, 1)
	go func() {
		_, err := free.Login("chosen@x.test", "password123", func(string, string) error { return nil })
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a chosen-password login on one store waited for another store's slow hashes")
	}
}
