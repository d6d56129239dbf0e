package imapext

import (
	"bufio"
	"bytes"

	"github.com/emersion/go-imap/v2"

	"github.com/chatrelay/chatrelay/mailbox/imapext/lifecycle"
)

// IDLE (RFC 2177) in the layer. imapserver runs IDLE in a goroutine of its
// own, next to the one reading DONE; with Options.IdleNotify the layer
// answers IDLE itself instead:
//
//   - It sends "+ idling" and then an internal NOOP to imapserver, whose
//     NOOP polls the session: updates queued before IDLE go out at once.
//   - While the layer waits for DONE, the session calls Conn.Notify when its
//     selected mailbox changes, and the layer sends another internal NOOP.
//     At most one is in flight; a notification that comes meanwhile is
//     answered by one more NOOP after it, so no update waits for the next
//     command.
//   - The untagged responses of internal NOOPs go to the client (and are
//     flushed, compressed or not); their tagged responses do not.
//   - On DONE the layer waits for the NOOP in flight, sends a last one (as
//     imapserver polls after every command) and answers the tag.
//
// So an idle connection parks the layer's goroutine in a read of the client
// and imapserver's in a read of the in-memory connection.

// noopCmd is the internal command; its tag is never seen by the client.
var noopCmd = []byte("imapext NOOP\r\n")

type idleState struct {
	on       bool // waiting for DONE: Notify sends NOOPs
	inFlight bool // an internal NOOP awaits its tagged response
	again    bool // a notification came while one was in flight
}

// Notify tells the layer that the mailbox the session has selected changed.
// It is safe to call from any goroutine, never blocks and does nothing
// unless the connection is in IDLE handled by the layer.
func (c *Conn) Notify() {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st := l.lc.State(); {
	case st.Closed():
	case st != lifecycle.Active:
		l.lc.Wake() // hibernate.go
	case !l.idle.on:
	case l.idle.inFlight:
		l.idle.again = true
	default:
		l.injectNoop()
	}
}

// injectNoop queues an internal NOOP for imapserver; the caller holds mu.
func (l *layer) injectNoop() {
	l.pending = append(l.pending, pendingCmd{tag: "imapext", name: "NOOP", internal: true})
	l.inject = noopCmd
	l.idle.inFlight = true
	l.cond.Broadcast()
}

// internalDone is called when an internal NOOP completed; the caller holds
// mu.
func (l *layer) internalDone() {
	l.idle.inFlight = false
	if l.idle.again && l.idle.on && !l.lc.State().Closed() {
		l.idle.again = false
		l.injectNoop()
	}
}

// idleCommand runs IDLE. Whatever imapserver would refuse (before login, or
// with arguments) goes to imapserver.
func (l *layer) idleCommand(tag, name string, line []byte, lit literal) error {
	if err := l.waitIdle(); err != nil {
		return err
	}
	if !l.authenticated() || lit.size >= 0 || !newArgs(line).end() {
		return l.cr.passCommand(l, tag, name, line, lit)
	}
	if err := l.reply(func(w *bufio.Writer) { w.WriteString("+ idling\r\n") }); err != nil {
		return err
	}
	if l.opts.OnIdle != nil {
		l.idleEnd = l.opts.OnIdle()
	}
	l.mu.Lock()
	l.idle.on = true
	l.injectNoop()
	l.armHibernate()
	l.mu.Unlock()

	// The wait for DONE is the layer's wait for the next command (waiting),
	// which may go away (lifecycle's Leaving); then idleDone.
	l.idleTag = tag
	l.rtimeout = idleTimeout
	return nil
}

// idleDone ends the IDLE of l.idleTag: line is what came instead of the
// next command, err the error reading it.
func (l *layer) idleDone(line []byte, err error) error {
	tag := l.idleTag
	l.idleTag = ""
	if l.idleEnd != nil {
		defer l.idleEnd()
		l.idleEnd = nil
	}
	l.mu.Lock()
	l.idle.on, l.idle.again = false, false
	l.lc.Disarm()
	l.lc.Wake() // waitIdle waits for the resume
	l.mu.Unlock()
	if err != nil {
		return err
	}
	l.rtimeout = commandTimeout
	if err := l.waitIdle(); err != nil {
		return err
	}
	if !bytes.Equal(bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r")), []byte("DONE")) {
		// As imapserver answers it; the line is not a command.
		return l.replyStatus(tag, &imap.Error{Type: imap.StatusResponseTypeBad, Code: imap.ResponseCodeClientBug, Text: "Syntax error: expected DONE to end IDLE command"})
	}
	l.mu.Lock()
	l.injectNoop()
	l.mu.Unlock()
	if err := l.waitIdle(); err != nil {
		return err
	}
	return l.replyOK(tag, "IDLE completed")
}
