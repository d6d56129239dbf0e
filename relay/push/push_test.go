package push

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/testclock"
)

// wait bounds every wait on an event; nothing in these tests takes long.
const wait = 5 * time.Second

// clock is a test clock that only moves when told.
type clock = testclock.Clock

func newClock() *clock { return testclock.New(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) }

// hangUp makes the endpoint close the connection without an answer.
const hangUp = 0

// request is one POST seen by the endpoint.
type request struct {
	method, path, body string
	at                 time.Time // test clock at arrival
}

// endpoint is a fake notification proxy on loopback TLS.
type endpoint struct {
	t      *testing.T
	srv    *httptest.Server
	clock  *clock
	status atomic.Int32
	// gate, when set, holds every request until it receives from it.
	gate chan struct{}

	arrived           chan request
	mu                sync.Mutex
	reqs              []request
	active, maxActive atomic.Int32
}

func newEndpoint(t *testing.T, c *clock, status int, gated bool) *endpoint {
	ep := &endpoint{t: t, clock: c, arrived: make(chan request, 100)}
	ep.status.Store(int32(status))
	if gated {
		ep.gate = make(chan struct{})
	}
	ep.srv = httptest.NewUnstartedServer(http.HandlerFunc(ep.serve))
	// Connections cut by the tests (hang-ups, shutdown) are expected.
	ep.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	ep.srv.StartTLS()
	t.Cleanup(ep.srv.Close)
	return ep
}

func (ep *endpoint) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := request{r.Method, r.URL.Path, string(body), ep.clock.Now()}
	ep.mu.Lock()
	ep.reqs = append(ep.reqs, req)
	ep.mu.Unlock()
	n := ep.active.Add(1)
	for m := ep.maxActive.Load(); n > m && !ep.maxActive.CompareAndSwap(m, n); m = ep.maxActive.Load() {
	}
	ep.arrived <- req
	if ep.gate != nil {
		select {
		case <-ep.gate:
		case <-r.Context().Done():
			// The client gave up: it must not get an answer after all.
			ep.active.Add(-1)
			panic(http.ErrAbortHandler)
		}
	}
	// Before the answer, so that a worker is only free again once this
	// request no longer counts as active.
	ep.active.Add(-1)
	status := int(ep.status.Load())
	if status == hangUp {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	w.WriteHeader(status)
}

func (ep *endpoint) url() string { return ep.srv.URL + "/notify" }

func (ep *endpoint) requests() []request {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return slices.Clone(ep.reqs)
}

func (ep *endpoint) next() request {
	ep.t.Helper()
	select {
	case r := <-ep.arrived:
		return r
	case <-time.After(wait):
		ep.t.Fatal("no request at the endpoint")
		return request{}
	}
}

