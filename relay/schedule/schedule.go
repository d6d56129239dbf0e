// Package schedule is the skeleton the outbound queue (relay/queue) and
// the push queue (relay/push) share: durable entries kept in a bbolt
// bucket in the order they are due, a runner that claims due entries up
// to a number of workers and attempts each in its own goroutine, and one
// retry schedule (exponential backoff with jitter).
//
// The due index is a bucket whose keys are the time an entry is due, 8
// bytes of big-endian Unix nanoseconds, followed by the entry's id, so a
// cursor walks it in the order entries are due. Its owner keeps the
// entries themselves (with their due time) elsewhere, rebuilds the index
// from them at open (Rebuild) and moves an entry's key when it
// reschedules it (Move); the scheduler only reads the index and keeps
// nothing but in-flight bookkeeping in memory.
package schedule

import (
	"context"
	"encoding/binary"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// MaxWait caps how long Run sleeps: its timer runs on the monotonic clock
// while due times are wall time, so a wall clock that is set forward must
// not leave due entries waiting long.
const MaxWait = 10 * time.Minute

// Key is the due-index key of the entry id due at t. Times before 1970
// count as 1970.
func Key(t time.Time, id []byte) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(max(t.UnixNano(), 0)))
	return append(k, id...)
}

// ParseKey splits a due-index key; ok is false for a key too short to
// hold a time and an id.
func ParseKey(k []byte) (t time.Time, id []byte, ok bool) {
	if len(k) <= 8 {
		return time.Time{}, nil, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))), k[8:], true
}

// Move reschedules id in the due index b from old to next (with value v).
func Move(b *bolt.Bucket, id []byte, old, next time.Time, v []byte) error {
	if err := b.Delete(Key(old, id)); err != nil {
		return err
	}
	return b.Put(Key(next, id), v)
}

// Rebuild empties the due index named name (creating it if need be) and
// returns it for the caller to fill from its entries, which are the
// truth: a key lost to a bug can never strand an entry.
func Rebuild(tx *bolt.Tx, name []byte) (*bolt.Bucket, error) {
	if tx.Bucket(name) != nil {
		if err := tx.DeleteBucket(name); err != nil {
			return nil, err
		}
	}
	return tx.CreateBucket(name)
}

// Backoff is the wait after the n-th failed attempt (n >= 1): base
// doubled n-1 times and capped at limit, plus a random part of up to a
// fifth of that. The jitter keeps what failed together (a restart, a
// network or a proxy outage) from being retried together; it only ever
// adds, so no retry comes before its nominal time.
func Backoff(n int, base, limit time.Duration) time.Duration {
	limit = max(limit, base)
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d + time.Duration(mrand.Int64N(int64(d)/5+1))
}

// Claim looks at one due entry inside the scan's read transaction: it
// returns the job to attempt (ok), or not ok and, if the entry should be
// looked at again before the next one is due, when (later).
type Claim func(tx *bolt.Tx, id, value []byte, now time.Time) (job any, later time.Time, ok bool)

// Options configure a Scheduler. All but Logger are required.
type Options struct {
	// DB holds the due index Due.
	DB  *bolt.DB
	Due []byte
	// Workers bounds the attempts in flight.
	Workers int
	// Claim decides about each due entry that is not in flight.
	Claim Claim
	// Attempt runs one claimed job. Its context ends when Run's does;
	// the entry counts as in flight until Attempt returns.
	Attempt func(ctx context.Context, job any)
	// Now is the clock.
	Now    func() time.Time
	Logger *slog.Logger
}

// Scheduler runs the attempts of one due index. Wake and InFlight are
// safe for concurrent use; Run is called once.
type Scheduler struct {
	opts Options
	kick chan struct{}

	mu       sync.Mutex
	inflight map[string]bool
}

// New returns a Scheduler; it attempts nothing until Run.
func New(opts Options) *Scheduler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Scheduler{opts: opts, kick: make(chan struct{}, 1), inflight: map[string]bool{}}
}

// Wake makes Run scan the due index again (after a new entry, a retry
// made due now, a finished attempt); it never blocks.
func (s *Scheduler) Wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// InFlight is the number of attempts running.
func (s *Scheduler) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.inflight)
}

// Run attempts due entries until ctx ends. It sleeps until the earliest
// entry not yet due is due (at most MaxWait) or until Wake; there is no
// polling interval. When ctx ends, it returns once every attempt in
// flight has returned, so the DB can be closed after Run returns.
func (s *Scheduler) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wake := s.dispatch(ctx, &wg)
		d := MaxWait
		if !wake.IsZero() {
			d = min(max(wake.Sub(s.opts.Now()), 0), MaxWait)
		}
		timer.Reset(d)
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-timer.C:
		}
	}
}

// dispatch starts an attempt for every due entry Claim takes while
// workers are free, and returns when to look again (zero: when woken).
func (s *Scheduler) dispatch(ctx context.Context, wg *sync.WaitGroup) time.Time {
	if ctx.Err() != nil {
		return time.Time{}
	}
	now := s.opts.Now()
	var (
		wake time.Time
		jobs []any
		ids  []string
	)
	s.mu.Lock()
	err := s.opts.DB.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(s.opts.Due).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			t, id, ok := ParseKey(k)
			if !ok || s.inflight[string(id)] {
				continue
			}
			if t.After(now) {
				wake = earliest(wake, t)
				return nil
			}
			if len(s.inflight) >= s.opts.Workers {
				// A finishing attempt wakes the scan.
				return nil
			}
			job, later, ok := s.opts.Claim(tx, id, v, now)
			if !ok {
				if !later.IsZero() {
					wake = earliest(wake, later)
				}
				continue
			}
			s.inflight[string(id)] = true
			jobs, ids = append(jobs, job), append(ids, string(id))
		}
		return nil
	})
	s.mu.Unlock()
	if err != nil {
		s.opts.Logger.Error("scan due entries", "err", err)
	}
	for i, job := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.opts.Attempt(ctx, job)
			s.mu.Lock()
			delete(s.inflight, ids[i])
			s.mu.Unlock()
			s.Wake()
		}()
	}
	return wake
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}
