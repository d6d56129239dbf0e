// Package lifecycle is the life of an idle IMAP connection served by the
// imapext layer: hibernation (imapserver's connection and goroutine let
// go, the session kept), the layer's goroutine let go too (the socket
// waits in one epoll instance for the process), and the way back. The
// layer (package imapext) speaks the protocol; this package decides, in
// one place, where a connection stands.
//
// A connection is in exactly one State:
//
//	Active         imapserver serves the connection; the layer's goroutine
//	               reads the client (or waits for it)
//	Detaching      idle in IDLE for HibernateAfter: imapserver's connection
//	               reads EOF, and the session's Close keeps the session
//	DetachingWake  Detaching, and woken meanwhile: resumes once detached
//	Hibernated     no imapserver connection, the session kept; the layer's
//	               goroutine waits for the client
//	Leaving        Hibernated, and the layer's goroutine unwinds to hand the
//	               socket to the poller
//	Away           Hibernated, and no goroutine: the socket waits in the
//	               poller
//	Resuming       a new imapserver connection replays the session; its
//	               responses are hidden from the client
//	Closed         imapserver closed the connection (LOGOUT, BYE, a refused
//	               resume); the layer ends it
//	Ended          the layer is done: imapserver reads EOF
//
// Transitions, and what makes them (Machine's methods):
//
//	Active        -> Detaching      the hibernation timer (Arm) fires while
//	                                the owner is Quiet
//	Active        -> Closed         imapserver closes (Close)
//	Detaching     -> DetachingWake  Wake (a notification, the client's bytes)
//	Detaching     -> Hibernated     imapserver closed its connection and the
//	                                session kept itself (Keep, Detached)
//	Detaching*    -> Active         imapserver closed, the session not kept
//	DetachingWake -> Resuming       detached (Detached)
//	Hibernated    -> Leaving        the layer's goroutine waits on a socket
//	                                that has a Socket beneath (Wait)
//	Hibernated    -> Resuming       Wake
//	Leaving       -> Away           the socket is in the poller (GoAway)
//	Leaving       -> Resuming       Wake (the goroutine comes back at once)
//	Leaving       -> Hibernated     the poller failed: the goroutine stays
//	Away          -> Hibernated     the socket is readable, closed beneath,
//	                                or past its deadline: a goroutine comes
//	                                back (the owner's ServeAgain)
//	Away          -> Resuming       Wake; a goroutine comes back as well
//	Resuming      -> Active         the replay succeeded (Resumed)
//	Resuming      -> Closed         the replay was refused, or imapserver
//	                                closes
//	any but Leaving and Away -> Ended   the layer ends (End)
//
// Ended is final: what imapserver still does with a connection that ended
// while it resumed (its replay completing, its close) changes nothing.
//
// Anything else is a bug: in tests it panics, otherwise it is logged as
// an error and done anyway (the old state's duties are lost, which is
// what the log says).
//
// Hibernated, Leaving and Away count as hibernated (Counter). A wait cut
// short for Leaving keeps its deadline: the connection times out as if it
// had waited all along.
package lifecycle

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// State is where a connection stands; see the package documentation.
type State uint8

const (
	Active State = iota
	Detaching
	DetachingWake
	Hibernated
	Leaving
	Away
	Resuming
	Closed
	Ended
	numStates
)