func (ep *endpoint) release() {
	ep.t.Helper()
	select {
	case ep.gate <- struct{}{}:
	case <-time.After(wait):
		ep.t.Fatal("no request waiting at the endpoint")
	}
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type drop struct{ addr, token string }

type env struct {
	t        *testing.T
	path     string
	db       *bolt.DB
	clock    *clock
	opts     Options
	n        *Notifier
	logs     *syncBuffer
	outcomes chan outcome
	drops    chan drop
	cancel   context.CancelFunc
	done     chan struct{}
}

func newEnv(t *testing.T, c *clock, ep *endpoint, edit func(*Options)) *env {
	t.Helper()
	e := &env{
		t:        t,
		path:     filepath.Join(t.TempDir(), "index.db"),
		clock:    c,
		logs:     &syncBuffer{},
		outcomes: make(chan outcome, 100),
		drops:    make(chan drop, 100),
	}
	e.opts = Options{
		URL:    ep.url(),
		Client: ep.srv.Client(),
		DropToken: func(addr, token string) error {
			e.drops <- drop{addr, token}
			return nil
		},
		Now:    c.Now,
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
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
	db, err := bolt.Open(e.path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.db, e.opts.DB = db, db
	n, err := Open(e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	n.attempted = func(o outcome) { e.outcomes <- o }
	e.n = n
}

func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan struct{})
	go func() {
		defer close(e.done)
		e.n.Run(ctx)
	}()
}

// stop ends Run and waits for it; every attempt has then been recorded.
func (e *env) stop() {
	e.t.Helper()
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case <-e.done:
	case <-time.After(wait):
		e.t.Fatal("Run did not return after cancel")
	}
}

func (e *env) close() {
	e.stop()
	if e.db != nil {
		e.db.Close()
		e.db = nil
	}
}

func (e *env) notify(addr string, tokens ...string) {
	e.t.Helper()
	if err := e.n.Notify(addr, tokens); err != nil {
		e.t.Fatal(err)
	}
}

// outcome waits for the next recorded attempt and checks what became of it.
func (e *env) outcome(want result) outcome {
	e.t.Helper()
	select {
	case o := <-e.outcomes:
		if o.result != want {
			e.t.Fatalf("attempt ended with result %d (status %d), want %d", o.result, o.status, want)
		}
		return o
	case <-time.After(wait):
		e.t.Fatalf("no attempt recorded, want result %d", want)
		return outcome{}
	}
}

// anyOutcome waits for the next recorded attempt.
func (e *env) anyOutcome() outcome {
	e.t.Helper()
	select {
	case o := <-e.outcomes:
		return o
	case <-time.After(wait):
		e.t.Fatal("no attempt recorded")
		return outcome{}
	}
}

// entry reads a token's queue entry, nil if there is none.
func (e *env) entry(token string) *entry {
	e.t.Helper()
	var out *entry
	err := e.db.View(func(tx *bolt.Tx) error {
		var err error
		out, err = getEntry(tx.Bucket(bucketQueue), idOf(token))
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// advanceTo moves the clock to t and wakes the scheduler, as its timer
// would when the real clock reached t.
func (e *env) advanceTo(t time.Time) {
	e.clock.Set(t)
	e.n.wake()
}

// noPrivateData checks that no token or address reached the log, at any
// level (SPEC section 11).
func (e *env) noPrivateData(secrets ...string) {
	e.t.Helper()
	logs := e.logs.String()
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			e.t.Errorf("log contains %q:\n%s", s, logs)
		}
	}
}

func TestNotifyPostsEachTokenAsRawBody(t *testing.T) {
	c := newClock()
	ep := newEndpoint(t, c, http.StatusOK, false)
	e := newEnv(t, c, ep, nil)
	tokens := []string{
		"eyJwcm92aWRlciI6ImFwbnMiLCJ0b2tlbiI6IjAxMjMifQ==",
		"with spaces\r\nand a line break",
		"not UTF-8: \xff\xfe\x00 end",
	}
	e.run()
	e.notify("alice@example.org", tokens...)
	for range tokens {
		e.outcome(delivered)
	}
	e.stop()
	reqs := ep.requests()
	var bodies []string
	for _, r := range reqs {
		if r.method != http.MethodPost || r.path != "/notify" {
			t.Errorf("request %s %s, want POST /notify", r.method, r.path)
		}
		bodies = append(bodies, r.body)
	}
	slices.Sort(bodies)
	want := slices.Sorted(slices.Values(tokens))
	if !slices.Equal(bodies, want) {
		t.Errorf("bodies %q, want each token once: %q", bodies, want)
	}
	if n := e.n.Pending(); n != 0 {
		t.Errorf("Pending() = %d after delivery, want 0", n)
	}
	e.noPrivateData(append(tokens, "alice@example.org")...)
}

func TestGoneDropsTokenWithoutRetry(t *testing.T) {
	c := newClock()
	ep := newEndpoint(t, c, http.StatusGone, false)
	e := newEnv(t, c, ep, nil)
	// One device holding two accounts registers the same token for both.
	e.notify("alice@example.org", "dead-token")
	e.notify("bob@example.org", "dead-token")
	e.run()
	e.outcome(dropped)
	var got []drop
	for range 2 {
		select {
		case d := <-e.drops:
			got = append(got, d)
		case <-time.After(wait):
			t.Fatalf("DropToken called %d times, want 2", len(got))
		}
	}
	slices.SortFunc(got, func(a, b drop) int { return strings.Compare(a.addr, b.addr) })
	want := []drop{{"alice@example.org", "dead-token"}, {"bob@example.org", "dead-token"}}
	if !slices.Equal(got, want) {
		t.Errorf("DropToken calls %v, want %v", got, want)
	}
	if n := e.n.Pending(); n != 0 {
		t.Errorf("Pending() = %d after 410, want 0", n)
	}
	e.advanceTo(c.Now().Add(24 * time.Hour))
	e.stop()
	if n := len(ep.requests()); n != 1 {
		t.Errorf("%d requests, want 1: a 410 is not retried", n)
	}
	e.noPrivateData("dead-token", "alice@example.org", "bob@example.org")
}

func TestFailuresAreRetriedWithBackoffUntilTheProxyAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
	}{
		{"500", http.StatusInternalServerError},
		{"429", http.StatusTooManyRequests},
		{"connection closed", hangUp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			ep := newEndpoint(t, c, tc.status, false)
			e := newEnv(t, c, ep, nil)
			e.run()
			e.notify("alice@example.org", "tok")
			if r := ep.next(); !r.at.Equal(c.Now()) {
				t.Fatalf("first attempt at %v, want at once (%v)", r.at, c.Now())
			}
			jittered := false
			for attempt := 1; attempt <= 6; attempt++ {
				e.outcome(retry)
				prev := c.Now()
				next := e.entry("tok").Next
				nominal := 8 * time.Second << (attempt - 1)
				if d := next.Sub(prev); d < nominal || d > nominal+nominal/5 {
					t.Fatalf("after failure %d next attempt in %v, want in [%v, %v]", attempt, d, nominal, nominal+nominal/5)
				} else if d != nominal {
					jittered = true
				}
				// Just short of due: a scheduler that jumps the gun would
				// send now, and the arrival time below would show it.
				e.advanceTo(next.Add(-time.Millisecond))
				if attempt == 6 {
					ep.status.Store(http.StatusOK)
				}
				e.advanceTo(next)
				if r := ep.next(); !r.at.Equal(next) {
					t.Fatalf("attempt %d arrived at %v, want at %v", attempt+1, r.at, next)
				}
			}
			e.outcome(delivered)
			if !jittered {
				t.Error("six retry delays were all exactly nominal: no jitter")
			}
			if n := e.n.Pending(); n != 0 {
				t.Errorf("Pending() = %d after success, want 0", n)
			}
		})
	}
}

