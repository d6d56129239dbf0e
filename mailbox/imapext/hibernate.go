package imapext

import (
	"encoding/base64"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf16"

	"github.com/emersion/go-imap/v2/imapserver"
)

// Hibernation. A connection in IDLE answered by the layer (idle.go) still
// holds imapserver's connection: its buffers and its goroutine, parked in
// a read of the in-memory connection. With Options.HibernateAfter the layer
// lets that connection go once the client has idled that long, and keeps
// the session:
//
//   - Detach: when nothing is in flight, the current Conn's Read returns
//     io.EOF, so imapserver's serve loop ends. It closes the session, whose
//     Close calls Conn.Keep instead of ending (the layer holds it now), and
//     then the Conn, which completes the detach. Each imapserver connection
//     gets a Conn value of its own (a generation): reads, writes and closes
//     of an old one do not touch the client.
//   - Hibernated, the connection holds the layer (its goroutine parked in a
//     read of the client, waiting for DONE) and the kept session. Notify
//     still reaches the layer: it is a method of the layer's, not of a
//     generation.
//   - Resume, on Notify or on anything from the client: a new Conn is
//     handed to imapserver, whose NewSession takes the session back (Kept)
//     and starts authenticated (PreAuth). The greeting and the replay, an
//     internal SELECT or EXAMINE of the selected mailbox (a NOOP if none),
//     are hidden from the client; a resumed session's Select keeps its
//     selection and answers for it. Then IDLE carries on: an internal NOOP
//     polls what changed, DONE is answered as usual.
//   - If the client goes away while hibernated, the layer closes the kept
//     session itself.
//
// Not hibernated: clients that ENABLEd something (not replayed). COMPRESS
// connections hibernate too. Waiting for the client, they hold no
// decompressor either once the client's stream stands at a sync flush,
// only the output history the stream may refer back to, up to 32 KiB
// (inflate.go).

// KeptSession is a session that outlives its imapserver connection while
// the layer hibernates (see Conn.Keep).
type KeptSession interface {
	imapserver.Session
	// Selection returns the selected mailbox and whether it was selected
	// read-only (EXAMINE); ok is false with nothing selected.
	Selection() (mailbox string, readOnly, ok bool)
}

type hibPhase uint8

const (
	hibNone      hibPhase = iota
	hibDetaching          // the current Conn reads EOF; imapserver lets go
	hibSleeping           // no imapserver connection; kept holds the session
	hibResuming           // a new Conn replays the state, hidden
)

// hibState is the layer's part; guarded by layer.mu.
type hibState struct {
	hib    hibPhase
	gen    uint64      // generation of the current Conn
	kept   KeptSession // the session while hibernated
	wake   bool        // resume as soon as the detach completes
	replay bool        // hide every response of imapserver's (resume)
	timer  *time.Timer // runs hibernate while in IDLE
}

// current reports whether c is the Conn imapserver is to use; the caller
// holds mu.
func (c *Conn) current() bool {
	return c.gen == c.l.gen && c.l.hib != hibDetaching
}

func (c *Conn) stale() bool {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	return c.gen != c.l.gen
}

// detached is called by Close: it reports whether c is an old generation,
// or the one being detached, whose close completes the detach.
func (c *Conn) detached() bool {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.gen != l.gen {
		return true
	}
	if l.hib != hibDetaching {
		return false
	}
	if l.kept == nil {
		// The session did not keep itself (or the client went away meanwhile):
		// end as imapserver asked.
		l.hib = hibNone
		return false
	}
	l.gen++
	l.hib = hibSleeping
	hibernated.Add(1)
	if l.wake {
		l.startResume()
	} else {
		l.sendAway() // away.go
	}
	l.cond.Broadcast()
	return true
}

// Keep is called by a session's Close: while the layer detaches the
// connection it keeps s and returns true, and Close must then leave the
// session as it is. Otherwise it returns false: the session ends.
func (c *Conn) Keep(s KeptSession) bool {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.gen != l.gen || l.hib != hibDetaching || l.closed || l.ended {
		return false
	}
	l.kept = s
	return true
}

// Kept returns the session kept for a connection that resumes after
// hibernation (nc is what imapserver.Conn.NetConn returns), nil for any
// other. NewSession must then return it, with
// imapserver.GreetingData{PreAuth: true}; imapserver owns it again.
func Kept(nc net.Conn) KeptSession {
	c, ok := nc.(*Conn)
	if !ok {
		return nil
	}
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.gen != l.gen || l.hib != hibResuming {
		return nil
	}
	s := l.kept
	l.kept = nil
	return s
}

