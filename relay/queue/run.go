package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Run delivers queued mail until ctx ends. It sleeps until the earliest
// NextAttempt, or until Put, Retry or a finished attempt wakes it; there is
// no polling interval. When ctx ends, deliveries in flight are cancelled
// and Run returns once they have recorded what they achieved, so the DB can
// be closed after Run returns.
func (q *Queue) Run(ctx context.Context) { q.sched.Run(ctx) }

// claim is one item picked for an attempt.
type claim struct {
	id      string
	domains []string
}

// claim takes a due item for an attempt (schedule.Claim). An item is left
// for later when every domain it needs already has PerDomain jobs, so a
// dead domain with a long backlog cannot hold up mail for the others; the
// end of any attempt wakes the scheduler to look again.
func (q *Queue) claim(_ *bolt.Tx, key, v []byte, now time.Time) (any, time.Time, bool) {
	id := string(key)
	q.mu.Lock()
	defer q.mu.Unlock()
	if h, ok := q.hold[id]; ok {
		if now.Before(h) {
			return nil, h, false
		}
		delete(q.hold, id)
	}
	domains := splitDomains(v)
	if q.saturated(domains) {
		return nil, time.Time{}, false
	}
	for _, d := range domains {
		q.reserved[d]++
	}
	return claim{id, domains}, time.Time{}, true
}

// holdBack keeps an item out of dispatch for a while after its state could
// not be read or written.
func (q *Queue) holdBack(id string) {
	q.mu.Lock()
	q.hold[id] = q.opts.Now().Add(q.backoff(1))
	q.mu.Unlock()
}

// saturated reports whether every one of domains already has PerDomain
// jobs claimed. q.mu is held.
func (q *Queue) saturated(domains []string) bool {
	if len(domains) == 0 {
		return false
	}
	for _, d := range domains {
		if q.reserved[d] < q.opts.PerDomain {
			return false
		}
	}
	return true
}

func (q *Queue) release(c claim) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, d := range c.domains {
		if q.reserved[d]--; q.reserved[d] <= 0 {
			delete(q.reserved, d)
			delete(q.domSem, d)
		}
	}
}

// domainSlots returns the semaphore of a domain. The claim holds a
// reservation on d, so it stays in the map until the claim is released.
func (q *Queue) domainSlots(d string) chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := q.domSem[d]
	if s == nil {
		s = make(chan struct{}, q.opts.PerDomain)
		q.domSem[d] = s
	}
	return s
}

