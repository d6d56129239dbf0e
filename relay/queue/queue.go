// Package queue is the durable outbound queue: mail for other servers
// waits here, survives crashes and restarts, and is retried with backoff
// until every recipient has it or the sender has been told it failed.
//
// Durability (SPEC section 6, "nothing accepted with 250 is ever lost"):
// Put writes the message to a spool file (temp name, fsync, rename, fsync
// of the directory) and only then commits the index entry in bbolt; it
// returns after both. A crash between the two leaves a spool file nobody
// was told about, which Open removes. Finished items lose their index entry
// first and their spool file after, so a crash there leaves an orphan file
// too, never an entry without its message.
//
// Index, in the bbolt file shared with the store:
//
//	queue/<id>                     -> item record (JSON)
//	queue-next/<next-attempt><id>  -> pending destination domains, comma-separated
//
// queue-next is the due index of relay/schedule, which runs the attempts:
// <next-attempt> is 8 bytes of big-endian Unix nanoseconds, so a cursor
// walks it in the order items are due.
package queue

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/safeio"
	"github.com/chatrelay/chatrelay/relay/schedule"
)

var (
	bucketItems = []byte("queue")      // id -> itemRecord
	bucketNext  = []byte("queue-next") // nextKey(time, id) -> domains
)

// ErrNotFound is returned by Retry and Drop for an unknown id.
var ErrNotFound = errors.New("queue: no such item")

// Status is where one recipient stands.
type Status string

const (
	// Pending recipients are tried again at the item's NextAttempt.
	Pending Status = "pending"
	// Sent recipients have the message; they are not tried again.
	Sent Status = "sent"
	// Failed recipients will not get the message; the sender is told
	// (Rcpt.Bounced once that has happened).
	Failed Status = "failed"
)

// Rcpt is one recipient of a queued message.
type Rcpt struct {
	Addr      string `json:"addr"`
	Status    Status `json:"status"`
	LastError string `json:"last_error,omitempty"`
	// Reply is the remote server's reply code and enhanced status code
	// of the last failure ("550 5.1.1"), without its text; empty when the
	// failure carried none. Bounces say this, never LastError.
	Reply string `json:"reply,omitempty"`
	// Bounced is set once the Bounce callback has taken a Failed recipient.
	Bounced bool `json:"bounced,omitempty"`
}

