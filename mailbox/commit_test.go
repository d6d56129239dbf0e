package mailbox

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openCommitter(t *testing.T) *committer {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "c.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	return &committer{db: db}
}

func putKey(tx *bolt.Tx, k string) error { return tx.Bucket([]byte("b")).Put([]byte(k), []byte("v")) }

// Callers that arrive while a commit runs share the next transaction, and
// every change is there afterwards.
func TestCommitterGroupsWaitingCallers(t *testing.T) {
	c := openCommitter(t)
	release := make(chan struct{})
	first := make(chan error, 1)
	inFirst := make(chan struct{})
	go func() {
		first <- c.do(func(tx *bolt.Tx) error {
			close(inFirst)
			<-release
			return putKey(tx, "first")
		})
	}()
	<-inFirst
	const n = 10
	var mu sync.Mutex
	txIDs := map[int]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- c.do(func(tx *bolt.Tx) error {
				mu.Lock()
				txIDs[tx.ID()] = true
				mu.Unlock()
				return putKey(tx, string(rune('a'+i)))
			})
		})
	}
	// All n are queued behind the running commit before it ends.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		queued := len(c.queue)
		c.mu.Unlock()
		if queued == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d callers queued", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(txIDs) != 1 {
		t.Errorf("%d waiting callers committed in %d transactions, want 1", n, len(txIDs))
	}
	c.db.View(func(tx *bolt.Tx) error {
		if got := tx.Bucket([]byte("b")).Stats().KeyN; got != n+1 {
			t.Errorf("%d keys stored, want %d", got, n+1)
		}
		return nil
	})
}

// One caller's error fails only that caller; the others' changes commit.
func TestCommitterIsolatesFailures(t *testing.T) {
	c := openCommitter(t)
	release := make(chan struct{})
	inFirst := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- c.do(func(tx *bolt.Tx) error { close(inFirst); <-release; return putKey(tx, "first") })
	}()
	<-inFirst
	bad := errors.New("refused")
	results := make(chan error, 2)
	go func() { results <- c.do(func(tx *bolt.Tx) error { putKey(tx, "bad"); return bad }) }()
	go func() { results <- c.do(func(tx *bolt.Tx) error { return putKey(tx, "good") }) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		queued := len(c.queue)
		c.mu.Unlock()
		if queued == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("callers did not queue")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	<-done
	var gotBad, gotNil int
	for range 2 {
		switch err := <-results; {
		case errors.Is(err, bad):
			gotBad++
		case err == nil:
			gotNil++
		default:
			t.Fatal(err)
		}
	}
	if gotBad != 1 || gotNil != 1 {
		t.Fatalf("errors: %d refused, %d nil; want 1 and 1", gotBad, gotNil)
	}
	c.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		if b.Get([]byte("good")) == nil || b.Get([]byte("first")) == nil {
			t.Error("a good change was lost")
		}
		if b.Get([]byte("bad")) != nil {
			t.Error("the failed change was stored")
		}
		return nil
	})
}