// attempt tries every pending recipient of one item, one Deliver call per
// domain, and records the outcome.
func (q *Queue) attempt(ctx context.Context, job any) {
	c := job.(claim)
	defer q.release(c)
	var it *Item
	err := q.db.View(func(tx *bolt.Tx) error {
		var err error
		it, err = getItem(tx, c.id)
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return // dropped meanwhile
	} else if err != nil {
		q.log.Error("load queue item", "id", c.id, "err", err)
		q.holdBack(c.id)
		return
	}

	byDomain := map[string][]string{}
	for _, r := range it.Rcpts {
		if r.Status == Pending {
			d := domainOf(r.Addr)
			byDomain[d] = append(byDomain[d], r.Addr)
		}
	}
	body := func() (io.ReadCloser, error) { return os.Open(q.spoolPath(it.ID)) }
	var (
		mu      sync.Mutex
		results []Result
		wg      sync.WaitGroup
	)
	for domain, rcpts := range byDomain {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := q.deliverDomain(ctx, it.From, domain, rcpts, body)
			mu.Lock()
			results = append(results, res...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	q.finish(it.ID, results, ctx.Err() != nil)
}

// deliverDomain waits for a global and a per-domain slot, then calls
// Deliver.
func (q *Queue) deliverDomain(ctx context.Context, from, domain string, rcpts []string, body func() (io.ReadCloser, error)) []Result {
	slots := q.domainSlots(domain)
	select {
	case q.sem <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	defer func() { <-q.sem }()
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	defer func() { <-slots }()
	dctx, cancel := context.WithTimeout(ctx, q.opts.DeliverTimeout)
	defer cancel()
	return q.opts.Deliver(dctx, from, domain, rcpts, body)
}

// finish records the results of an attempt, bounces what finally failed
// and removes the item once nothing is left to do. When the attempt was
// cut short by shutdown only successes are recorded: the attempt does not
// count, and the item is due again at the next start.
func (q *Queue) finish(id string, results []Result, shutdown bool) {
	now := q.opts.Now()
	var (
		snapshot *Item
		bounce   []Rcpt
		done     bool
	)
	err := q.db.Update(func(tx *bolt.Tx) error {
		it, err := getItem(tx, id)
		if err != nil {
			return err
		}
		applied := applyResults(it, results, shutdown)
		if shutdown {
			if !applied {
				return nil
			}
			return putItem(tx, it, it.NextAttempt)
		}
		it.Attempts++
		pending := 0
		for _, r := range it.Rcpts {
			if r.Status == Pending {
				pending++
			}
		}
		deadline := it.Created.Add(q.opts.MaxAge)
		if pending > 0 && !now.Before(deadline) {
			for i := range it.Rcpts {
				if r := &it.Rcpts[i]; r.Status == Pending {
					r.Status = Failed
					r.LastError = fmt.Sprintf("gave up after %s: %s", q.opts.MaxAge, r.LastError)
				}
			}
			pending = 0
		}
		for _, r := range it.Rcpts {
			if r.Status == Failed && !r.Bounced {
				bounce = append(bounce, r)
			}
		}
		if pending == 0 && len(bounce) == 0 {
			done = true
			return deleteItem(tx, it)
		}
		// The next attempt for pending recipients, or the next try at
		// bouncing should Bounce fail; never later than the deadline, so
		// the sender hears of a failure on time.
		next := now.Add(q.backoff(it.Attempts))
		if pending > 0 && next.After(deadline) {
			next = deadline
		}
		snapshot = it
		return putItem(tx, it, next)
	})
	if errors.Is(err, ErrNotFound) {
		return // dropped while in flight
	} else if err != nil {
		// The item stays as it was and is tried again; successes that
		// were not recorded are sent once more.
		q.log.Error("record delivery results", "id", id, "err", err)
		q.holdBack(id)
		return
	}
	if done {
		q.removeSpool(id)
		q.log.Info("delivered", "id", id)
		return
	}
	if len(bounce) == 0 || shutdown {
		if snapshot != nil {
			q.log.Info("delivery deferred", "id", id, "attempts", snapshot.Attempts, "next", snapshot.NextAttempt, "err", snapshot.LastError)
		}
		return
	}
	q.bounce(snapshot, bounce)
}

// bounce hands finally failed recipients to Bounce, marks them, and removes
// the item if nothing else is left.
func (q *Queue) bounce(it *Item, failed []Rcpt) {
	if it.From != "" {
		if err := q.opts.Bounce(it, failed); err != nil {
			q.log.Error("bounce failed, will try again", "id", it.ID, "err", err, "next", it.NextAttempt)
			return
		}
	} else {
		q.log.Info("dropping failed recipients of a message with null sender", "id", it.ID, "count", len(failed))
	}
	done := false
	err := q.db.Update(func(tx *bolt.Tx) error {
		cur, err := getItem(tx, it.ID)
		if err != nil {
			return err
		}
		pending := false
		for i := range cur.Rcpts {
			r := &cur.Rcpts[i]
			for _, f := range failed {
				if r.Addr == f.Addr && r.Status == Failed {
					r.Bounced = true
				}
			}
			pending = pending || r.Status == Pending || (r.Status == Failed && !r.Bounced)
		}
		if !pending {
			done = true
			return deleteItem(tx, cur)
		}
		return putItem(tx, cur, cur.NextAttempt)
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		// Bounce ran but is not recorded: it runs again next time.
		q.log.Error("record bounce", "id", it.ID, "err", err)
		q.holdBack(it.ID)
		return
	}
	if done {
		q.removeSpool(it.ID)
		q.log.Info("finished with failures", "id", it.ID, "bounced", len(failed))
	}
}

// applyResults updates recipient states from one attempt. On shutdown
// only successes count: an error then is most likely our own cancellation.
// It reports whether anything changed.
func applyResults(it *Item, results []Result, shutdown bool) bool {
	changed := false
	var lastErr string
	byRcpt := make(map[string]Result, len(results))
	for _, res := range results {
		byRcpt[res.Rcpt] = res
	}
	for i := range it.Rcpts {
		r := &it.Rcpts[i]
		if r.Status != Pending {
			continue
		}
		res, ok := byRcpt[r.Addr]
		switch {
		case ok && res.Err == nil:
			r.Status, r.LastError, r.Reply = Sent, "", ""
			changed = true
		case shutdown:
		case !ok:
			r.LastError, r.Reply = "no delivery result", ""
			lastErr = r.LastError
		case res.Permanent:
			r.Status, r.LastError, r.Reply = Failed, errSummary(res.Err), res.Reply
			lastErr = r.LastError
		default:
			r.LastError, r.Reply = errSummary(res.Err), res.Reply
			lastErr = r.LastError
		}
	}
	if lastErr != "" {
		it.LastError = lastErr
		changed = true
	}
	return changed
}