func TestBackoffDoublesWithJitterAndIsCapped(t *testing.T) {
	n := &Notifier{opts: Options{BaseDelay: 8 * time.Second}}
	for attempts := 1; attempts <= 20; attempts++ {
		nominal := min(8*time.Second<<(attempts-1), maxBackoff)
		seen := map[time.Duration]bool{}
		for range 50 {
			d := n.backoff(attempts)
			if d < nominal || d > nominal+nominal/5 {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempts, d, nominal, nominal+nominal/5)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("backoff(%d) took %d distinct values in 50 draws: no jitter", attempts, len(seen))
		}
	}
}

func TestQueueSurvivesRestart(t *testing.T) {
	t.Run("never attempted", func(t *testing.T) {
		c := newClock()
		ep := newEndpoint(t, c, http.StatusOK, false)
		e := newEnv(t, c, ep, nil)
		e.notify("alice@example.org", "tok")
		e.close()

		e.open()
		if n := e.n.Pending(); n != 1 {
			t.Fatalf("Pending() = %d after reopening, want 1", n)
		}
		e.run()
		e.outcome(delivered)
		if r := ep.requests(); len(r) != 1 || r[0].body != "tok" {
			t.Errorf("requests %+v, want one with the token", r)
		}
	})
	t.Run("after failures", func(t *testing.T) {
		c := newClock()
		ep := newEndpoint(t, c, http.StatusServiceUnavailable, false)
		e := newEnv(t, c, ep, nil)
		e.run()
		e.notify("alice@example.org", "tok")
		e.outcome(retry)
		before := e.entry("tok")
		e.close()

		ep.status.Store(http.StatusOK)
		e.open()
		after := e.entry("tok")
		if after == nil || after.Attempts != 1 || !after.Next.Equal(before.Next) {
			t.Fatalf("entry after reopening %+v, want %+v", after, before)
		}
		// Run's first look at the queue sets its timer for the due time;
		// moving the clock and waking it stands in for that timer.
		e.run()
		e.advanceTo(after.Next)
		e.outcome(delivered)
		if n := e.n.Pending(); n != 0 {
			t.Errorf("Pending() = %d, want 0", n)
		}
		if r := ep.requests(); len(r) != 2 || !r[1].at.Equal(after.Next) {
			t.Errorf("requests %+v, want a second one at %v", r, after.Next)
		}
	})
	t.Run("in flight at shutdown", func(t *testing.T) {
		c := newClock()
		ep := newEndpoint(t, c, http.StatusOK, true)
		e := newEnv(t, c, ep, nil)
		e.run()
		e.notify("alice@example.org", "tok")
		ep.next()
		e.stop()
		e.outcome(cancelled)
		if en := e.entry("tok"); en == nil || en.Attempts != 0 {
			t.Fatalf("entry after a cancelled attempt %+v, want it kept with no attempt counted", en)
		}
		e.close()

		close(ep.gate) // the proxy answers at once from now on
		e.open()
		e.run()
		e.outcome(delivered)
	})
}

