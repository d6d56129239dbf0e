package queue

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/testclock"
)

type clock = testclock.Clock

func newClock() *clock { return testclock.New(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) }

// call is one Deliver call seen by a recorder.
type call struct {
	from, domain string
	rcpts        []string
	body         string
}

// recorder is a fake courier: it records calls and answers with decide.
type recorder struct {
	calls  chan call
	decide func(domain, rcpt string) Result
}

func newRecorder(decide func(domain, rcpt string) Result) *recorder {
	if decide == nil {
		decide = func(_, rcpt string) Result { return Result{Rcpt: rcpt} }
	}
	return &recorder{calls: make(chan call, 100), decide: decide}
}

func (r *recorder) Deliver(ctx context.Context, from, domain string, rcpts []string, body func() (io.ReadCloser, error)) []Result {
	rc, err := body()
	if err != nil {
		panic(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	r.calls <- call{from, domain, slices.Clone(rcpts), string(data)}
	var res []Result
	for _, rcpt := range rcpts {
		res = append(res, r.decide(domain, rcpt))
	}
	return res
}

func (r *recorder) next(t *testing.T) call {
	t.Helper()
	select {
	case c := <-r.calls:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery attempt within 5s")
		return call{}
	}
}

// bouncer records Bounce calls.
type bouncer struct {
	mu    sync.Mutex
	calls [][]string
	fail  int // fail this many calls first
}

func (b *bouncer) Bounce(it *Item, failed []Rcpt) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var addrs []string
	for _, r := range failed {
		if r.Status != Failed {
			panic("bounced a recipient that has not failed")
		}
		addrs = append(addrs, r.Addr)
	}
	b.calls = append(b.calls, addrs)
	if b.fail > 0 {
		b.fail--
		return errors.New("local delivery of the bounce failed")
	}
	return nil
}

func (b *bouncer) Calls() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

type env struct {
	t      *testing.T
	dir    string
	db     *bolt.DB
	clock  *clock
	opts   Options
	q      *Queue
	cancel context.CancelFunc
	done   chan struct{}
}

func newEnv(t *testing.T, edit func(*Options)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), clock: newClock()}
	e.opts = Options{
		Dir:        filepath.Join(e.dir, "queue"),
		Deliver:    newRecorder(nil).Deliver,
		Bounce:     (&bouncer{}).Bounce,
		MinBackoff: time.Minute,
		MaxBackoff: time.Hour,
		Now:        e.clock.Now,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if testing.Verbose() {
		e.opts.Logger = slog.Default()
	}
	if edit != nil {
		edit(&e.opts)
	}
	e.open()
	t.Cleanup(e.close)
	return e
}

