package push

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	// maxBackoff caps the wait between attempts. Once the proxy is back,
	// no phone waits longer than this for its wake-up.
	maxBackoff = time.Hour
	// maxWait caps how long the scheduler sleeps while entries are
	// pending: its timer runs on the monotonic clock while due times are
	// wall time, so a wall clock set back must not strand due wake-ups.
	maxWait = 10 * time.Minute
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
// entry is due or until Notify or a finished attempt wakes it; with nothing
// queued it sleeps until Notify. When ctx ends, POSTs in flight are
// cancelled and Run returns once they are accounted for, so DB can be
// closed after Run returns. A cancelled attempt does not count: the entry
// is due again at the next start.
func (n *Notifier) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wake, ok := n.dispatch(ctx, &wg)
		var tick <-chan time.Time
		if ok {
			timer.Reset(min(max(wake.Sub(n.opts.Now()), 0), maxWait))
			tick = timer.C
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		case <-tick:
		}
	}
}

// dispatch starts an attempt for due entries while workers are free, and
// returns when the earliest entry not yet due is due (false if none, or if
// workers are busy: a finishing attempt wakes the scheduler).
func (n *Notifier) dispatch(ctx context.Context, wg *sync.WaitGroup) (time.Time, bool) {
	if ctx.Err() != nil {
		return time.Time{}, false
	}
	now := n.opts.Now()
	var (
		claims []claim
		wake   time.Time
		ok     bool
	)
	n.mu.Lock()
	err := n.db.View(func(tx *bolt.Tx) error {
		q := tx.Bucket(bucketQueue)
		c := tx.Bucket(bucketDue).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			t, id, valid := parseDueKey(k)
			if !valid || n.inflight[id] {
				continue
			}
			if t.After(now) {
				wake, ok = t, true
				return nil
			}
			if len(n.inflight) >= n.opts.Workers {
				return nil
			}
			e, err := getEntry(q, id)
			if err != nil || e == nil {
				n.log.Error("push due key without a readable entry", "err", err)
				continue
			}
			n.inflight[id] = true
			claims = append(claims, claim{id: id, e: e, seq: e.Seq})
		}
		return nil
	})
	n.mu.Unlock()
	if err != nil {
		n.log.Error("scan push queue", "err", err)
	}
	for _, c := range claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.attempt(ctx, c)
		}()
	}
	return wake, ok
}

// attempt POSTs one token and records the answer.
func (n *Notifier) attempt(ctx context.Context, c claim) {
	status, err := n.post(ctx, c.e.Token)
	res := n.finish(ctx, c, status, err)
	n.mu.Lock()
	delete(n.inflight, c.id)
	n.mu.Unlock()
	n.wake()
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
			if err := due.Delete(dueKey(e.Next, c.id)); err != nil {
				return err
			}
			e.Next = t
			if err := due.Put(dueKey(t, c.id), nil); err != nil {
				return err
			}
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

// backoff is the wait after the n-th failed attempt: BaseDelay doubled
// each time, capped, plus up to 25 % so that tokens that failed together
// (a proxy outage) are not retried together. Doubling rather than the
// reference notifier's powers of BaseDelay keeps the wait after an outage
// in proportion to the outage.
func (n *Notifier) backoff(attempts int) time.Duration {
	limit := max(maxBackoff, n.opts.BaseDelay)
	d := n.opts.BaseDelay
	for i := 1; i < attempts && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d + time.Duration(mrand.Int64N(int64(d)/4+1))
}