func TestGivesUpAfterGiveUp(t *testing.T) {
	c := newClock()
	ep := newEndpoint(t, c, http.StatusInternalServerError, false)
	e := newEnv(t, c, ep, nil)
	start := c.Now()
	e.run()
	e.notify("alice@example.org", "5h-token")
	attempts := 1
	for ; ; attempts++ {
		if attempts > 40 {
			t.Fatal("still retrying after 40 attempts")
		}
		o := e.anyOutcome()
		if o.result == gaveUp {
			break
		}
		if o.result != retry {
			t.Fatalf("attempt %d: result %d, want retry or give up", attempts, o.result)
		}
		next := e.entry("5h-token").Next
		if next.After(start.Add(5 * time.Hour)) {
			t.Fatalf("attempt scheduled at %v, after the 5 h deadline", next.Sub(start))
		}
		e.advanceTo(next)
	}
	reqs := ep.requests()
	if len(reqs) != attempts {
		t.Fatalf("%d requests for %d attempts", len(reqs), attempts)
	}
	if last := reqs[len(reqs)-1].at.Sub(start); last != 5*time.Hour {
		t.Errorf("last attempt %v after the first, want exactly 5h", last)
	}
	if n := e.n.Pending(); n != 0 {
		t.Errorf("Pending() = %d after giving up, want 0", n)
	}
	e.advanceTo(c.Now().Add(24 * time.Hour))
	e.stop()
	if n := len(ep.requests()); n != attempts {
		t.Errorf("%d requests after giving up, want still %d", n, attempts)
	}
	e.noPrivateData("5h-token", "alice@example.org")
}

func TestPendingTokenIsNotQueuedTwice(t *testing.T) {
	c := newClock()
	ep := newEndpoint(t, c, http.StatusServiceUnavailable, false)
	e := newEnv(t, c, ep, nil)
	e.notify("alice@example.org", "tok")
	e.notify("alice@example.org", "tok", "tok")
	if n := e.n.Pending(); n != 1 {
		t.Fatalf("Pending() = %d after three notifications for one token, want 1", n)
	}
	e.run()
	e.outcome(retry)
	due := e.entry("tok").Next

	// A message during the backoff neither adds an entry nor moves the
	// retry forward (that would defeat the backoff during an outage),
	// but gives the token a full GiveUp from now.
	later := c.Now().Add(time.Second)
	c.Set(later)
	e.notify("alice@example.org", "tok")
	en := e.entry("tok")
	if n := e.n.Pending(); n != 1 || !en.Next.Equal(due) || !en.Latest.Equal(later) {
		t.Fatalf("after a notification during backoff: Pending %d, entry %+v; want 1 entry due at %v, latest %v", n, en, due, later)
	}

	ep.status.Store(http.StatusOK)
	e.advanceTo(due)
	e.outcome(delivered)
	e.stop()
	if n := len(ep.requests()); n != 2 {
		t.Errorf("%d requests, want 2 (one failed, one retry)", n)
	}
}

func TestNotifyDuringAttemptSendsAgain(t *testing.T) {
	c := newClock()
	ep := newEndpoint(t, c, http.StatusOK, true)
	e := newEnv(t, c, ep, nil)
	e.run()
	e.notify("alice@example.org", "tok")
	ep.next()
	// The POST in flight may have woken the phone before this message
	// arrived, so it must not be merged away.
	e.notify("alice@example.org", "tok")
	ep.release()
	e.outcome(resent)
	ep.next()
	ep.release()
	e.outcome(delivered)
	e.stop()
	if n := len(ep.requests()); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
}

func TestWorkersBoundConcurrentPosts(t *testing.T) {
	c := newClock()
	ep := newEndpoint(t, c, http.StatusOK, true)
	e := newEnv(t, c, ep, func(o *Options) { o.Workers = 3 })
	var tokens []string
	for i := range 10 {
		tokens = append(tokens, "tok-"+string(rune('a'+i)))
	}
	e.notify("alice@example.org", tokens...)
	e.run()
	for range 3 {
		ep.next()
	}
	// Each release frees one worker, which takes the next token.
	for range len(tokens) - 3 {
		ep.release()
		ep.next()
	}
	for range 3 {
		ep.release()
	}
	for range tokens {
		e.outcome(delivered)
	}
	if m := ep.maxActive.Load(); m != 3 {
		t.Errorf("at most %d requests at once, want 3 (Workers)", m)
	}
}

func TestOpenChecksOptions(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "index.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	dropToken := func(string, string) error { return nil }
	for _, tc := range []struct {
		name string
		opts Options
		ok   bool
	}{
		{"defaults", Options{DB: db, DropToken: dropToken}, true},
		{"no DB", Options{DropToken: dropToken}, false},
		{"no DropToken", Options{DB: db}, false},
		{"relative URL", Options{DB: db, DropToken: dropToken, URL: "/notify"}, false},
		{"other scheme", Options{DB: db, DropToken: dropToken, URL: "ftp://example.org/notify"}, false},
	} {
		n, err := Open(tc.opts)
		if (err == nil) != tc.ok {
			t.Errorf("%s: Open error %v, want ok=%v", tc.name, err, tc.ok)
		}
		if tc.ok && n.opts.URL != DefaultURL {
			t.Errorf("%s: URL %q, want %q", tc.name, n.opts.URL, DefaultURL)
		}
	}
}