func (e *env) open() {
	e.t.Helper()
	db, err := bolt.Open(filepath.Join(e.dir, "index.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.db = db
	e.opts.DB = db
	q, err := Open(e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.q = q
}

func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.done = make(chan struct{})
	go func() {
		defer close(e.done)
		e.q.Run(ctx)
	}()
}

// stop ends Run and waits for it.
func (e *env) stop() {
	if e.cancel != nil {
		e.cancel()
		select {
		case <-e.done:
		case <-time.After(5 * time.Second):
			e.t.Fatal("Run did not return within 5s of cancel")
		}
		e.cancel = nil
	}
}

func (e *env) close() {
	e.stop()
	if e.db != nil {
		e.db.Close()
		e.db = nil
	}
}

func (e *env) put(from string, rcpts ...string) string {
	e.t.Helper()
	id, err := e.q.Put(from, rcpts, strings.NewReader("message body\r\n"))
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) item(id string) *Item {
	e.t.Helper()
	items, err := e.q.List()
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range items {
		if items[i].ID == id {
			return &items[i]
		}
	}
	return nil
}

// waitFor polls cond until it holds, for at most 5s: the queue works in
// its own goroutines and records results after Deliver returns.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitAttempts waits until the item has had n attempts recorded.
func (e *env) waitAttempts(id string, n int) *Item {
	e.t.Helper()
	var it *Item
	waitFor(e.t, "attempt to be recorded", func() bool {
		it = e.item(id)
		return it != nil && it.Attempts >= n
	})
	return it
}

func (e *env) waitGone(id string) {
	e.t.Helper()
	// The index entry goes first, the spool file right after.
	waitFor(e.t, "item and its spool file to leave the queue", func() bool {
		_, err := os.Stat(filepath.Join(e.opts.Dir, id))
		return e.item(id) == nil && errors.Is(err, os.ErrNotExist)
	})
}

func temporary(rcpt string) Result {
	return Result{Rcpt: rcpt, Err: errors.New("451 4.3.0 try later")}
}

func permanent(rcpt string) Result {
	return Result{Rcpt: rcpt, Err: errors.New("550 5.1.1 no such user"), Permanent: true}
}

func TestPutIsDurableAndDeliveredAfterReopen(t *testing.T) {
	rec := newRecorder(nil)
	e := newEnv(t, func(o *Options) { o.Deliver = rec.Deliver })
	id := e.put("alice@here.example", "bob@there.example", "carol@there.example")

	data, err := os.ReadFile(filepath.Join(e.opts.Dir, id))
	if err != nil || string(data) != "message body\r\n" {
		t.Fatalf("spool file after Put: %q, %v", data, err)
	}
	// The relay stops before the scheduler ever ran.
	e.close()
	e.open()
	e.run()
	c := rec.next(t)
	if c.from != "alice@here.example" || c.domain != "there.example" || !slices.Equal(c.rcpts, []string{"bob@there.example", "carol@there.example"}) {
		t.Errorf("Deliver got %+v", c)
	}
	if c.body != "message body\r\n" {
		t.Errorf("Deliver body %q", c.body)
	}
	e.waitGone(id)
}

func TestInFlightAtCrashIsDeliveredAgain(t *testing.T) {
	started := make(chan struct{}, 1)
	e := newEnv(t, func(o *Options) {
		o.Deliver = func(ctx context.Context, _, _ string, rcpts []string, _ func() (io.ReadCloser, error)) []Result {
			started <- struct{}{}
			<-ctx.Done()
			return []Result{{Rcpt: rcpts[0], Err: ctx.Err()}}
		}
	})
	id := e.put("alice@here.example", "bob@there.example")
	e.run()
	<-started
	e.stop() // shutdown while the delivery is in flight

	it := e.item(id)
	if it == nil || it.Attempts != 0 || it.Rcpts[0].Status != Pending {
		t.Fatalf("after shutdown mid-delivery: %+v", it)
	}
	rec := newRecorder(nil)
	e.opts.Deliver = rec.Deliver
	e.close()
	e.open()
	e.run()
	rec.next(t)
	e.waitGone(id)
}

func TestOpenSweepsOrphans(t *testing.T) {
	e := newEnv(t, nil)
	kept := e.put("alice@here.example", "bob@there.example")
	e.close()

	orphan := newID(e.clock.Now())
	tmp := "." + newID(e.clock.Now()) + ".tmp12345"
	for _, name := range []string{orphan, tmp, "not-ours.txt"} {
		if err := os.WriteFile(filepath.Join(e.opts.Dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.open()
	for name, want := range map[string]bool{orphan: false, tmp: false, "not-ours.txt": true, kept: true} {
		_, err := os.Stat(filepath.Join(e.opts.Dir, name))
		if got := err == nil; got != want {
			t.Errorf("%s exists=%v after Open, want %v", name, got, want)
		}
	}
	if e.item(kept) == nil {
		t.Error("indexed item lost by the sweep")
	}
}

func TestOpenDropsEntryWithoutSpoolFile(t *testing.T) {
	e := newEnv(t, nil)
	id := e.put("alice@here.example", "bob@there.example")
	e.close()
	os.Remove(filepath.Join(e.opts.Dir, id))
	e.open()
	if items, _ := e.q.List(); len(items) != 0 {
		t.Errorf("queue holds %d items, want the entry without a file dropped", len(items))
	}
	if depth, _ := e.q.Stats(); depth != 0 {
		t.Errorf("Stats depth %d", depth)
	}
}

func TestBackoffGrowsWithJitterAndIsBounded(t *testing.T) {
	e := newEnv(t, nil)
	q := e.q
	prevLow := time.Duration(0)
	for n := 1; n <= 12; n++ {
		low := min(time.Minute<<(n-1), time.Hour)
		high := low + low/5
		seen := map[time.Duration]bool{}
		for range 50 {
			d := q.backoff(n)
			if d < low || d > high {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, low, high)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("backoff(%d) took only %d distinct values in 50 draws: no jitter", n, len(seen))
		}
		if low < prevLow {
			t.Errorf("backoff(%d) range starts at %v, below backoff(%d)", n, low, n-1)
		}
		prevLow = low
	}
	if q.backoff(1000) > time.Hour+time.Hour/5 {
		t.Error("backoff exceeds MaxBackoff and its jitter")
	}
}

func TestTemporaryFailureIsRetriedAfterBackoff(t *testing.T) {
	rec := newRecorder(func(_, rcpt string) Result { return temporary(rcpt) })
	e := newEnv(t, func(o *Options) { o.Deliver = rec.Deliver })
	e.run()
	start := e.clock.Now()
	id := e.put("alice@here.example", "bob@there.example")
	rec.next(t)
	it := e.waitAttempts(id, 1)
	if d := it.NextAttempt.Sub(start); d < 60*time.Second || d > 72*time.Second {
		t.Errorf("first retry in %v, want 1m + up to 20%%", d)
	}
	if it.Rcpts[0].Status != Pending || !strings.Contains(it.Rcpts[0].LastError, "451") || !strings.Contains(it.LastError, "451") {
		t.Errorf("after a temporary failure: %+v", it)
	}
	select {
	case c := <-rec.calls:
		t.Fatalf("retried before the backoff passed: %+v", c)
	default:
	}

	e.clock.Set(it.NextAttempt)
	e.q.wake()
	rec.next(t)
	it = e.waitAttempts(id, 2)
	if d := it.NextAttempt.Sub(e.clock.Now()); d < 120*time.Second || d > 144*time.Second {
		t.Errorf("second retry in %v, want 2m + up to 20%%", d)
	}
}

func TestPartialSuccessRetriesOnlyFailedRecipients(t *testing.T) {
	var mu sync.Mutex
	failB := true
	rec := newRecorder(func(_, rcpt string) Result {
		mu.Lock()
		defer mu.Unlock()
		if rcpt == "b@x.example" && failB {
			return temporary(rcpt)
		}
		return Result{Rcpt: rcpt}
	})
	e := newEnv(t, func(o *Options) { o.Deliver = rec.Deliver })
	e.run()
	id := e.put("alice@here.example", "a@x.example", "b@x.example", "c@y.example")
	calls := []call{rec.next(t), rec.next(t)}
	slices.SortFunc(calls, func(a, b call) int { return strings.Compare(a.domain, b.domain) })
	if calls[0].domain != "x.example" || len(calls[0].rcpts) != 2 || calls[1].domain != "y.example" || len(calls[1].rcpts) != 1 {
		t.Fatalf("first attempt calls: %+v", calls)
	}
	it := e.waitAttempts(id, 1)
	status := map[string]Status{}
	for _, r := range it.Rcpts {
		status[r.Addr] = r.Status
	}
	if status["a@x.example"] != Sent || status["b@x.example"] != Pending || status["c@y.example"] != Sent {
		t.Fatalf("after first attempt: %v", status)
	}

	mu.Lock()
	failB = false
	mu.Unlock()
	e.clock.Set(it.NextAttempt)
	e.q.wake()
	c := rec.next(t)
	if c.domain != "x.example" || !slices.Equal(c.rcpts, []string{"b@x.example"}) {
		t.Errorf("retry went to %s %v, want only b@x.example", c.domain, c.rcpts)
	}
	e.waitGone(id)
	select {
	case c := <-rec.calls:
		t.Errorf("unexpected extra delivery %+v", c)
	default:
	}
}

func TestPermanentFailureBouncesAtOnce(t *testing.T) {
	var mu sync.Mutex
	okB := false
	rec := newRecorder(func(_, rcpt string) Result {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case rcpt == "a@x.example":
			return permanent(rcpt)
		case okB:
			return Result{Rcpt: rcpt}
		}
		return temporary(rcpt)
	})
	b := &bouncer{}
	e := newEnv(t, func(o *Options) { o.Deliver = rec.Deliver; o.Bounce = b.Bounce })
	e.run()
	id := e.put("alice@here.example", "a@x.example", "b@x.example")
	rec.next(t)
	waitFor(t, "bounce", func() bool { return len(b.Calls()) == 1 })
	if got := b.Calls()[0]; !slices.Equal(got, []string{"a@x.example"}) {
		t.Errorf("bounced %v, want [a@x.example]", got)
	}
	it := e.waitAttempts(id, 1)
	waitFor(t, "bounce to be recorded", func() bool {
		it = e.item(id)
		return it.Rcpts[0].Bounced
	})
	if it.Rcpts[0].Status != Failed || it.Rcpts[1].Status != Pending {
		t.Fatalf("after first attempt: %+v", it.Rcpts)
	}

	mu.Lock()
	okB = true
	mu.Unlock()
	e.clock.Set(it.NextAttempt)
	e.q.wake()
	c := rec.next(t)
	if !slices.Equal(c.rcpts, []string{"b@x.example"}) {
		t.Errorf("retry to %v, want only b", c.rcpts)
	}
	e.waitGone(id)
	if n := len(b.Calls()); n != 1 {
		t.Errorf("Bounce called %d times, want 1", n)
	}
}

func TestMaxAgeBouncesPendingOnce(t *testing.T) {
	rec := newRecorder(func(domain, rcpt string) Result {
		if domain == "down.example" {
			return temporary(rcpt)
		}
		return Result{Rcpt: rcpt}
	})
	b := &bouncer{}
	e := newEnv(t, func(o *Options) {
		o.Deliver = rec.Deliver
		o.Bounce = b.Bounce
		o.MaxAge = 2 * time.Hour
		o.MinBackoff = 10 * time.Minute
		o.MaxBackoff = 40 * time.Minute
	})
	e.run()
	created := e.clock.Now()
	id := e.put("alice@here.example", "a@down.example", "b@down.example", "c@up.example")
	attempts := 0
	for i := 0; i < 50; i++ {
		var it *Item
		waitFor(t, "next attempt to be recorded", func() bool {
			it = e.item(id)
			return it == nil || it.Attempts > attempts
		})
		if it == nil || it.Rcpts[0].Status == Failed {
			break // the last attempt gave up
		}
		attempts = it.Attempts
		if it.NextAttempt.After(created.Add(2 * time.Hour)) {
			t.Fatalf("next attempt %v is after the deadline", it.NextAttempt.Sub(created))
		}
		e.clock.Set(it.NextAttempt)
		e.q.wake()
	}
	waitFor(t, "bounce", func() bool { return len(b.Calls()) > 0 })
	e.waitGone(id)
	calls := b.Calls()
	if len(calls) != 1 || !slices.Equal(calls[0], []string{"a@down.example", "b@down.example"}) {
		t.Errorf("Bounce calls %v, want one with a and b", calls)
	}
	if got := e.clock.Now().Sub(created); got != 2*time.Hour {
		t.Errorf("gave up %v after Put, want exactly MaxAge", got)
	}
	if attempts < 4 {
		t.Errorf("only %d attempts in 2h with backoff 10m..40m", attempts)
	}
}

func TestFailedBounceIsRetried(t *testing.T) {
	rec := newRecorder(func(_, rcpt string) Result { return permanent(rcpt) })
	b := &bouncer{fail: 1}
	e := newEnv(t, func(o *Options) { o.Deliver = rec.Deliver; o.Bounce = b.Bounce })
	e.run()
	id := e.put("alice@here.example", "a@x.example")
	rec.next(t)
	it := e.waitAttempts(id, 1)
	waitFor(t, "first bounce", func() bool { return len(b.Calls()) == 1 })
	if it.Rcpts[0].Bounced {
		t.Fatal("recipient marked bounced although Bounce failed")
	}
	e.clock.Set(it.NextAttempt)
	e.q.wake()
	e.waitGone(id)
	if n := len(b.Calls()); n != 2 {
		t.Errorf("Bounce called %d times, want 2", n)
	}
	select {
	case c := <-rec.calls:
		t.Errorf("a failed recipient was delivered to again: %+v", c)
	default:
	}
}

func TestNullSenderGetsNoBounce(t *testing.T) {
	rec := newRecorder(func(_, rcpt string) Result { return permanent(rcpt) })
	b := &bouncer{}
	e := newEnv(t, func(o *Options) { o.Deliver = rec.Deliver; o.Bounce = b.Bounce })
	e.run()
	id := e.put("", "a@x.example")
	rec.next(t)
	e.waitGone(id)
	if n := len(b.Calls()); n != 0 {
		t.Errorf("bounced a message with null sender %d times", n)
	}
}

func TestPerDomainConcurrencyBound(t *testing.T) {
	var (
		mu      sync.Mutex
		active  = map[string]int{}
		peak    = map[string]int{}
		total   int
		peakAll int
	)
	release := make(chan struct{})
	e := newEnv(t, func(o *Options) {
		o.Workers = 3
		o.PerDomain = 2
		o.Deliver = func(ctx context.Context, _, domain string, rcpts []string, _ func() (io.ReadCloser, error)) []Result {
			mu.Lock()
			active[domain]++
			total++
			peak[domain] = max(peak[domain], active[domain])
			peakAll = max(peakAll, total)
			mu.Unlock()
			<-release
			mu.Lock()
			active[domain]--
			total--
			mu.Unlock()
			return []Result{{Rcpt: rcpts[0]}}
		}
	})
	e.run()
	var ids []string
	for range 6 {
		ids = append(ids, e.put("alice@here.example", "r@busy.example"))
	}
	ids = append(ids, e.put("alice@here.example", "r@other.example"))
	// The busy domain's backlog must not keep the other one waiting.
	waitFor(t, "two busy and one other delivery in flight", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return active["busy.example"] == 2 && active["other.example"] == 1
	})
	close(release)
	for _, id := range ids {
		e.waitGone(id)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak["busy.example"] != 2 {
		t.Errorf("busy.example peak concurrency %d, want 2", peak["busy.example"])
	}
	if peakAll > 3 {
		t.Errorf("total concurrency %d, above Workers=3", peakAll)
	}
}

func TestRetryDropAndStats(t *testing.T) {
	rec := newRecorder(func(_, rcpt string) Result { return temporary(rcpt) })
	e := newEnv(t, func(o *Options) { o.Deliver = rec.Deliver })
	first := e.clock.Now()
	id1 := e.put("alice@here.example", "a@x.example")
	e.clock.Advance(time.Second)
	id2 := e.put("alice@here.example", "b@y.example")
	if depth, oldest := e.q.Stats(); depth != 2 || !oldest.Equal(first) {
		t.Errorf("Stats = %d, %v; want 2, %v", depth, oldest, first)
	}
	e.run()
	rec.next(t)
	rec.next(t)
	e.waitAttempts(id1, 1)
	e.waitAttempts(id2, 1)

	if err := e.q.Retry(id1); err != nil {
		t.Fatal(err)
	}
	if c := rec.next(t); c.domain != "x.example" {
		t.Errorf("Retry(id1) delivered to %s", c.domain)
	}
	e.waitAttempts(id1, 2)
	if err := e.q.Retry(""); err != nil {
		t.Fatal(err)
	}
	rec.next(t)
	rec.next(t)
	e.waitAttempts(id1, 3)
	e.waitAttempts(id2, 2)

	if err := e.q.Drop(id1); err != nil {
		t.Fatal(err)
	}
	if e.item(id1) != nil {
		t.Error("dropped item still listed")
	}
	if _, err := os.Stat(filepath.Join(e.opts.Dir, id1)); !errors.Is(err, os.ErrNotExist) {
		t.Error("dropped item's spool file still there")
	}
	if err := e.q.Drop(id1); !errors.Is(err, ErrNotFound) {
		t.Errorf("Drop of a missing item: %v", err)
	}
	if err := e.q.Retry("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Retry of a missing item: %v", err)
	}
	if depth, _ := e.q.Stats(); depth != 1 {
		t.Errorf("Stats depth %d, want 1", depth)
	}
}

func TestPutRejectsBadRecipients(t *testing.T) {
	e := newEnv(t, nil)
	for _, rcpts := range [][]string{nil, {"nodomain"}, {"trailing@"}} {
		if _, err := e.q.Put("a@b.example", rcpts, strings.NewReader("x")); err == nil {
			t.Errorf("Put accepted recipients %q", rcpts)
		}
	}
	entries, _ := os.ReadDir(e.opts.Dir)
	if len(entries) != 0 {
		t.Errorf("refused Put left %d files", len(entries))
	}
}

func TestUnreadableItemIsHeldBackNotSpun(t *testing.T) {
	rec := newRecorder(nil)
	e := newEnv(t, func(o *Options) { o.Deliver = rec.Deliver })
	id := newID(e.clock.Now())
	err := e.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketItems).Put([]byte(id), []byte("{not json")); err != nil {
			return err
		}
		return tx.Bucket(bucketNext).Put(nextKey(e.clock.Now(), id), []byte("x.example"))
	})
	if err != nil {
		t.Fatal(err)
	}
	e.run()
	e.q.wake()
	waitFor(t, "the item to be held back", func() bool {
		e.q.mu.Lock()
		defer e.q.mu.Unlock()
		h, ok := e.q.hold[id]
		return ok && h.After(e.clock.Now())
	})
	select {
	case c := <-rec.calls:
		t.Errorf("delivered an unreadable item: %+v", c)
	default:
	}
}