// dropKept takes the kept session when the layer ends; the caller holds
// mu and closes it.
func (l *layer) dropKept() KeptSession {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.hib == hibSleeping {
		hibernated.Add(-1)
		l.hib = hibNone
	}
	s := l.kept
	l.kept = nil
	return s
}

var hibernated atomic.Int64

// Hibernated returns how many connections are hibernated now, in the whole
// process (metrics, tests).
func Hibernated() int64 { return hibernated.Load() }

// armHibernate starts the timer of hibernation, if the connection may
// hibernate; the caller holds mu. COMPRESS does not matter: hibernation
// concerns imapserver's side, and what a resume replays is never written
// to the client, so the compressors never see it.
func (l *layer) armHibernate() {
	d := l.opts.HibernateAfter
	if d <= 0 || l.enabled || l.timer != nil {
		return
	}
	l.timer = time.AfterFunc(d, l.hibernate)
}

// disarmHibernate stops the timer; the caller holds mu.
func (l *layer) disarmHibernate() {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
}

// hibernate runs when the client has idled for HibernateAfter.
func (l *layer) hibernate() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timer = nil
	if !l.idle.on || l.closed || l.ended || l.hib != hibNone || l.enabled {
		return
	}
	if l.idle.inFlight || len(l.pending) > 0 || len(l.inject) > 0 || len(l.in) > 0 {
		// Busy: try again later.
		l.timer = time.AfterFunc(l.opts.HibernateAfter, l.hibernate)
		return
	}
	l.hib = hibDetaching
	l.wake = false
	l.cond.Broadcast() // the current Conn's Read returns io.EOF
}

// wakeUp resumes a hibernated connection, now or once its detach
// completes; it never blocks. The caller holds mu.
func (l *layer) wakeUp() {
	switch l.hib {
	case hibDetaching:
		l.wake = true
	case hibSleeping:
		l.startResume()
	}
}

// startResume hands a new Conn to imapserver, in a goroutine of its own
// (Notify must not block); the caller holds mu.
func (l *layer) startResume() {
	hibernated.Add(-1)
	l.hib = hibResuming
	l.wake = false
	l.replay = true
	cmd := "imapext NOOP\r\n"
	if name, ro, ok := l.kept.Selection(); ok {
		verb := "SELECT"
		if ro {
			verb = "EXAMINE"
		}
		cmd = "imapext " + verb + " " + quoteMailbox(name) + "\r\n"
	}
	l.pending = append(l.pending, pendingCmd{tag: "imapext", name: "RESUME", internal: true, resume: true})
	l.inject = []byte(cmd)
	c := &Conn{l: l, gen: l.gen}
	go func() {
		if err := l.opts.listener.hand(c); err != nil {
			l.log.Warn("imap: resume", slog.Any("err", err))
			l.closeClient() // the layer's goroutine ends and closes the session
		}
	}()
}

// resumed is called when the replay of a resume completed; the caller
// holds mu.
func (l *layer) resumed(ok bool) {
	l.replay = false
	l.hib = hibNone
	if !ok {
		// Mostly a client that closed its hibernated connection: the
		// replayed SELECT finds nobody. The everyday end of a session.
		l.log.Debug("imap: resume refused")
		l.closed = true
		go l.closeClient()
		return
	}
	if l.idle.on && !l.closed && !l.ended {
		// Whatever woke the connection, and whatever came while it slept.
		if l.idle.inFlight {
			l.idle.again = true
		} else {
			l.injectNoop()
		}
		l.armHibernate()
	}
}

// quoteMailbox encodes a mailbox name for a command: modified UTF-7 (RFC
// 3501 section 5.1.3) in a quoted string.
func quoteMailbox(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	var b strings.Builder
	b.WriteByte('"')
	var run []rune
	endRun := func() {
		if len(run) == 0 {
			return
		}
		u := utf16.Encode(run)
		raw := make([]byte, 0, 2*len(u))
		for _, v := range u {
			raw = append(raw, byte(v>>8), byte(v))
		}
		b.WriteByte('&')
		b.WriteString(strings.ReplaceAll(strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "="), "/", ","))
		b.WriteByte('-')
		run = run[:0]
	}
	for _, r := range name {
		switch {
		case r < 0x20 || r > 0x7e:
			run = append(run, r)
			continue
		}
		endRun()
		switch r {
		case '&':
			b.WriteString("&-")
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	endRun()
	b.WriteByte('"')
	return b.String()
}
