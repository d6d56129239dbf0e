package mailbox

import (
	"sync"

	bolt "go.etcd.io/bbolt"
)

// committer groups index changes of concurrent deliveries into one
// transaction, so that they share its fsyncs (group commit). Unlike bbolt's
// Batch it neither waits for company nor hands a lone caller's change to
// another goroutine: the first caller commits at once, and whoever arrives
// while that commit runs goes into the next one, all together.
type committer struct {
	db *bolt.DB

	mu      sync.Mutex
	queue   []commitCall
	running bool // a goroutine is committing; it takes what is queued next
}

type commitCall struct {
	fn  func(*bolt.Tx) error
	err chan error
}

// do runs fn in a write transaction, possibly shared with other callers'
// functions, and returns when that transaction has committed. As with
// bbolt's Batch, fn may run more than once: if the shared transaction
// fails, each function is retried in a transaction of its own, so one
// caller's error does not fail the others.
func (c *committer) do(fn func(*bolt.Tx) error) error {
	call := commitCall{fn: fn, err: make(chan error, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, call)
	lead := !c.running
	c.running = true
	c.mu.Unlock()
	if lead {
		c.commitQueued()
	}
	return <-call.err
}

// commitQueued commits everything queued in one transaction. If more
// arrived meanwhile, a new goroutine takes over, so the caller gets its
// answer without waiting for commits that are not its own.
func (c *committer) commitQueued() {
	c.mu.Lock()
	calls := c.queue
	c.queue = nil
	c.mu.Unlock()

	c.commit(calls)

	c.mu.Lock()
	more := len(c.queue) > 0
	c.running = more
	c.mu.Unlock()
	if more {
		go c.commitQueued()
	}
}

func (c *committer) commit(calls []commitCall) {
	err := c.db.Update(func(tx *bolt.Tx) error {
		for _, call := range calls {
			if err := call.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(calls) == 1 {
		for _, call := range calls {
			call.err <- err
		}
		return
	}
	for _, call := range calls {
		call.err <- c.db.Update(call.fn)
	}
}
