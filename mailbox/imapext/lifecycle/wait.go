package lifecycle

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// A connection spends most of its life waiting for its client. The runtime
// keeps a goroutine's stack as large as the deepest call it made, halving
// it at a collection only while less than a quarter is in use. Two habits
// keep that stack small:
//
//   - TLS handshakes run in a goroutine of their own, which ends with them:
//     key exchange and certificate grow a stack to 16 KiB or more.
//   - A waiting connection (Wait) waits for the socket to become readable
//     in a shallow call, before it reads through crypto/tls: a wait in
//     tls.Conn.Read sits a dozen frames deep. crypto/tls may hold a record
//     it read already, so it is asked first, with a deadline in the past
//     (readHeld): what it holds comes back at once; otherwise the read
//     times out without touching what it holds (a timeout is not fatal in
//     crypto/tls), and the bytes still to come can only come from the
//     socket.
//
// A hibernated connection goes further and lets its goroutine go (Leaving,
// Away): the wait is cut short (a read deadline in the past), the reader's
// stack unwinds (Wait returns ErrAway up to the owner, which calls GoAway)
// and the socket waits in the poller (poller_linux.go). When the socket
// becomes readable or ends, its deadline passes, the connection is closed
// beneath the layer (Socket.OnClose), or the connection is woken (Wake), a
// new goroutine calls the owner's ServeAgain, which waits again.

// ErrAway is Wait's answer when the connection goes away: the caller
// unwinds and calls GoAway.
var ErrAway = errors.New("lifecycle: away")

// errCut is a wait cut short for a connection that was woken before it
// left: it waits again.
var errCut = errors.New("lifecycle: wait cut short")

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// Handshake runs tc's handshake in a goroutine that ends with it. The
// deadline is timeout from now, or the connection's (which may shorten it).
func Handshake(tc *tls.Conn, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		tc.SetDeadline(time.Now().Add(timeout))
		done <- tc.Handshake()
	}()
	return <-done
}

// Reader gives every read of the client connection a fresh deadline.
// The client is idle only while it waits for nothing: a deadline that
// passes while one of its commands is still being served (a LOGIN queued
// for a password hash during a login storm, a long FETCH) is renewed, and
// once the answer is out the client has a whole period again. crypto/tls
// keeps a connection usable after a read timeout.
type Reader struct {
	C       net.Conn
	Timeout *time.Duration
	Busy    func() bool // commands of the client await their answers
}

func (r Reader) Read(p []byte) (int, error) {
	var served servedWait
	for {
		r.C.SetReadDeadline(time.Now().Add(*r.Timeout))
		n, err := r.C.Read(p)
		if n == 0 && served.renew(err, r.Busy) {
			continue
		}
		return n, err
	}
}

// servedWait decides, after a read deadline passed, whether the client
// was waiting for the relay rather than idle: while its commands are
// served, and for one more period after the last answer went out.
type servedWait struct{ wasBusy bool }

func (w *servedWait) renew(err error, busy func() bool) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) || busy == nil {
		return false
	}
	if busy() {
		w.wasBusy = true
		return true
	}
	renew := w.wasBusy
	w.wasBusy = false
	return renew
}

// Wait reads at least one byte of r's connection into b, waiting shallowly
// while nothing has come, or returns ErrAway. Like Reader, it renews a
// deadline that passes while the client's commands are served. It takes
// the lock.
func (m *Machine) Wait(r Reader, b []byte) (int, error) {
	var served servedWait
	for {
		n, err := m.waitOnce(r, b)
		if err == errCut || n == 0 && served.renew(err, r.Busy) {
			continue
		}
		return n, err
	}
}

func (m *Machine) waitOnce(r Reader, b []byte) (int, error) {
	rc := rawConnOf(r.C)
	if rc == nil {
		return io.ReadAtLeast(r, b, 1)
	}
	if n, err, held := readHeld(r.C, b); held {
		return n, err
	}
	deadline := m.until
	if deadline.IsZero() {
		deadline = time.Now().Add(*r.Timeout)
		if s, ok := beneathTLS(r.C).(Socket); ok {
			deadline = s.ClampDeadline(deadline) // as the connection sets it
		}
	}
	m.until = time.Time{}
	m.mu.Lock()
	r.C.SetReadDeadline(deadline)
	cuts := m.cuts
	if m.canAway {
		m.waiting = r.C
		if m.state == Hibernated && time.Now().Before(deadline) && !readableNow(rc) {
			// Hibernated already: no need to wait here first. (A reader
			// back from the poller for bytes, an end or its deadline reads
			// them first.)
			m.cut()
		}
	}
	m.mu.Unlock()
	// An error (deadline, closed) comes back from the read below as well.
	waitReadable(rc)
	m.mu.Lock()
	m.waiting = nil
	leaving, cut := m.state == Leaving, m.cuts != cuts
	m.mu.Unlock()
	if leaving {
		if tc, ok := r.C.(*tls.Conn); ok {
			shrinkTLS(tc) // tlsshrink.go
		}
		m.until, m.rc = deadline, rc
		return 0, ErrAway
	}
	n, err := io.ReadAtLeast(r.C, b, 1)
	if n == 0 && cut && errors.Is(err, os.ErrDeadlineExceeded) {
		// Cut short to leave, and woken before it left.
		m.until = deadline
		return 0, errCut
	}
	return n, err
}

// GoAway hands the socket of a connection whose reader unwound after
// ErrAway to the poller; if it was woken meanwhile, or the poller fails,
// a goroutine serves it again at once. It takes the lock.
func (m *Machine) GoAway() {
	m.mu.Lock()
	if m.state != Leaving {
		m.mu.Unlock()
		go m.owner.ServeAgain()
		return
	}
	m.to(Away)
	m.mu.Unlock()
	if err := pollAdd(m); err != nil {
		m.cfg.Logger.Warn("imap: poller", "err", err)
		m.mu.Lock()
		m.canAway = false
		if m.state == Away {
			m.to(Hibernated)
		}
		m.mu.Unlock()
		go m.owner.ServeAgain()
	}
}

// comeBack serves a connection that was away again, in a goroutine of its
// own.
func (m *Machine) comeBack() {
	m.mu.Lock()
	if m.state == Away {
		m.to(Hibernated)
	}
	m.mu.Unlock()
	m.owner.ServeAgain()
}

// recall brings the goroutine of a connection away back (Wake); the
// caller holds the lock.
func (m *Machine) recall() {
	if m.token != 0 && pollRemove(m.token) {
		m.stopPollTimer()
		go m.owner.ServeAgain()
	}
}

// closedBeneath is the Socket.OnClose hook: a connection away comes back.
func (m *Machine) closedBeneath() {
	m.mu.Lock()
	token := m.token
	m.mu.Unlock()
	if token != 0 {
		pollFire(token)
	}
}

// readHeld returns what crypto/tls holds already, if anything (held).
func readHeld(c net.Conn, b []byte) (n int, err error, held bool) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return 0, nil, false
	}
	tc.SetReadDeadline(aLongTimeAgo)
	n, err = tc.Read(b)
	if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil, false
	}
	return n, err, true
}

// rawConnOf returns the socket beneath c (and beneath TLS), or nil when
// there is none or a wrapper in between may hold bytes of its own.
func rawConnOf(c net.Conn) syscall.RawConn {
	sc, ok := beneathTLS(c).(syscall.Conn)
	if !ok || !canWaitReadable {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

func beneathTLS(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}