// Item is one queued message: its envelope and delivery state.
type Item struct {
	ID string `json:"id"`
	// From is the envelope sender; "" for the null reverse-path, which
	// never gets a bounce (RFC 5321 section 4.5.5).
	From        string    `json:"from"`
	Rcpts       []Rcpt    `json:"rcpts"`
	Size        int64     `json:"size"`
	Created     time.Time `json:"created"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
}

// Result is the outcome of one delivery attempt for one recipient.
type Result struct {
	Rcpt string
	// Err is nil when the recipient's server took the message.
	Err error
	// Permanent marks Err as final (an SMTP 5xx): the recipient is not
	// tried again and the sender gets a bounce.
	Permanent bool
	// Reply is the reply code and enhanced status code the recipient's
	// server refused with ("550 5.1.1"), without its text, which is the
	// remote's to choose and must not reach the sender (see Rcpt.Reply).
	Reply string
}

// DeliverFunc makes one attempt to deliver a message to the recipients of
// one destination domain. body opens the message; it may be called more
// than once, and the caller closes what it returns. It returns a result
// per recipient; a recipient without one counts as a temporary failure.
type DeliverFunc func(ctx context.Context, from, domain string, rcpts []string, body func() (io.ReadCloser, error)) []Result

// Options configure a Queue.
type Options struct {
	// DB is the bbolt file shared with the store; the queue keeps to its
	// buckets "queue" and "queue-next". The caller opens and closes it.
	DB *bolt.DB
	// Dir holds the spool files, one per item, named by item ID.
	Dir string
	// Deliver is called once per destination domain per attempt.
	Deliver DeliverFunc
	// Bounce is called when recipients have finally failed (a permanent
	// error, or MaxAge passed) with the item and those recipients, once
	// for each recipient. The relay builds the DSN and delivers it to the
	// sender. If Bounce returns an error it is called again later; a crash
	// right after it returns may repeat it once.
	Bounce func(item *Item, failed []Rcpt) error
	// MaxAge is how long a recipient is retried before it bounces
	// (default 48h, SPEC section 6).
	MaxAge time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts, which
	// doubles each time, plus up to a fifth as jitter (schedule.Backoff;
	// defaults 1m and 1h).
	MinBackoff, MaxBackoff time.Duration
	// Workers bounds concurrent deliveries in total, PerDomain for any
	// one destination domain (defaults 32 and 8).
	Workers, PerDomain int
	// DeliverTimeout bounds one Deliver call (default 10m); the courier
	// has finer timeouts of its own.
	DeliverTimeout time.Duration
	// Now is the clock; tests move it. Defaults to time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Queue is the outbound queue. Its methods are safe for concurrent use.
type Queue struct {
	opts  Options
	db    *bolt.DB
	log   *slog.Logger
	sched *schedule.Scheduler
	sem   chan struct{} // one slot per concurrent delivery

	mu       sync.Mutex
	reserved map[string]int           // domain -> jobs claimed for it
	domSem   map[string]chan struct{} // domain -> its delivery slots
	// hold keeps items whose outcome could not be recorded (the index
	// refused a write) from being retried in a tight loop.
	hold map[string]time.Time
}

// Open loads the queue: every indexed item will be attempted again (it may
// have been in flight when the relay stopped), spool files without an index
// entry are removed, and index entries without a spool file are dropped
// with an error in the log.
func Open(opts Options) (*Queue, error) {
	if opts.DB == nil || opts.Dir == "" || opts.Deliver == nil || opts.Bounce == nil {
		return nil, errors.New("queue: DB, Dir, Deliver and Bounce are required")
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 48 * time.Hour
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Minute
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = time.Hour
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.Workers <= 0 {
		opts.Workers = 32
	}
	if opts.PerDomain <= 0 {
		opts.PerDomain = 8
	}
	if opts.DeliverTimeout <= 0 {
		opts.DeliverTimeout = 10 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create queue directory: %w", err)
	}
	q := &Queue{
		opts:     opts,
		db:       opts.DB,
		log:      opts.Logger.With("part", "queue"),
		sem:      make(chan struct{}, opts.Workers),
		reserved: map[string]int{},
		domSem:   map[string]chan struct{}{},
		hold:     map[string]time.Time{},
	}
	if err := q.load(); err != nil {
		return nil, fmt.Errorf("open queue: %w", err)
	}
	q.sched = schedule.New(schedule.Options{
		DB: opts.DB, Due: bucketNext, Workers: opts.Workers,
		Claim: q.claim, Attempt: q.attempt, Now: opts.Now, Logger: q.log,
	})
	return q, nil
}

// load reconciles the index with the spool directory and rebuilds
// queue-next from the item records, which are the truth.
func (q *Queue) load() error {
	files := map[string]bool{}
	entries, err := os.ReadDir(q.opts.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		files[e.Name()] = true
	}
	indexed := map[string]bool{}
	err = q.db.Update(func(tx *bolt.Tx) error {
		items, err := tx.CreateBucketIfNotExists(bucketItems)
		if err != nil {
			return err
		}
		next, err := schedule.Rebuild(tx, bucketNext)
		if err != nil {
			return err
		}
		var lost [][]byte
		err = items.ForEach(func(k, v []byte) error {
			var it Item
			if err := json.Unmarshal(v, &it); err != nil || it.ID != string(k) || !validID(it.ID) {
				q.log.Error("dropping unreadable queue entry", "id", string(k), "err", err)
				lost = append(lost, k)
				return nil
			}
			if !files[it.ID] {
				q.log.Error("dropping queue entry whose spool file is missing", "id", it.ID)
				lost = append(lost, k)
				return nil
			}
			indexed[it.ID] = true
			return next.Put(nextKey(it.NextAttempt, it.ID), pendingDomains(&it))
		})
		if err != nil {
			return err
		}
		for _, k := range lost {
			if err := items.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	orphans := 0
	for name := range files {
		if !indexed[name] && ownFile(name) {
			if err := os.Remove(filepath.Join(q.opts.Dir, name)); err != nil {
				q.log.Error("remove orphan spool file", "file", name, "err", err)
				continue
			}
			orphans++
		}
	}
	if orphans > 0 {
		q.log.Info("removed spool files never acknowledged (left by a crash)", "count", orphans)
		return safeio.SyncDir(q.opts.Dir)
	}
	return nil
}

// Put queues a message for rcpts. It returns only once the message and its
// index entry are durable, so the caller may then answer 250.
func (q *Queue) Put(from string, rcpts []string, body io.Reader) (string, error) {
	if len(rcpts) == 0 {
		return "", errors.New("queue: no recipients")
	}
	now := q.opts.Now()
	it := &Item{ID: newID(now), From: from, Created: now, NextAttempt: now}
	seen := map[string]bool{}
	for _, r := range rcpts {
		if domainOf(r) == "" {
			return "", fmt.Errorf("queue: recipient %q has no domain", r)
		}
		if seen[r] {
			continue
		}
		seen[r] = true
		it.Rcpts = append(it.Rcpts, Rcpt{Addr: r, Status: Pending})
	}
	path := q.spoolPath(it.ID)
	err := safeio.WriteFrom(path, 0o600, func(w io.Writer) error {
		n, err := io.Copy(w, body)
		it.Size = n
		return err
	})
	if err != nil {
		return "", fmt.Errorf("queue: write spool file: %w", err)
	}
	rec, err := json.Marshal(it)
	if err != nil {
		os.Remove(path)
		return "", err
	}
	// Batch groups concurrent Puts into one commit (one fsync).
	err = q.db.Batch(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketItems).Put([]byte(it.ID), rec); err != nil {
			return err
		}
		return tx.Bucket(bucketNext).Put(nextKey(it.NextAttempt, it.ID), pendingDomains(it))
	})
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("queue: commit: %w", err)
	}
	q.log.Debug("queued", "id", it.ID, "rcpts", len(it.Rcpts), "size", it.Size)
	q.wake()
	return it.ID, nil
}

// List returns every queued item, oldest first.
func (q *Queue) List() ([]Item, error) {
	var items []Item
	err := q.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketItems).ForEach(func(_, v []byte) error {
			var it Item
			if err := json.Unmarshal(v, &it); err != nil {
				return err
			}
			items = append(items, it)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("queue: list: %w", err)
	}
	slices.SortStableFunc(items, func(a, b Item) int { return a.Created.Compare(b.Created) })
	return items, nil
}

// Stats returns the number of queued items and when the oldest was queued
// (zero when the queue is empty).
func (q *Queue) Stats() (depth int, oldest time.Time) {
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketItems).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			depth++
			if depth == 1 {
				// IDs start with the creation time, so the first is oldest.
				var it Item
				if err := json.Unmarshal(v, &it); err != nil {
					return err
				}
				oldest = it.Created
			}
		}
		return nil
	})
	if err != nil {
		q.log.Error("queue stats", "err", err)
	}
	return depth, oldest
}

// Retry makes the item (every item when id is "") due now. An attempt
// already in flight finishes first and sets its own next time.
func (q *Queue) Retry(id string) error {
	now := q.opts.Now()
	found := false
	err := q.db.Update(func(tx *bolt.Tx) error {
		items := tx.Bucket(bucketItems)
		var ids [][]byte
		if id == "" {
			items.ForEach(func(k, _ []byte) error { ids = append(ids, slices.Clone(k)); return nil })
		} else if items.Get([]byte(id)) != nil {
			ids = [][]byte{[]byte(id)}
		}
		for _, k := range ids {
			it, err := getItem(tx, string(k))
			if err != nil {
				return err
			}
			found = true
			if err := putItem(tx, it, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue: retry: %w", err)
	}
	if !found && id != "" {
		return ErrNotFound
	}
	q.wake()
	return nil
}

// Drop removes an item without delivering or bouncing it (an admin
// action). An attempt in flight finishes but records nothing.
func (q *Queue) Drop(id string) error {
	found := false
	err := q.db.Update(func(tx *bolt.Tx) error {
		it, err := getItem(tx, id)
		if errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		found = true
		return deleteItem(tx, it)
	})
	if err != nil {
		return fmt.Errorf("queue: drop: %w", err)
	}
	if !found {
		return ErrNotFound
	}
	q.removeSpool(id)
	q.mu.Lock()
	delete(q.hold, id)
	q.mu.Unlock()
	q.log.Info("dropped by admin", "id", id)
	return nil
}

func (q *Queue) spoolPath(id string) string { return filepath.Join(q.opts.Dir, id) }

func (q *Queue) removeSpool(id string) {
	if err := os.Remove(q.spoolPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		// Open sweeps it at the next start.
		q.log.Error("remove spool file", "id", id, "err", err)
	}
}

// wake makes the scheduler look at the queue again.
func (q *Queue) wake() { q.sched.Wake() }

// backoff is the wait after the n-th failed attempt (schedule.Backoff):
// the jitter keeps a restart, or the return of a network that was down,
// from retrying everything at the same moment.
func (q *Queue) backoff(n int) time.Duration {
	return schedule.Backoff(n, q.opts.MinBackoff, q.opts.MaxBackoff)
}

// newID returns a fresh item ID: creation time then randomness, in hex, so
// IDs sort by age and are safe as file names.
func newID(now time.Time) string {
	var b [14]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixNano()))
	rand.Read(b[8:])
	return hex.EncodeToString(b[:])
}

func validID(id string) bool {
	if len(id) != 28 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// ownFile tells whether a name in the spool directory is one the queue
// writes (a spool file or safeio's temporary for one), so the sweep never
// deletes anything else that ended up there.
func ownFile(name string) bool {
	if validID(name) {
		return true
	}
	id, _, ok := strings.Cut(strings.TrimPrefix(name, "."), ".tmp")
	return ok && strings.HasPrefix(name, ".") && validID(id)
}

func nextKey(t time.Time, id string) []byte { return schedule.Key(t, []byte(id)) }

// domainOf returns the lower-cased domain of an address ("" if none).
// IP literals ("[1.2.3.4]") are domains like any other here.
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 || i == len(addr)-1 {
		return ""
	}
	return strings.ToLower(addr[i+1:])
}

// pendingDomains lists the distinct domains of pending recipients.
func pendingDomains(it *Item) []byte {
	var ds []string
	for _, r := range it.Rcpts {
		if r.Status == Pending {
			if d := domainOf(r.Addr); !slices.Contains(ds, d) {
				ds = append(ds, d)
			}
		}
	}
	return []byte(strings.Join(ds, ","))
}

func splitDomains(v []byte) []string {
	if len(v) == 0 {
		return nil
	}
	return strings.Split(string(v), ",")
}

func getItem(tx *bolt.Tx, id string) (*Item, error) {
	v := tx.Bucket(bucketItems).Get([]byte(id))
	if v == nil {
		return nil, ErrNotFound
	}
	it := new(Item)
	if err := json.Unmarshal(v, it); err != nil {
		return nil, fmt.Errorf("decode queue item %s: %w", id, err)
	}
	return it, nil
}

// putItem writes the item with its next attempt at next, moving its
// queue-next entry.
func putItem(tx *bolt.Tx, it *Item, next time.Time) error {
	prev := next
	if old := tx.Bucket(bucketItems).Get([]byte(it.ID)); old != nil {
		var p Item
		if err := json.Unmarshal(old, &p); err == nil {
			prev = p.NextAttempt
		}
	}
	it.NextAttempt = next
	rec, err := json.Marshal(it)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketItems).Put([]byte(it.ID), rec); err != nil {
		return err
	}
	return schedule.Move(tx.Bucket(bucketNext), []byte(it.ID), prev, next, pendingDomains(it))
}

func deleteItem(tx *bolt.Tx, it *Item) error {
	if err := tx.Bucket(bucketNext).Delete(nextKey(it.NextAttempt, it.ID)); err != nil {
		return err
	}
	return tx.Bucket(bucketItems).Delete([]byte(it.ID))
}

// errSummary keeps stored error texts short; a remote server's reply can
// be long.
func errSummary(err error) string {
	s := err.Error()
	if len(s) > 500 {
		s = s[:500] + "..."
	}
	return s
}