var stateNames = [numStates]string{"Active", "Detaching", "DetachingWake", "Hibernated", "Leaving", "Away", "Resuming", "Closed", "Ended"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// hibernated reports whether s counts as hibernated.
func (s State) hibernated() bool { return s == Hibernated || s == Leaving || s == Away }

// Detaching reports whether s is Detaching or DetachingWake.
func (s State) Detaching() bool { return s == Detaching || s == DetachingWake }

// Closed reports whether imapserver closed the connection or the layer
// ended it.
func (s State) Closed() bool { return s == Closed || s == Ended }

func set(ss ...State) (m uint16) {
	for _, s := range ss {
		m |= 1 << s
	}
	return m
}

// next is the transition table of the package documentation.
var next = [numStates]uint16{
	Active:        set(Detaching, Closed, Ended),
	Detaching:     set(DetachingWake, Hibernated, Active, Ended),
	DetachingWake: set(Resuming, Active, Ended),
	Hibernated:    set(Leaving, Resuming, Ended),
	Leaving:       set(Away, Resuming, Hibernated),
	Away:          set(Hibernated, Resuming),
	Resuming:      set(Active, Closed, Ended),
	Closed:        set(Ended),
	Ended:         0,
}

// Allowed reports whether the table allows from -> to.
func Allowed(from, to State) bool {
	return from < numStates && to < numStates && next[from]&(1<<to) != 0
}

// Counter counts the hibernated connections of one server.
type Counter struct{ n atomic.Int64 }

// Load returns how many connections are hibernated now.
func (c *Counter) Load() int64 { return c.n.Load() }

// Session is a session the machine keeps while its connection hibernates.
type Session interface{ Close() error }

// Socket is what a connection beneath TLS must offer for a hibernated
// connection to let its goroutine go (Away). A connection without it
// still hibernates, but its goroutine stays, waiting for the client. A
// server that wraps its connections checks at start-up that the wrapper
// implements Socket (see CheckSocket), so that a new wrapper cannot turn
// this off silently.
type Socket interface {
	net.Conn
	// SyscallConn returns the socket to wait on; errors.ErrUnsupported
	// when there is none (a stream inside the process): then the
	// goroutine stays.
	syscall.Conn
	// OnClose has f called once the connection is closed, at once if it
	// is closed already; a later call replaces f. The poller would not
	// see a socket closed under it.
	OnClose(f func())
	// ClampDeadline returns the deadline SetReadDeadline(t) sets, which
	// the wait of a connection away keeps.
	ClampDeadline(t time.Time) time.Time
}

// CheckSocket returns an error naming c's type when c does not implement
// Socket.
func CheckSocket(c net.Conn) error {
	if _, ok := c.(Socket); !ok {
		return fmt.Errorf("lifecycle: %T does not implement lifecycle.Socket (SyscallConn, OnClose, ClampDeadline): hibernated IMAP connections would keep their goroutine", c)
	}
	return nil
}

// Owner is the layer of one connection, as the machine sees it. Its
// methods but ServeAgain are called with the owner's lock held.
type Owner interface {
	// Quiet reports whether the connection may detach now; if not,
	// retry says whether to try again after HibernateAfter.
	Quiet() (now, retry bool)
	// Resume hands a new imapserver connection of generation gen, which
	// replays kept, to imapserver; it must not block.
	Resume(gen uint64, kept Session)
	// Signal wakes whoever waits on the owner's lock's condition.
	Signal()
	// ServeAgain reads and serves the connection again, in the calling
	// goroutine, after it was away.
	ServeAgain()
}

// Config is what a Machine needs from its server.
type Config struct {
	// HibernateAfter is how long a connection idles in IDLE before it
	// detaches; 0 means never.
	HibernateAfter time.Duration
	Counter        *Counter
	Logger         *slog.Logger
}

// Machine is the lifecycle of one connection. Its fields are guarded by
// the owner's lock (mu); methods say when they take it themselves. The
// zero Machine is not ready: call Init.
type Machine struct {
	mu    sync.Locker
	owner Owner
	cfg   Config

	state State
	gen   uint64      // the generation of imapserver's current connection
	kept  Session     // the session while detached
	timer *time.Timer // the hibernation timer

	// The reader (the owner's goroutine) while it waits on the socket:
	// the connection whose read deadline cuts the wait short.
	waiting net.Conn
	cuts    uint64 // waits cut short so far
	canAway bool   // set once by Init: the connection has a Socket
	token   uint64
	wake    *time.Timer // the poller's, for until

	// The reader's own; no lock.
	until time.Time       // deadline of a wait cut short, kept for the next
	rc    syscall.RawConn // the socket, while Leaving
}

// Init readies m for a connection whose reader reads conn (beneath TLS,
// if any, is the Socket).
func (m *Machine) Init(mu sync.Locker, owner Owner, cfg Config, conn net.Conn) {
	m.mu, m.owner, m.cfg = mu, owner, cfg
	if m.cfg.Logger == nil {
		m.cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if m.cfg.Counter == nil {
		m.cfg.Counter = &Counter{}
	}
	if s, ok := beneathTLS(conn).(Socket); ok && awaySupported {
		m.canAway = true
		s.OnClose(m.closedBeneath)
	}
}

// State returns where the connection stands; the caller holds the lock.
func (m *Machine) State() State { return m.state }

// Gen returns the generation of imapserver's current connection; the
// caller holds the lock.
func (m *Machine) Gen() uint64 { return m.gen }

// to makes the transition, checked against the table.
func (m *Machine) to(s State) {
	if !Allowed(m.state, s) {
		msg := fmt.Sprintf("lifecycle: impossible transition %v -> %v", m.state, s)
		if testing.Testing() {
			panic(msg)
		}
		m.cfg.Logger.Error(msg)
	}
	switch was, is := m.state.hibernated(), s.hibernated(); {
	case !was && is:
		m.cfg.Counter.n.Add(1)
	case was && !is:
		m.cfg.Counter.n.Add(-1)
	}
	m.state = s
}

// Current reports whether gen is the imapserver connection that is to
// read the client's commands: the current one, not detaching.
func (m *Machine) Current(gen uint64) bool {
	return gen == m.gen && !m.state.Detaching()
}

// Arm starts the hibernation timer, unless it runs or is off.
func (m *Machine) Arm() {
	if m.cfg.HibernateAfter <= 0 || m.timer != nil {
		return
	}
	m.timer = time.AfterFunc(m.cfg.HibernateAfter, m.fire)
}

// Disarm stops the hibernation timer.
func (m *Machine) Disarm() {
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
}

// fire runs when the client has idled for HibernateAfter; it takes the
// lock.
func (m *Machine) fire() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.timer = nil
	if m.state != Active {
		return
	}
	now, retry := m.owner.Quiet()
	if !now {
		if retry {
			m.timer = time.AfterFunc(m.cfg.HibernateAfter, m.fire)
		}
		return
	}
	m.to(Detaching)
	m.owner.Signal() // the current connection's Read returns io.EOF
}

// Keep keeps s, the session of imapserver's connection gen, while that
// connection detaches; false means s ends.
func (m *Machine) Keep(gen uint64, s Session) bool {
	if gen != m.gen || !m.state.Detaching() {
		return false
	}
	m.kept = s
	return true
}

// Take returns the kept session to imapserver's connection gen when it
// resumes one, once; nil otherwise.
func (m *Machine) Take(gen uint64) Session {
	if gen != m.gen || m.state != Resuming {
		return nil
	}
	s := m.kept
	m.kept = nil
	return s
}

// Detached is imapserver closing its connection gen. It reports whether
// the close is the machine's own (an old generation, or the detach
// completing): then the client connection stays open.
func (m *Machine) Detached(gen uint64) bool {
	if gen != m.gen {
		return true
	}
	if !m.state.Detaching() {
		return false
	}
	if m.kept == nil {
		// The session did not keep itself: end as imapserver asked.
		m.to(Active)
		return false
	}
	m.gen++
	if m.state == DetachingWake {
		m.resume()
	} else {
		m.to(Hibernated)
		if m.waiting != nil {
			m.cut()
		}
	}
	m.owner.Signal()
	return true
}

// Wake resumes a hibernated connection, now or once its detach completes;
// it never blocks.
func (m *Machine) Wake() {
	switch m.state {
	case Detaching:
		m.to(DetachingWake)
	case Hibernated, Leaving:
		m.resume()
	case Away:
		m.resume()
		m.recall()
	}
}

func (m *Machine) resume() {
	m.to(Resuming)
	m.owner.Resume(m.gen, m.kept)
}

// Resumed ends a resume: its replay succeeded (ok) or was refused. A
// connection that ended meanwhile (the client left while it resumed)
// stays Ended.
func (m *Machine) Resumed(ok bool) {
	switch {
	case m.state == Ended:
	case ok:
		m.to(Active)
	default:
		m.to(Closed)
	}
}

// Close is imapserver closing its current connection, or the layer
// giving up on it; it reports whether the connection was closed already.
func (m *Machine) Close() (was bool) {
	if m.state.Closed() {
		return true
	}
	m.to(Closed)
	return false
}

// End ends the lifecycle and returns the session kept, if any, for the
// caller to close.
func (m *Machine) End() Session {
	m.Disarm()
	if m.state != Ended {
		m.to(Ended)
	}
	s := m.kept
	m.kept = nil
	return s
}

// cut makes the reader's wait on the socket return at once, to go away.
func (m *Machine) cut() {
	m.to(Leaving)
	m.cuts++
	m.waiting.SetReadDeadline(aLongTimeAgo)
}
