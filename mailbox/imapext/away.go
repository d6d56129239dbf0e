package imapext

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
	"time"
)

// Away. A hibernated connection (hibernate.go) would still hold the
// layer's goroutine, parked in a wait for its client with a stack of 8 KiB:
// the wait sits under Serve, the command loop and IDLE. So once the
// connection hibernates while the layer waits in park, the wait is cut
// short (a read deadline in the past) and the goroutine unwinds: park
// returns errAway, serveCommands returns it, and serve hands the socket to
// the poller (away_linux.go, one epoll instance and one goroutine for the
// process). When the socket becomes readable or ends, its read deadline
// (kept from the wait that went away) passes, or the connection is closed
// beneath the layer (relay shutdown), a new goroutine comes back (comeBack):
// it reads and serves the connection again, from the command loop, which
// parks again.
//
// Nothing else lived on the unwound stack: IDLE keeps its tag and the end
// of its metrics in the layer (idleTag, idleEnd) and its DONE is read by
// waiting. Notify, resume and imapserver's writes never needed the layer's
// goroutine.
//
// A connection goes away only where the poller works and the connection
// beneath TLS says when it is closed (ClosingConn): the poller would not see
// a socket closed under it. Otherwise the layer's goroutine stays in park.

// ClosingConn is a connection that tells when it is closed. A connection
// given to Serve whose net.Conn (beneath TLS) implements it may go away
// while hibernated; see above.
type ClosingConn interface {
	// OnClose has f called once the connection is closed, at once if it is
	// already closed. A later call replaces f.
	OnClose(f func())
}

// errAway is park's answer when the connection goes away.
var errAway = errors.New("imapext: away")

// awayState is guarded by layer.mu, but deadline and rc, which are the
// reader goroutine's.
type awayState struct {
	parking  bool     // the reader goroutine waits on the socket in park
	parkConn net.Conn // and sets read deadlines on this one
	away     bool     // asked to go away, or gone
	// The read deadline and the socket of the wait that went away.
	deadline  time.Time
	rc        syscall.RawConn
	canAway   bool        // set once by ServeAsync
	token     uint64      // the poller's, while away
	wakeTimer *time.Timer // the poller's, for deadline
}

// sendAway asks the reader goroutine, if it waits in park, to go away; the
// caller holds mu. Called when the connection has just hibernated.
func (l *layer) sendAway() {
	if !l.parking || l.away {
		return
	}
	l.away = true
	l.parkConn.SetReadDeadline(aLongTimeAgo)
}

// readParked reads at least one byte into b, waiting shallowly while
// nothing has come (see wait.go), or returns errAway. Like timedReader, it
// renews a deadline that passes while the client's commands are served.
func (l *layer) readParked(b []byte) (int, error) {
	var served servedWait
	for {
		n, err := l.readParkedOnce(b)
		if n == 0 && served.renew(err, l.busy) {
			continue
		}
		return n, err
	}
}

func (l *layer) readParkedOnce(b []byte) (int, error) {
	tr := l.src.r
	rc := rawConnOf(tr.c)
	if rc == nil {
		return readAtLeastOne(tr, b)
	}
	if n, err, held := tr.readHeld(b); held {
		return n, err
	}
	deadline := time.Now().Add(*tr.timeout)
	if dc, ok := beneathTLS(tr.c).(interface{ ClampDeadline(time.Time) time.Time }); ok {
		deadline = dc.ClampDeadline(deadline) // as the connection sets it
	}
	l.mu.Lock()
	tr.c.SetReadDeadline(deadline)
	if l.canAway {
		l.parking, l.parkConn = true, tr.c
		if l.hib == hibSleeping {
			l.sendAway() // hibernated already: no need to wait here first
		}
	}
	l.mu.Unlock()
	// An error (deadline, closed) comes back from the read below as well.
	waitReadable(rc)
	l.mu.Lock()
	away := l.away
	l.parking, l.parkConn = false, nil
	l.mu.Unlock()
	if away {
		if tc, ok := tr.c.(*tls.Conn); ok {
			shrinkTLS(tc) // tlsshrink.go
		}
		l.awayState.deadline, l.awayState.rc = deadline, rc
		return 0, errAway
	}
	return readAtLeastOne(tr.c, b)
}

// goAway hands the socket of a connection gone away to the poller, or if
// that fails, comes back at once.
func (l *layer) goAway() {
	if err := pollAdd(l); err != nil {
		l.log.Warn("imap: poller", "err", err)
		go l.comeBack()
	}
}

// comeBack reads and serves the connection again, in a goroutine of its own.
func (l *layer) comeBack() {
	l.mu.Lock()
	l.away = false
	l.mu.Unlock()
	c := l.src.r.c
	c.SetReadDeadline(l.awayState.deadline)
	l.unparked(readAtLeastOne(c, l.src.b[:]))
	l.serve()
}

// closedBeneath is the ClosingConn hook: a connection away comes back.
func (l *layer) closedBeneath() {
	l.mu.Lock()
	token := l.awayState.token
	l.mu.Unlock()
	if token != 0 {
		pollFire(token)
	}
}

// closingConnOf returns c's ClosingConn, beneath TLS, if it has one.
func closingConnOf(c net.Conn) ClosingConn {
	cc, _ := beneathTLS(c).(ClosingConn)
	return cc
}

func beneathTLS(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}
