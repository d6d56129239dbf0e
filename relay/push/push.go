// Package push wakes phones: when a message from someone else arrives for
// an account, each of the account's push tokens is POSTed, as the raw
// request body, to the notification proxy (SPEC section 7), which relays
// the wake-up to Apple's or Google's service. Tokens are opaque here; the
// relay neither reads nor logs them.
//
// Answers: 2xx is done; 410 Gone means the token is dead and DropToken
// removes it from the account; anything else (network error, 429, 5xx,
// other codes) is retried with exponential backoff from BaseDelay, with
// jitter so that a proxy outage is not followed by a burst of every token
// at once, until GiveUp after the latest notification for the token.
//
// The queue is in the bbolt file shared with the store, so pending wake-ups
// survive restarts:
//
//	push-queue/<sha256(token)>            -> entry (JSON)
//	push-due/<next-attempt><sha256(token)> -> empty
//
// push-due is the due index of relay/schedule, which runs the attempts:
// <next-attempt> is 8 bytes of big-endian Unix nanoseconds, so a cursor
// walks it in the order entries are due. Entries are keyed by token:
// a token with a wake-up pending gets no second one (a wake-up is a
// wake-up), and the key length does not depend on what a client stored.
package push

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/relay/schedule"
)

// DefaultURL is the notification proxy Delta Chat's apps are registered
// with.
const DefaultURL = "https://notifications.delta.chat/notify"

var (
	bucketQueue = []byte("push-queue") // entry id -> entry (JSON)
	bucketDue   = []byte("push-due")   // dueKey(next, id) -> nothing
)

// maxAddrs bounds the accounts remembered for one token. One device can
// hold several accounts on this relay, all registering the same token; the
// bound only keeps a record from growing without limit. Accounts beyond it
// are dropped on a 410 the next time one of them is notified.
const maxAddrs = 32

// Options configure a Notifier.
type Options struct {
	// DB is the bbolt file shared with the store; the notifier keeps to
	// its buckets "push-queue" and "push-due". The caller opens and
	// closes it, after Run has returned.
	DB *bolt.DB
	// URL is the notification proxy endpoint (default DefaultURL).
	URL string
	// Client makes the POSTs. The default has a 10 s timeout and does not
	// follow redirects: a redirect to GET would drop the token and look
	// like success.
	Client *http.Client
	// DropToken removes a token the proxy answered 410 for from an
	// account. It is called outside any transaction of the notifier, so
	// it may write to DB. Required.
	DropToken func(addr, token string) error
	// Workers bounds concurrent POSTs (default 4).
	Workers int
	// BaseDelay is the wait before the first retry; each further failure
	// doubles it, up to an hour, plus up to a fifth as jitter
	// (schedule.Backoff; default 8 s).
	BaseDelay time.Duration
	// GiveUp is how long after the latest Notify for a token it is
	// retried before being dropped (default 5 h).
	GiveUp time.Duration
	// Now is the clock; tests move it. Defaults to time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default(). Tokens are never logged, and
	// addresses only at debug level (SPEC section 11).
	Logger *slog.Logger
}

// Notifier queues and sends wake-ups. Its methods are safe for concurrent
// use.
type Notifier struct {
	opts  Options
	db    *bolt.DB
	log   *slog.Logger
	sched *schedule.Scheduler

	// attempted, when set by tests, is told the outcome of every attempt
	// after it has been recorded.
	attempted func(outcome)
}

type entryID [sha256.Size]byte

func idOf(token string) entryID { return sha256.Sum256([]byte(token)) }

// entry is one token with a wake-up pending.
type entry struct {
	// Token is bytes, not a string: JSON would replace invalid UTF-8 with
	// U+FFFD, and the proxy must get the token byte for byte.
	Token []byte   `json:"token"`
	Addrs []string `json:"addrs"` // accounts that hold the token, newest last
	// Seq counts Notify calls merged into the entry. An attempt that
	// succeeds while Seq moved on may have reached the phone before the
	// newer message arrived, so the entry is sent again instead of
	// removed.
	Seq      uint64    `json:"seq"`
	First    time.Time `json:"first"`  // first Notify of this entry
	Latest   time.Time `json:"latest"` // latest Notify; GiveUp counts from here
	Attempts int       `json:"attempts"`
	Next     time.Time `json:"next"`
}

