package push

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"net/http"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/relay/schedule"
)

const (
	// maxBackoff caps the wait between attempts. Once the proxy is back,
	// no phone waits longer than this for its wake-up.
	maxBackoff = time.Hour
	// attemptTimeout backs up Client's own timeout: a Client without one
	// must not hold a worker forever.
	attemptTimeout = time.Minute
)

// result is what became of one attempt.
type result int

const (
	delivered result = iota // 2xx; entry removed
	resent                  // 2xx, but a newer Notify came meanwhile; due again now
	dropped                 // 410; token dropped, entry removed
	retry                   // failed; due again after backoff
	gaveUp                  // failed past GiveUp; entry removed
	cancelled               // cut short by shutdown; entry unchanged
)

// outcome is reported to tests after an attempt has been recorded.
type outcome struct {
	token  string
	result result
	status int // HTTP status, 0 for a network error
}

type claim struct {
	id  entryID
	e   *entry
	seq uint64
}

// Run sends queued wake-ups until ctx ends. It sleeps until the earliest
// entry is due or until Notify or a finished attempt wakes it. When ctx
// ends, POSTs in flight are cancelled and Run returns once they are
// accounted for, so DB can be closed after Run returns. A cancelled
// attempt does not count: the entry is due again at the next start.
func (n *Notifier) Run(ctx context.Context) { n.sched.Run(ctx) }

// claim takes a due entry for an attempt (schedule.Claim).
func (n *Notifier) claim(tx *bolt.Tx, key, _ []byte, _ time.Time) (any, time.Time, bool) {
	if len(key) != sha256.Size {
		return nil, time.Time{}, false
	}
	id := entryID(key)
	e, err := getEntry(tx.Bucket(bucketQueue), id)
	if err != nil || e == nil {
		n.log.Error("push due key without a readable entry", "err", err)
		return nil, time.Time{}, false
	}
	return claim{id: id, e: e, seq: e.Seq}, time.Time{}, true
}

// attempt POSTs one token and records the answer.
func (n *Notifier) attempt(ctx context.Context, job any) {
	c := job.(claim)
	status, err := n.post(ctx, c.e.Token)
	res := n.finish(ctx, c, status, err)
	if n.attempted != nil {
		n.attempted(outcome{token: string(c.e.Token), result: res, status: status})
	}
}

func (n *Notifier) post(ctx context.Context, token []byte) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.opts.URL, bytes.NewReader(token))
	if err != nil {
		return 0, err
	}
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		return 0, err
	}
	// Reading what is left lets the connection be reused; the bound
	// keeps a misbehaving proxy from making us read forever.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// finish records the answer to one attempt. DropToken runs after the
// entry is gone and outside the transaction, because it writes to the same
// bbolt file; a crash in between leaves the token with its account, and
// the next wake-up for it gets a 410 and drops it then.
func (n *Notifier) finish(ctx context.Context, c claim, status int, postErr error) result {
	if postErr != nil && ctx.Err() != nil {
		return cancelled
	}
	now := n.opts.Now()
	res := cancelled
	var (
		addrs    []string
		attempts int
		next     time.Time
	)
	err := n.db.Update(func(tx *bolt.Tx) error {
		q, due := tx.Bucket(bucketQueue), tx.Bucket(bucketDue)
		e, err := getEntry(q, c.id)
		if err != nil || e == nil {
			return err
		}
		remove := func() error {
			if err := due.Delete(dueKey(e.Next, c.id)); err != nil {
				return err
			}
			return q.Delete(c.id[:])
		}
		reschedule := func(t time.Time) error {
			if err := schedule.Move(due, c.id[:], e.Next, t, nil); err != nil {
				return err
			}
			e.Next = t
			return putEntry(q, c.id, e)
		}
		switch {
		case postErr == nil && status >= 200 && status < 300:
			if e.Seq != c.seq {
				res = resent
				e.Attempts = 0
				return reschedule(now)
			}
			res = delivered
			return remove()
		case postErr == nil && status == http.StatusGone:
			res, addrs = dropped, e.Addrs
			return remove()
		default:
			e.Attempts++
			attempts = e.Attempts
			deadline := e.Latest.Add(n.opts.GiveUp)
			if !now.Before(deadline) {
				res = gaveUp
				return remove()
			}
			// The last attempt is at the deadline itself rather than
			// never: the proxy may be back by then.
			res, next = retry, now.Add(n.backoff(e.Attempts))
			if next.After(deadline) {
				next = deadline
			}
			return reschedule(next)
		}
	})
	if err != nil {
		// The entry stays as it was and is tried again at once; at worst
		// a phone is woken twice.
		n.log.Error("record push attempt", "err", err)
		return cancelled
	}
	switch res {
	case delivered, resent:
		n.log.Debug("push delivered", "status", status, "again", res == resent)
	case dropped:
		n.log.Info("push token expired at the proxy, dropping it", "accounts", len(addrs))
		for _, addr := range addrs {
			if err := n.opts.DropToken(addr, string(c.e.Token)); err != nil {
				n.log.Warn("drop expired push token", "err", err)
			}
		}
	case retry:
		n.log.Info("push deferred", failure(status, postErr), "attempts", attempts, "next", next)
	case gaveUp:
		n.log.Warn("push given up", failure(status, postErr), "attempts", attempts, "after", n.opts.GiveUp)
	}
	return res
}

// failure describes a failed attempt for the log. Errors name the proxy's
// URL at most, never the token, which travels only in the body.
func failure(status int, err error) slog.Attr {
	if err != nil {
		return slog.Any("err", err)
	}
	return slog.Int("status", status)
}

// backoff is the wait after the n-th failed attempt (schedule.Backoff),
// so that tokens that failed together (a proxy outage) are not retried
// together. Doubling rather than the reference notifier's powers of
// BaseDelay keeps the wait after an outage in proportion to the outage.
func (n *Notifier) backoff(attempts int) time.Duration {
	return schedule.Backoff(attempts, n.opts.BaseDelay, maxBackoff)
}
