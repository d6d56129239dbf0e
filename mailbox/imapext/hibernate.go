package imapext

import (
	"encoding/base64"
	"log/slog"
	"net"
	"strings"
	"unicode/utf16"

	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/chatrelay/chatrelay/mailbox/imapext/lifecycle"
)

// Hibernation. A connection in IDLE answered by the layer (idle.go) still
// holds imapserver's connection: its buffers and its goroutine, parked in
// a read of the in-memory connection. With Options.HibernateAfter the layer
// lets that connection go once the client has idled that long, and keeps
// the session. Where a connection stands, and which way it may go, is
// package lifecycle's (one State, its transition table); the layer does
// the protocol's part:
//
//   - Detach: when nothing is in flight (Quiet), the current Conn's Read
//     returns io.EOF, so imapserver's serve loop ends. It closes the
//     session, whose Close calls Conn.Keep instead of ending (the layer
//     holds it now), and then the Conn, which completes the detach. Each
//     imapserver connection gets a Conn value of its own (a generation):
//     reads, writes and closes of an old one do not touch the client.
//   - Hibernated, the connection holds the layer (its goroutine waiting
//     for DONE, or let go: lifecycle's Away) and the kept session. Notify
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

// Keeper is the connection a session serving the layer gets from
// imapserver.Conn.NetConn: its Close asks the connection to keep it.
type Keeper interface {
	// Keep is called by a session's Close: while the layer detaches the
	// connection it keeps s and returns true, and Close must then leave
	// the session as it is. Otherwise it returns false: the session ends.
	Keep(s KeptSession) bool
}

var _ Keeper = (*Conn)(nil)

// Keep implements Keeper.
func (c *Conn) Keep(s KeptSession) bool {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lc.Keep(c.gen, s)
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
	s, _ := l.lc.Take(c.gen).(KeptSession)
	return s
}

// armHibernate starts the timer of hibernation, if the connection may
// hibernate; the caller holds mu. COMPRESS does not matter: hibernation
// concerns imapserver's side, and what a resume replays is never written
// to the client, so the compressors never see it.
func (l *layer) armHibernate() {
	if !l.enabled {
		l.lc.Arm()
	}
}

// The layer is its connection's lifecycle.Owner; these run under mu, but
// ServeAgain.

var _ lifecycle.Owner = (*layer)(nil)

// Quiet: the connection may detach while it idles in IDLE with nothing in
// flight.
func (l *layer) Quiet() (now, retry bool) {
	if !l.idle.on || l.enabled {
		return false, false
	}
	if l.idle.inFlight || len(l.pending) > 0 || len(l.inject) > 0 || len(l.in) > 0 {
		return false, true
	}
	return true, false
}

// Resume hands a new Conn to imapserver, in a goroutine of its own
// (Notify must not block), with the replay of kept injected.
func (l *layer) Resume(gen uint64, kept lifecycle.Session) {
	cmd := "imapext NOOP\r\n"
	if ks, ok := kept.(KeptSession); ok {
		if name, ro, ok := ks.Selection(); ok {
			verb := "SELECT"
			if ro {
				verb = "EXAMINE"
			}
			cmd = "imapext " + verb + " " + quoteMailbox(name) + "\r\n"
		}
	}
	l.pending = append(l.pending, pendingCmd{tag: "imapext", name: "RESUME", internal: true, resume: true})
	l.inject = []byte(cmd)
	c := &Conn{l: l, gen: gen}
	go func() {
		if err := l.srv.listener.hand(c); err != nil {
			l.log.Warn("imap: resume", slog.Any("err", err))
			l.closeClient() // the layer's goroutine ends and closes the session
		}
	}()
}

// Signal wakes the waiters on mu.
func (l *layer) Signal() { l.cond.Broadcast() }

// ServeAgain serves a connection whose goroutine was let go.
func (l *layer) ServeAgain() { l.serve() }

// resumed is called when the replay of a resume completed; the caller
// holds mu.
func (l *layer) resumed(ok bool) {
	l.lc.Resumed(ok)
	if !ok {
		// Mostly a client that closed its hibernated connection: the
		// replayed SELECT finds nobody. The everyday end of a session.
		l.log.Debug("imap: resume refused")
		go l.closeClient()
		return
	}
	if l.idle.on {
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
