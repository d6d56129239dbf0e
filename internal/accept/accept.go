// Package accept is the one accept loop step every listener of the relay
// uses: a temporary error (out of file descriptors, most often) is waited
// out with a growing pause instead of taking the port down for good, as
// net/http does.
package accept

import (
	"errors"
	"net"
	"time"
)

const (
	minPause = 5 * time.Millisecond
	maxPause = time.Second
)

// Retry accepts from one listener. It is not safe for concurrent use;
// each accept loop has its own.
type Retry struct {
	// Done, if set, cuts a pause short: Accept then returns
	// net.ErrClosed.
	Done <-chan struct{}
	// OnPause, if set, hears of each temporary error and the pause it
	// causes (for the log).
	OnPause func(err error, pause time.Duration)

	pause time.Duration
}

// Accept returns the listener's next connection. Temporary errors are
// waited out, the pause doubling from 5 ms up to 1 s and starting over
// after a success; any other error is returned.
func (r *Retry) Accept(ln net.Listener) (net.Conn, error) {
	for {
		c, err := ln.Accept()
		if err == nil {
			r.pause = 0
			return c, nil
		}
		if !Temporary(err) {
			return nil, err
		}
		r.pause = min(max(2*r.pause, minPause), maxPause)
		if r.OnPause != nil {
			r.OnPause(err, r.pause)
		}
		t := time.NewTimer(r.pause)
		select {
		case <-t.C:
		case <-r.Done:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

// Temporary reports whether an accept error is worth waiting out: it says
// it is temporary and the listener is not closed.
func Temporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary() && !errors.Is(err, net.ErrClosed)
}
