package invite

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/testclock"
)

func open(t *testing.T) (*Store, *testclock.Clock) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c := testclock.New(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))
	s, err := Open(db, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func TestInviteTokenShape(t *testing.T) {
	s, _ := open(t)
	a, _ := s.Create(1, 0)
	b, _ := s.Create(1, 0)
	if a.Token == b.Token || len(a.Token) != 26 || strings.ToLower(a.Token) != a.Token {
		t.Fatalf("tokens %q %q: want distinct 26-char lower-case base32", a.Token, b.Token)
	}
}

func TestInviteUseRules(t *testing.T) {
	s, c := open(t)
	single, _ := s.Create(1, 0)
	triple, _ := s.Create(3, 0)
	unlimited, _ := s.Create(0, 0)
	expiring, _ := s.Create(0, 7*24*time.Hour)
	revoked, _ := s.Create(5, 0)

	steps := []struct {
		name  string
		token string
		want  error
	}{
		{"single use", single.Token, nil},
		{"single use again", single.Token, ErrUsedUp},
		{"typed in upper case", strings.ToUpper(triple.Token), nil},
		{"second of three", triple.Token, nil},
		{"third of three", " " + triple.Token + " ", nil},
		{"fourth of three", triple.Token, ErrUsedUp},
		{"unlimited", unlimited.Token, nil},
		{"unknown", "aaaaaaaaaaaaaaaaaaaaaaaaaa", ErrUnknown},
		{"empty", "", ErrUnknown},
		{"not yet expired", expiring.Token, nil},
	}
	for _, st := range steps {
		if err := s.Use(st.token); !errors.Is(err, st.want) {
			t.Fatalf("%s: %v, want %v", st.name, err, st.want)
		}
	}
	if err := s.Revoke(revoked.Token); err != nil {
		t.Fatal(err)
	}
	if err := s.Use(revoked.Token); !errors.Is(err, ErrUnknown) {
		t.Fatalf("revoked token: %v", err)
	}
	if err := s.Revoke(revoked.Token); !errors.Is(err, ErrUnknown) {
		t.Fatalf("revoke twice: %v", err)
	}
	c.Advance(7*24*time.Hour - time.Second)
	if err := s.Use(expiring.Token); err != nil {
		t.Fatalf("a second before expiry: %v", err)
	}
	c.Advance(time.Second)
	if err := s.Use(expiring.Token); !errors.Is(err, ErrExpired) {
		t.Fatalf("at expiry: %v", err)
	}
	for range 100 {
		if err := s.UseInvite(unlimited.Token); err != nil {
			t.Fatalf("unlimited token: %v", err)
		}
	}

	list, err := s.List()
	if err != nil || len(list) != 4 {
		t.Fatalf("list: %d invites, %v", len(list), err)
	}
	byToken := map[string]Invite{}
	for _, inv := range list {
		byToken[inv.Token] = inv
	}
	if got := byToken[triple.Token]; got.Used != 3 || got.Check(c.Now()) != ErrUsedUp {
		t.Errorf("triple: %+v", got)
	}
	if got := byToken[unlimited.Token]; got.Used != 101 || got.Check(c.Now()) != nil {
		t.Errorf("unlimited: %+v", got)
	}
	if got := byToken[expiring.Token]; got.Check(c.Now()) != ErrExpired {
		t.Errorf("expiring: %+v", got)
	}
}

func TestInviteConcurrentUseOfSingleToken(t *testing.T) {
	s, _ := open(t)
	inv, err := s.Create(1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Use(inv.Token)
		}()
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrUsedUp):
			t.Errorf("unexpected error %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d concurrent uses succeeded, want 1", ok, n)
	}
}

func TestInviteRefusesNegative(t *testing.T) {
	s, _ := open(t)
	if _, err := s.Create(-1, 0); err == nil {
		t.Fatal("negative uses accepted")
	}
	if _, err := s.Create(1, -time.Hour); err == nil {
		t.Fatal("negative ttl accepted")
	}
}
