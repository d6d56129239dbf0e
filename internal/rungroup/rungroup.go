// Package rungroup runs the background work of one owner (the relay's
// queue runner, push sender, retention loop, quota trims, ...) as one
// group: started with Go, stopped together with Stop, which cancels
// their context and waits for every task to return.
package rungroup

import (
	"context"
	"fmt"
	"sync"
)

// Group is a set of background tasks sharing one context. The zero value
// is not usable; call New.
type Group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	stopped bool
	err     error
}

// New returns an empty group whose tasks run until Stop.
func New() *Group {
	ctx, cancel := context.WithCancel(context.Background())
	return &Group{ctx: ctx, cancel: cancel}
}

// Go runs task in its own goroutine with the group's context. After Stop
// it runs nothing and returns false. The first error a task returns is
// kept for Stop and Err; a panic is not recovered.
func (g *Group) Go(name string, task func(ctx context.Context) error) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := task(g.ctx); err != nil {
			g.mu.Lock()
			if g.err == nil {
				g.err = fmt.Errorf("%s: %w", name, err)
			}
			g.mu.Unlock()
		}
	}()
	return true
}

// Stop cancels the tasks' context, waits until every task has returned
// and returns the first error one returned. Tasks must return once their
// context ends. Stop may be called more than once.
func (g *Group) Stop() error {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.cancel()
	g.wg.Wait()
	return g.Err()
}

// Err is the first error a task returned, or nil.
func (g *Group) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}