// Open loads the queue and rebuilds the due index from the entries, which
// are the truth, so a due key lost to a bug can never strand an entry.
func Open(opts Options) (*Notifier, error) {
	if opts.DB == nil || opts.DropToken == nil {
		return nil, errors.New("push: DB and DropToken are required")
	}
	if opts.URL == "" {
		opts.URL = DefaultURL
	}
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("push: notification URL %q is not an absolute http(s) URL", opts.URL)
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.BaseDelay <= 0 {
		opts.BaseDelay = 8 * time.Second
	}
	if opts.GiveUp <= 0 {
		opts.GiveUp = 5 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Client == nil {
		opts.Client = defaultClient(opts.Workers)
	}
	n := &Notifier{
		opts: opts,
		db:   opts.DB,
		log:  opts.Logger.With("part", "push"),
	}
	if err := n.load(); err != nil {
		return nil, fmt.Errorf("open push queue: %w", err)
	}
	n.sched = schedule.New(schedule.Options{
		DB: opts.DB, Due: bucketDue, Workers: opts.Workers,
		Claim: n.claim, Attempt: n.attempt, Now: opts.Now, Logger: n.log,
	})
	return n, nil
}

func defaultClient(workers int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Every POST goes to the same host; keep a connection per worker
	// instead of the default two, so steady traffic does not redial.
	tr.MaxIdleConnsPerHost = workers
	return &http.Client{
		Transport: tr,
		Timeout:   10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

func (n *Notifier) load() error {
	return n.db.Update(func(tx *bolt.Tx) error {
		q, err := tx.CreateBucketIfNotExists(bucketQueue)
		if err != nil {
			return err
		}
		due, err := schedule.Rebuild(tx, bucketDue)
		if err != nil {
			return err
		}
		var bad [][]byte
		err = q.ForEach(func(k, v []byte) error {
			var e entry
			if len(k) != sha256.Size || json.Unmarshal(v, &e) != nil || idOf(string(e.Token)) != entryID(k) {
				bad = append(bad, k)
				return nil
			}
			return due.Put(dueKey(e.Next, entryID(k)), nil)
		})
		if err != nil {
			return err
		}
		for _, k := range bad {
			if err := q.Delete(k); err != nil {
				return err
			}
		}
		if len(bad) > 0 {
			n.log.Error("dropped unreadable push queue entries", "count", len(bad))
		}
		return nil
	})
}

// Notify queues a wake-up for each of tokens, which addr holds. It returns
// once the queue is durable; the POSTs happen in Run. A token that already
// has a wake-up pending is not queued twice.
func (n *Notifier) Notify(addr string, tokens []string) error {
	now := n.opts.Now()
	queued := 0
	err := n.db.Update(func(tx *bolt.Tx) error {
		q, due := tx.Bucket(bucketQueue), tx.Bucket(bucketDue)
		queued = 0
		for _, token := range tokens {
			if token == "" {
				continue
			}
			id := idOf(token)
			e, err := getEntry(q, id)
			if err != nil {
				return err
			}
			if e == nil {
				e = &entry{Token: []byte(token), First: now, Next: now}
				if err := due.Put(dueKey(now, id), nil); err != nil {
					return err
				}
				queued++
			}
			// The entry keeps its schedule: during a proxy outage a new
			// message must not cut a token's backoff short.
			e.Seq++
			e.Latest = now
			e.Addrs = addAddr(e.Addrs, addr)
			if err := putEntry(q, id, e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("push: queue notification: %w", err)
	}
	n.log.Debug("push queued", "tokens", len(tokens), "new", queued)
	if queued > 0 {
		n.wake()
	}
	return nil
}

// Pending is the number of tokens with a wake-up queued or in flight.
func (n *Notifier) Pending() int {
	count := 0
	err := n.db.View(func(tx *bolt.Tx) error {
		count = tx.Bucket(bucketQueue).Stats().KeyN
		return nil
	})
	if err != nil {
		n.log.Error("count push queue", "err", err)
	}
	return count
}

// wake makes Run look at the queue again; it never blocks.
func (n *Notifier) wake() { n.sched.Wake() }

func addAddr(addrs []string, addr string) []string {
	if i := slices.Index(addrs, addr); i >= 0 {
		addrs = slices.Delete(addrs, i, i+1)
	}
	addrs = append(addrs, addr)
	if len(addrs) > maxAddrs {
		addrs = addrs[len(addrs)-maxAddrs:]
	}
	return addrs
}

func dueKey(t time.Time, id entryID) []byte { return schedule.Key(t, id[:]) }

// getEntry returns the entry, or nil if there is none.
func getEntry(q *bolt.Bucket, id entryID) (*entry, error) {
	v := q.Get(id[:])
	if v == nil {
		return nil, nil
	}
	var e entry
	if err := json.Unmarshal(v, &e); err != nil {
		return nil, fmt.Errorf("decode push entry: %w", err)
	}
	return &e, nil
}

func putEntry(q *bolt.Bucket, id entryID, e *entry) error {
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return q.Put(id[:], v)
}
