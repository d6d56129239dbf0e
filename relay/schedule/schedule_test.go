package schedule

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/testclock"
)

var due = []byte("due")

const within = 20 * time.Second

type env struct {
	t     *testing.T
	path  string
	db    *bolt.DB
	clock *testclock.Clock
	start time.Time

	mu     sync.Mutex
	claims map[string]int
	// attempts hears of every attempt; release ends one (by id).
	attempts chan string
	release  map[string]chan struct{}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	e := &env{t: t, path: filepath.Join(t.TempDir(), "s.db"), clock: testclock.New(start), start: start,
		claims: map[string]int{}, attempts: make(chan string, 100), release: map[string]chan struct{}{}}
	e.open()
	return e
}

func (e *env) open() {
	db, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.db = db
	e.t.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(due); return err }); err != nil {
		e.t.Fatal(err)
	}
}

// put indexes id as due at the start plus d.
func (e *env) put(id string, d time.Duration) {
	e.t.Helper()
	err := e.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(due).Put(Key(e.start.Add(d), []byte(id)), []byte("v-"+id))
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// blocking makes the attempt of id wait until unblock(id).
func (e *env) blocking(ids ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range ids {
		e.release[id] = make(chan struct{})
	}
}

func (e *env) unblock(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	close(e.release[id])
}

// run starts a scheduler with the given workers until the test ends.
func (e *env) run(workers int) *Scheduler {
	s := New(Options{
		DB: e.db, Due: due, Workers: workers, Now: e.clock.Now,
		Claim: func(tx *bolt.Tx, id, v []byte, now time.Time) (any, time.Time, bool) {
			if string(v) != "v-"+string(id) {
				e.t.Errorf("claim of %s got value %q", id, v)
			}
			e.mu.Lock()
			e.claims[string(id)]++
			e.mu.Unlock()
			return string(id), time.Time{}, true
		},
		Attempt: func(ctx context.Context, job any) {
			id := job.(string)
			e.attempts <- id
			e.mu.Lock()
			ch := e.release[id]
			e.mu.Unlock()
			if ch != nil {
				select {
				case <-ch:
				case <-ctx.Done():
					return
				}
			}
			// The owner's part: a finished entry leaves the index.
			err := e.db.Update(func(tx *bolt.Tx) error {
				c := tx.Bucket(due).Cursor()
				for k, _ := c.First(); k != nil; k, _ = c.Next() {
					if _, kid, _ := ParseKey(k); string(kid) == id {
						return c.Delete()
					}
				}
				return nil
			})
			if err != nil {
				e.t.Error(err)
			}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return s
}

func (e *env) next() string {
	e.t.Helper()
	select {
	case id := <-e.attempts:
		return id
	case <-time.After(within):
		e.t.Fatal("no attempt")
		return ""
	}
}

func (e *env) claimsOf(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.claims[id]
}

// Entries are attempted in the order they are due, not the order they
// were put; one not yet due waits for its time.
func TestDueOrder(t *testing.T) {
	e := newEnv(t)
	e.put("c", -1*time.Second)
	e.put("a", -3*time.Second)
	e.put("b", -2*time.Second)
	e.put("later", time.Hour)
	e.run(1)
	for _, want := range []string{"a", "b", "c"} {
		if got := e.next(); got != want {
			t.Fatalf("attempted %s, want %s (due order)", got, want)
		}
	}
	// Each finished attempt made the scheduler scan again: "later" was
	// seen and left, since it is not due.
	if n := e.claimsOf("later"); n != 0 {
		t.Fatalf("an entry not yet due was claimed %d times", n)
	}
	e.clock.Advance(time.Hour)
	// The runner's timer is on the real clock; a wake-up rescans.
	e.put("now", time.Hour)
	if got := e.next(); got != "later" {
		t.Fatalf("attempted %s, want later (due first)", got)
	}
}

// An entry in flight is never claimed again, however often the
// scheduler scans, and no more than Workers run at once.
func TestClaimIsExclusiveAndBounded(t *testing.T) {
	e := newEnv(t)
	e.blocking("a", "b", "c")
	e.put("a", 0)
	e.put("b", 0)
	e.put("c", 0)
	s := e.run(2)
	got := map[string]bool{e.next(): true, e.next(): true}
	if !got["a"] || !got["b"] {
		t.Fatalf("first attempts %v, want a and b", got)
	}
	for range 5 {
		s.Wake()
	}
	if n := s.InFlight(); n != 2 {
		t.Fatalf("%d in flight, want 2 (Workers)", n)
	}
	e.unblock("a")
	if id := e.next(); id != "c" {
		t.Fatalf("after a finished: attempted %s, want c", id)
	}
	// b, in flight all along and scanned past several times, was
	// claimed once.
	if n := e.claimsOf("b"); n != 1 {
		t.Fatalf("b claimed %d times while in flight, want 1", n)
	}
	if n := e.claimsOf("c"); n != 1 {
		t.Fatalf("c claimed %d times, want 1", n)
	}
	e.unblock("b")
	e.unblock("c")
}

// The due index is in the DB file: a scheduler over the reopened file
// attempts what the last one left, in order.
func TestIndexSurvivesReopen(t *testing.T) {
	e := newEnv(t)
	e.put("second", -time.Second)
	e.put("first", -2*time.Second)
	e.db.Update(func(tx *bolt.Tx) error {
		return Move(tx.Bucket(due), []byte("second"), e.start.Add(-time.Second), e.start.Add(time.Minute), []byte("v-second"))
	})
	var keys int
	e.db.View(func(tx *bolt.Tx) error { keys = tx.Bucket(due).Stats().KeyN; return nil })
	if keys != 2 {
		t.Fatalf("index holds %d keys after a Move, want 2 (the old one gone)", keys)
	}
	e.db.Close()
	e.open()
	e.clock.Advance(time.Minute)
	e.run(1)
	for _, want := range []string{"first", "second"} {
		if got := e.next(); got != want {
			t.Fatalf("after reopen attempted %s, want %s", got, want)
		}
	}
	e.db.Update(func(tx *bolt.Tx) error {
		b, err := Rebuild(tx, due)
		if err == nil && b.Stats().KeyN != 0 {
			err = fmt.Errorf("rebuilt index not empty")
		}
		return err
	})
}

func TestKeyOrderAndParse(t *testing.T) {
	t1 := time.Unix(100, 5)
	k1, k2 := Key(t1, []byte("zz")), Key(t1.Add(time.Nanosecond), []byte("aa"))
	if string(k1) >= string(k2) {
		t.Fatal("keys do not sort by time first")
	}
	at, id, ok := ParseKey(k1)
	if !ok || !at.Equal(t1) || string(id) != "zz" {
		t.Fatalf("ParseKey = %v %q %v", at, id, ok)
	}
	if _, _, ok := ParseKey(k1[:8]); ok {
		t.Fatal("a key without an id parsed")
	}
	if at, _, _ := ParseKey(Key(time.Unix(-5, 0), []byte("x"))); at.UnixNano() != 0 {
		t.Fatalf("a time before 1970 keyed as %v", at)
	}
}

// The retry schedule: base doubled per failure, capped, plus up to a
// fifth, never less than nominal, and really jittered.
func TestBackoff(t *testing.T) {
	base, limit := 8*time.Second, time.Hour
	for n := 1; n <= 20; n++ {
		nominal := min(base<<(n-1), limit)
		seen := map[time.Duration]bool{}
		for range 50 {
			d := Backoff(n, base, limit)
			if d < nominal || d > nominal+nominal/5 {
				t.Fatalf("Backoff(%d) = %v, want in [%v, %v]", n, d, nominal, nominal+nominal/5)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("Backoff(%d) took %d distinct values in 50 draws: no jitter", n, len(seen))
		}
	}
	if d := Backoff(3, time.Hour, time.Minute); d < time.Hour {
		t.Errorf("a limit below base cut the wait to %v", d)
	}
}
