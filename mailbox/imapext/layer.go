// Package imapext puts a thin layer in front of go-imap's imapserver on each
// IMAP connection. The layer owns the client connection, speaks the commands
// imapserver cannot be extended with (METADATA, QUOTA, ID, COMPRESS=DEFLATE,
// STARTTLS with our own policy) and passes every other command through to
// imapserver, byte for byte and in order, over an in-memory connection
// (Conn) that holds no goroutine of its own: imapserver's reads wait for the
// bytes the layer hands over, and its writes run the response framing
// (respFramer) and go to the client at once.
//
// Design choices:
//   - Literals of passthrough commands are always offered to imapserver as
//     synchronizing literals; the layer forwards imapserver's "+" to the
//     client when the client sent "{n}" and swallows it for "{n+}". A literal
//     imapserver refuses is therefore never read by it as commands.
//   - Responses come back in command order: before answering one of its own
//     commands the layer waits until every passthrough command sent before
//     it has its tagged response written.
//   - ExtraCaps are advertised in every capability list, in every state
//     (Delta Chat reads them from the greeting); the commands behind them
//     answer BAD until the session called SetUser.
//   - Without TLS (and without Options.InsecureAuth), LOGIN and AUTHENTICATE
//     are refused with NO [PRIVACYREQUIRED], LOGINDISABLED is advertised and
//     AUTH= mechanisms are not.
//   - Deadlines apply to the client connection only; the in-memory
//     connection ignores imapserver's deadlines.
//   - With Options.IdleNotify the layer answers IDLE itself (see idle.go),
//     so that an idle connection costs one parked goroutine of the layer
//     and imapserver's, blocked in a read of the in-memory connection.
package imapext

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/chatrelay/chatrelay/mailbox/imapext/lifecycle"
)

const (
	// preAuthTimeout bounds the wait for a command before login.
	preAuthTimeout = time.Minute
	// idleTimeout bounds the wait for a command (or IDLE's DONE) after
	// login. RFC 9051 section 5.4: an autologout timer must be at least 30
	// minutes.
	idleTimeout = 35 * time.Minute
	// commandTimeout bounds each read within a command (progress, not total).
	commandTimeout = 2 * time.Minute
	// writeTimeout bounds each write to the client.
	writeTimeout     = 2 * time.Minute
	handshakeTimeout = 30 * time.Second

	// maxPipelined bounds passthrough commands awaiting their tagged response.
	maxPipelined = 32
	// maxOwnCommand bounds the buffered arguments of our own commands, other
	// than SETMETADATA values.
	maxOwnCommand = 16 << 10
	// maxOwnLiteral bounds a literal in our own commands, other than
	// SETMETADATA values.
	maxOwnLiteral = 4096

	bufSize = 2048
)

// GetMetadataOptions are the options of GETMETADATA (RFC 5464 section 4.2).
type GetMetadataOptions struct {
	// MaxSize is the MAXSIZE option, 0 when absent. The layer drops longer
	// values itself; a Handler may use it to avoid loading them.
	MaxSize int64
	// Depth is the DEPTH option: 0, 1, or -1 for "infinity".
	Depth int
}

// Handler answers METADATA and QUOTA commands. user is the address the
// session passed to SetUser after login.
type Handler interface {
	// GetMetadata returns the values of entries of mailbox ("" for server
	// entries), and of their descendants as opts.Depth asks. A nil value is
	// sent as NIL; entries missing from the map are not sent.
	GetMetadata(user, mailbox string, entries []string, opts GetMetadataOptions) (map[string]*string, error)
	// SetMetadata sets entries of mailbox; a nil value deletes the entry.
	// An *imap.Error is sent to the client as it is, for example
	// Code "METADATA TOOMANY" (RFC 5464 section 4.3).
	SetMetadata(user, mailbox string, entries map[string]*string) error
	// Quota returns the storage used by user and its limit, in bytes;
	// limitBytes <= 0 means no limit.
	Quota(user string) (usedBytes, limitBytes int64, err error)
}

// Options configure the layer; New makes a Server of them.
type Options struct {
	// Server handles every command the layer passes through. Build it with
	// InsecureAuth: true (the layer enforces TLS itself) and no TLSConfig.
	// Its sessions should call UserSetter(conn.NetConn()).SetUser after a
	// successful login. Closing it makes later Serve calls fail.
	Server *imapserver.Server
	// Handler answers METADATA and QUOTA; nil leaves those commands to
	// imapserver (which refuses them).
	Handler Handler
	// TLSConfig enables STARTTLS (port 143); nil means no STARTTLS.
	TLSConfig *tls.Config
	// ImplicitTLS says the connection is already TLS (993, or 443 with ALPN
	// "imap"). A *tls.Conn is recognised without it.
	ImplicitTLS bool
	// InsecureAuth allows LOGIN and AUTHENTICATE without TLS (dev mode,
	// tests).
	InsecureAuth bool
	// ExtraCaps are added to every capability list, for example METADATA,
	// QUOTA, QUOTA=RES-STORAGE, ID, COMPRESS=DEFLATE, XCHATMAIL, XDELTAPUSH.
	// The layer answers METADATA (or METADATA-SERVER), QUOTA, ID and
	// COMPRESS=DEFLATE only when they are listed here.
	ExtraCaps []string
	// ID is the server's answer to ID (RFC 2971), e.g. name=chatrelay.
	ID map[string]string
	// MaxMetadataSize bounds one METADATA value in bytes; 0 means 64 KiB.
	MaxMetadataSize int
	// Logger receives connection-level events, never user data.
	Logger *slog.Logger
	// IdleNotify says that the sessions of Server call Notify on their
	// connection (a *Conn) whenever their selected mailbox changes. The
	// layer then answers IDLE itself (see idle.go) instead of leaving it to
	// imapserver, which runs a goroutine per IDLE.
	IdleNotify bool
	// OnIdle, if set, is called when the layer starts an IDLE; it returns
	// the function called when the IDLE ends (metrics).
	OnIdle func() (done func())
	// HibernateAfter, if positive, lets a connection in IDLE (answered by
	// the layer, see IdleNotify) hand imapserver's connection back once it
	// has been idle that long, keeping its session; see hibernate.go. The
	// sessions of Server must support it (KeptSession, Conn.Keep, Kept).
	HibernateAfter time.Duration

	// onTagged, if set, is called with the first line of each tagged
	// response of imapserver's and the passthrough command the layer
	// expects it to answer (tests).
	onTagged func(resp []byte, want pendingCmd)
}

// Server is the layer for the connections of one or more listeners: it
// runs Options.Server on an in-memory listener that yields the inner end
// of each connection, and counts its hibernated connections.
type Server struct {
	opts       Options
	listener   *listener
	hibernated lifecycle.Counter
}

// New starts serving opts.Server behind the layer. The imapserver.Server
// may be shared by several Servers; closing it makes later Serve calls
// fail.
func New(opts Options) *Server {
	s := &Server{opts: opts, listener: newListener()}
	go func() {
		err := opts.Server.Serve(s.listener)
		s.listener.stop(err)
	}()
	return s
}

// Close stops handing new connections to imapserver and returns once its
// Serve on them has returned (closing the imapserver.Server afterwards
// does not race with that Serve). Connections served already go on until
// imapserver closes them.
func (s *Server) Close() error {
	s.listener.Close()
	<-s.listener.stopped
	return nil
}

// Hibernated returns how many connections of s are hibernated now
// (metrics, tests).
func (s *Server) Hibernated() int64 { return s.hibernated.Load() }

func (o *Options) maxMetadataSize() int {
	if o.MaxMetadataSize > 0 {
		return o.MaxMetadataSize
	}
	return 64 << 10
}

// Conn is the connection imapserver sees (imapserver.Conn.NetConn returns
// it): an in-memory connection whose peer is the layer.
type Conn struct {
	l   *layer
	gen uint64 // lifecycle.Machine.Gen when it was handed out; see hibernate.go
}

// RemoteAddr returns the client's address.
func (c *Conn) RemoteAddr() net.Addr { return c.l.remote }

// LocalAddr returns the server's address of the client connection.
func (c *Conn) LocalAddr() net.Addr { return c.l.local }

// SetUser tells the layer who logged in; the session calls it after a
// successful LOGIN or AUTHENTICATE. "" means logged out.
func (c *Conn) SetUser(addr string) {
	c.l.mu.Lock()
	c.l.user = addr
	c.l.mu.Unlock()
}

// User returns the address passed to SetUser.
func (c *Conn) User() string {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	return c.l.user
}

// Read returns command bytes the layer passes through (or an internal
// command of the layer's own, see idle.go). It returns io.EOF once the
// client connection has ended.
func (c *Conn) Read(p []byte) (int, error) {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.lc.Current(c.gen) && len(l.in) == 0 && len(l.inject) == 0 && !l.lc.State().Closed() {
		if !l.srvWaiting {
			l.srvWaiting = true
			l.cond.Broadcast() // settle
		}
		l.cond.Wait()
	}
	l.srvWaiting = false
	switch {
	case !l.lc.Current(c.gen):
		return 0, io.EOF // imapserver lets go of it: hibernation
	case len(l.inject) > 0:
		n := copy(p, l.inject)
		l.inject = l.inject[n:]
		return n, nil
	case len(l.in) > 0:
		n := copy(p, l.in)
		l.in = l.in[n:]
		if len(l.in) == 0 {
			l.cond.Broadcast() // send returns
		}
		return n, nil
	case l.lc.State() == lifecycle.Closed:
		return 0, net.ErrClosed
	}
	return 0, io.EOF
}

// Write takes imapserver's responses: it follows their framing, fixes
// capability lists, keeps back what the layer hides and writes the rest to
// the client. Each batch of responses is flushed once it is complete (see
// respEnd).
func (c *Conn) Write(p []byte) (int, error) {
	l := c.l
	l.mu.Lock()
	stale := c.gen != l.lc.Gen()
	l.mu.Unlock()
	if stale {
		return 0, net.ErrClosed
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.werr != nil {
		return 0, l.werr
	}
	l.fr.feed(p, l)
	if l.werr == nil && l.flushDue && l.fr.atBoundary() {
		l.flushDue = false
		if err := l.flush(); err != nil {
			l.werr = err
		}
	}
	if l.werr != nil {
		l.raw.Close() // the layer's reader stops too
		return 0, l.werr
	}
	return len(p), nil
}

// Close is imapserver ending the connection (LOGOUT, BYE, shutdown): what
// it wrote is flushed and the client connection is closed.
func (c *Conn) Close() error {
	l := c.l
	l.mu.Lock()
	own := l.lc.Detached(c.gen) // an old generation, or the detach completing
	l.mu.Unlock()
	if own {
		return nil
	}
	l.wmu.Lock()
	if l.werr == nil {
		l.flush()
		l.werr = net.ErrClosed
	}
	l.wmu.Unlock()
	l.mu.Lock()
	was := l.lc.Close()
	l.cond.Broadcast()
	l.mu.Unlock()
	if !was {
		l.closeClient()
	}
	return nil
}

// SetDeadline does nothing: the layer keeps the deadlines of the client
// connection itself.
func (c *Conn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline does nothing; see SetDeadline.
func (c *Conn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline does nothing; see SetDeadline.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

type noUser struct{}

func (noUser) SetUser(string) {}

// UserSetter returns what a session calls SetUser on after login: the layer's
// *Conn, or a no-op for any other connection.
func UserSetter(c net.Conn) interface{ SetUser(string) } {
	if ic, ok := c.(*Conn); ok {
		return ic
	}
	return noUser{}
}

// IsTLS reports whether the client connection behind c is protected by TLS
// (implicit or after STARTTLS).
func IsTLS(c net.Conn) bool {
	switch c := c.(type) {
	case *Conn:
		c.l.mu.Lock()
		defer c.l.mu.Unlock()
		return c.l.tls
	case *tls.Conn:
		return true
	}
	return false
}

// listener hands inner connections to imapserver.Server.Serve.
type listener struct {
	conns     chan net.Conn
	closeOnce sync.Once
	closed    chan struct{}
	stopped   chan struct{}
	err       error
}

func newListener() *listener {
	return &listener{
		conns:   make(chan net.Conn),
		closed:  make(chan struct{}),
		stopped: make(chan struct{}),
	}
}

func (ln *listener) Accept() (net.Conn, error) {
	select {
	case c := <-ln.conns:
		return c, nil
	case <-ln.closed:
		return nil, net.ErrClosed
	}
}

func (ln *listener) Close() error {
	ln.closeOnce.Do(func() { close(ln.closed) })
	return nil
}

func (ln *listener) Addr() net.Addr { return pipeAddr{} }

func (ln *listener) stop(err error) {
	ln.err = err
	close(ln.stopped)
	ln.Close()
}

func (ln *listener) hand(c net.Conn) error {
	select {
	case ln.conns <- c:
		return nil
	case <-ln.stopped:
		if ln.err != nil {
			return fmt.Errorf("imapext: imapserver stopped: %w", ln.err)
		}
		return errors.New("imapext: imapserver stopped")
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "imapext" }

// The layer is the sink of its respFramer; these run in Conn.Write, under wmu.

func (l *layer) respStart(kind respKind, first []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch kind {
	case respContinuation:
		hide := l.swallow
		l.swallow = false
		return hide
	case respTagged:
		tag, _, _ := bytes.Cut(first, []byte(" "))
		replay := l.lc.State() == lifecycle.Resuming
		if l.opts.onTagged != nil && !replay {
			var want pendingCmd
			if len(l.pending) > 0 {
				want = l.pending[0]
			}
			l.opts.onTagged(first, want)
		}
		if !replay && (len(l.pending) == 0 || string(tag) != l.pending[0].tag) {
			// imapserver answers a command the layer did not pass, or not
			// in the layer's order: the two framed the client's bytes
			// differently. Nothing more of this connection can be trusted.
			l.log.Warn("imap: imapserver answered a command the layer did not pass; closing")
			l.werr = errDesync
			return true
		}
		return replay || len(l.pending) > 0 && l.pending[0].internal
	}
	return l.lc.State() == lifecycle.Resuming
}

func (l *layer) firstLine(b []byte) {
	// Capability lists are rare (greeting, LOGIN, CAPABILITY): their
	// buffer is not kept.
	if buf := l.rewriteCaps(b, nil); buf != nil {
		l.out(buf)
		return
	}
	l.out(b)
}

func (l *layer) out(b []byte) {
	if l.werr != nil {
		return
	}
	if _, err := l.writer().Write(b); err != nil {
		l.werr = err
	}
}

// respEnd accounts for a complete response. Responses are flushed when a
// command completes or asks for more, and when no command runs (IDLE
// updates, the greeting); untagged responses within a command wait for its
// end or for a full buffer.
func (l *layer) respEnd(kind respKind, tagOK bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.greeted = true
	switch kind {
	case respContinuation:
		l.conts++
	case respTagged:
		l.tagged++
		if len(l.pending) > 0 {
			p := l.pending[0]
			if tagOK && p.name == "UNAUTHENTICATE" {
				l.user = "" // RFC 8437
			}
			if tagOK && p.name == "ENABLE" {
				l.enabled = true // not replayed on resume: no hibernation
			}
			l.pending = l.pending[1:]
			if len(l.pending) == 0 {
				l.pending = nil
			}
			switch {
			case p.resume:
				l.resumed(tagOK)
			case p.internal:
				l.internalDone()
			}
		}
	}
	if kind != respUntagged || len(l.pending) == 0 || l.pending[0].name == "IDLE" {
		l.flushDue = true
	}
	l.cond.Broadcast()
}

// Buffers are borrowed: a connection waiting for its client holds neither a
// read nor a write buffer of the layer's (see park and flush).
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
)

// writer returns the write buffer, borrowing one if needed; the caller
// holds wmu.
func (l *layer) writer() *bufio.Writer {
	if l.bw == nil {
		l.bw = writers.Get().(*bufio.Writer)
		l.bw.Reset(l.dst)
	}
	return l.bw
}

// primedReader is the source of the layer's read buffer: while the layer
// waits for a client with its buffer given back, the first byte that comes
// is read into b, and handed out first once a buffer is borrowed again.
type primedReader struct {
	r   lifecycle.Reader
	b   [1]byte
	n   int
	err error
}

func (p *primedReader) Read(b []byte) (int, error) {
	switch {
	case len(b) == 0:
		return 0, nil
	case p.n > 0:
		b[0], p.n = p.b[0], 0
		return 1, nil
	case p.err != nil:
		err := p.err
		p.err = nil
		return 0, err
	}
	return p.r.Read(b)
}

// park waits for the client's next byte without holding a read buffer, when
// nothing is buffered. With COMPRESS the decompressor has to stand at a
// sync flush, and then goes too, with the buffer of compressed bytes it
// reads from (see inflate.go). An error is returned by the next read. It
// returns lifecycle.ErrAway when the connection goes away instead; it comes
// back with no read buffer, and parks again.
func (l *layer) park() error {
	if l.cr.br != nil {
		if l.cr.br.Buffered() > 0 || l.src.n > 0 || l.src.err != nil {
			return nil
		}
		if l.inf != nil && !l.inf.park() {
			return nil
		}
		readers.Put(l.cr.br)
		l.cr.br = nil
	}
	n, err := l.lc.Wait(l.src.r, l.src.b[:])
	if err == lifecycle.ErrAway {
		return err
	}
	l.unparked(n, err)
	return nil
}

// unparked takes what the wait of park read, and a read buffer (and the
// decompressor's source).
func (l *layer) unparked(n int, err error) {
	l.src.n, l.src.err = n, err
	var r io.Reader = &l.src
	if l.inf != nil {
		l.inf.resume(&l.src)
		r = l.inf
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	l.cr.br = br
}

// busy tells whether commands the client sent await their answers.
func (l *layer) busy() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.pending {
		if !p.internal {
			return true
		}
	}
	return false
}

// timedWriter gives every write to the client connection a fresh deadline.
type timedWriter struct{ c net.Conn }

func (w timedWriter) Write(p []byte) (int, error) {
	w.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return w.c.Write(p)
}

// layer is the state of one client connection.
type layer struct {
	srv           *Server
	opts          *Options // &srv.opts
	log           *slog.Logger
	remote, local net.Addr
	cr            commandReader
	rtimeout      time.Duration // read timeout; reader goroutine only

	hasMetadata, hasQuota, hasID, hasCompress bool

	src primedReader // the source of cr.br (or of inf), reader goroutine only
	inf *inflater    // the source of cr.br once COMPRESS is active; ditto
	// IDLE in progress (idle.go): its tag, and what to call when it ends;
	// reader goroutine only.
	idleTag string
	idleEnd func()
	conn    net.Conn    // as given to Serve, closed when the connection ends
	done    func(error) // ServeAsync's

	wmu sync.Mutex // guards what follows, the write side of the client
	raw net.Conn   // the client connection, *tls.Conn after STARTTLS
	dst io.Writer  // where bw writes: raw with a deadline, or dw
	bw  *bufio.Writer
	dw  *deflateWriter // set once COMPRESS is active
	// What follows is Conn.Write's state.
	fr       respFramer
	werr     error // writing to the client failed, or imapserver closed
	flushDue bool  // a batch of responses is complete

	mu      sync.Mutex
	cond    sync.Cond
	pending []pendingCmd // passthrough commands awaiting a tagged response
	// greeted is set once imapserver's greeting went out: a client that
	// pipelines STARTTLS (or any command of ours) before reading the
	// greeting must not get our answer first.
	greeted bool
	conts   int // continuation requests seen from imapserver
	tagged  int // tagged responses seen from imapserver
	// srvWaiting: imapserver waits in Read for bytes the layer has not
	// handed over yet.
	srvWaiting bool
	swallow    bool // hide the next continuation request from the client
	user       string
	tls        bool
	in         []byte // command bytes imapserver is to read (send)
	inject     []byte // an internal command imapserver is to read first
	idle       idleState
	enabled    bool              // the client ENABLEd something
	lc         lifecycle.Machine // where the connection stands: hibernated, away...
}

// pendingCmd is a passthrough command awaiting its tagged response;
// internal ones are the layer's own (idle.go), their tagged response is not
// sent to the client.
type pendingCmd struct {
	tag, name string
	internal  bool
	resume    bool // the last command of a resume's replay (hibernate.go)
}

var (
	errClosed = errors.New("imapext: connection closed")
	errDesync = errors.New("imapext: imapserver and the layer disagree on command framing")
)

// Serve handles one client connection until it ends. The connection is closed
// when Serve returns. A client that disconnects or logs out is not an error.
func (s *Server) Serve(conn net.Conn) error {
	res := make(chan error, 1)
	s.ServeAsync(conn, func(err error) { res <- err })
	return <-res
}

// ServeAsync handles one client connection as Serve does, in the calling
// goroutine until the connection ends or goes away (see away.go): a
// hibernated connection waiting for its client holds no goroutine of the
// layer's. done is called once, with what Serve would return, when the
// connection has ended and is closed.
func (s *Server) ServeAsync(conn net.Conn, done func(error)) {
	opts := &s.opts
	tc, isTLS := conn.(*tls.Conn)
	if isTLS && !tc.ConnectionState().HandshakeComplete {
		if err := lifecycle.Handshake(tc, handshakeTimeout); err != nil {
			conn.Close()
			done(fmt.Errorf("imapext: TLS handshake: %w", err))
			return
		}
	}
	l := &layer{
		srv:      s,
		opts:     opts,
		log:      opts.Logger,
		conn:     conn,
		done:     done,
		remote:   conn.RemoteAddr(),
		local:    conn.LocalAddr(),
		raw:      conn,
		tls:      isTLS || opts.ImplicitTLS,
		rtimeout: preAuthTimeout,
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.cond.L = &l.mu
	for _, c := range opts.ExtraCaps {
		switch c := strings.ToUpper(c); {
		case c == "METADATA" || c == "METADATA-SERVER":
			l.hasMetadata = opts.Handler != nil
		case c == "QUOTA" || strings.HasPrefix(c, "QUOTA="):
			l.hasQuota = opts.Handler != nil
		case c == "ID":
			l.hasID = true
		case c == "COMPRESS=DEFLATE":
			l.hasCompress = true
		}
	}
	l.lc.Init(&l.mu, l, lifecycle.Config{HibernateAfter: opts.HibernateAfter, Counter: &s.hibernated, Logger: l.log}, conn)
	l.src.r = lifecycle.Reader{C: conn, Timeout: &l.rtimeout, Busy: l.busy}
	l.cr.br = bufio.NewReaderSize(&l.src, bufSize)
	l.dst = timedWriter{conn}

	if err := s.listener.hand(&Conn{l: l}); err != nil {
		conn.Close()
		done(err)
		return
	}
	l.serve()
}

// serve reads commands until the connection ends, or until it goes away.
func (l *layer) serve() {
	err := serveCommands(&l.cr, l)
	if err == lifecycle.ErrAway {
		l.lc.GoAway() // a goroutine comes back to serve it
		return
	}
	l.done(l.end(err))
}

// end takes the connection down after serveCommands returned err and
// returns what Serve returns.
func (l *layer) end(err error) error {
	defer l.conn.Close()
	if l.idleEnd != nil {
		l.idleEnd()
		l.idleEnd = nil
	}
	ended := l.serverEnded()
	if !ended {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			l.bye(textTimeout)
		case errors.Is(err, errLineTooLong):
			l.bye(textLineTooLong)
		case errors.Is(err, errLiteralTooBig):
			l.bye(textLiteralTooBig)
		default:
			if fe, ok := err.(*framingError); ok {
				l.bye(fe.text)
			}
		}
	}
	l.mu.Lock()
	kept := l.lc.End() // imapserver reads EOF and ends the session
	l.cond.Broadcast()
	l.mu.Unlock()
	l.closeClient()
	if kept != nil {
		// Hibernated: imapserver is not there to close the session.
		kept.Close()
	}

	switch {
	case ended:
		return nil // imapserver ended the session (LOGOUT, BYE)
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, errClosed):
		return nil
	}
	return fmt.Errorf("imapext: %w", err)
}

// isClosed reports whether imapserver closed the connection or the layer
// ended it; the caller holds mu.
func (l *layer) isClosed() bool { return l.lc.State().Closed() }

func (l *layer) serverEnded() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lc.State() == lifecycle.Closed
}

func (l *layer) closeClient() {
	l.wmu.Lock()
	raw := l.raw
	l.wmu.Unlock()
	raw.Close()
}

// bye writes an untagged BYE, best effort, while the connection goes down.
func (l *layer) bye(text string) {
	l.reply(func(w *bufio.Writer) {
		writeStatus(w, "", imap.StatusResponseTypeBye, "", text)
	})
}

// reply writes a response of the layer's own and flushes it.
func (l *layer) reply(f func(w *bufio.Writer)) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	f(l.writer())
	return l.flush()
}

func (l *layer) replyStatus(tag string, e *imap.Error) error {
	return l.reply(func(w *bufio.Writer) {
		writeStatus(w, tag, e.Type, e.Code, e.Text)
	})
}

func (l *layer) replyOK(tag, text string) error {
	return l.reply(func(w *bufio.Writer) {
		writeStatus(w, tag, imap.StatusResponseTypeOK, "", text)
	})
}

// flush sends everything written so far; the caller holds wmu. RFC 4978
// section 4: the compressor is flushed too, so that each batch of responses
// (an IDLE update, say) reaches the client at once.
func (l *layer) flush() error {
	if bw := l.bw; bw != nil {
		// Idle connections hold no write buffer.
		err := bw.Flush()
		bw.Reset(nil)
		writers.Put(bw)
		l.bw = nil
		if err != nil {
			return err
		}
	}
	if l.dw != nil {
		return l.dw.Flush()
	}
	return nil
}

func (l *layer) currentUser() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.user
}

func (l *layer) authenticated() bool { return l.currentUser() != "" }

func (l *layer) authAllowed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tls || l.opts.InsecureAuth
}

// waitIdle waits until the greeting and every passthrough command have
// been answered.
func (l *layer) waitIdle() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for (!l.greeted || len(l.pending) > 0 || l.lc.State() != lifecycle.Active) && !l.isClosed() {
		l.cond.Wait()
	}
	if l.isClosed() {
		return errClosed
	}
	return nil
}

// The following methods make the layer a dispatcher for serveCommands.

func (l *layer) waiting() error {
	if l.idleTag != "" {
		// IDLE runs (idle.go): the next line is its DONE.
		if err := l.park(); err != nil {
			return err
		}
		line, _, err := l.cr.readFragment()
		if err := l.idleDone(line, err); err != nil {
			return err
		}
	}
	if l.authenticated() {
		l.rtimeout = idleTimeout
	} else {
		l.rtimeout = preAuthTimeout
	}
	return l.park()
}

func (l *layer) reading() { l.rtimeout = commandTimeout }

func (l *layer) isOwn(name string) bool {
	switch name {
	case "STARTTLS":
		return true
	case "LOGIN", "AUTHENTICATE":
		return !l.authAllowed()
	case "GETMETADATA", "SETMETADATA":
		return l.hasMetadata
	case "GETQUOTA", "GETQUOTAROOT":
		return l.hasQuota
	case "ID":
		return l.hasID
	case "COMPRESS":
		return l.hasCompress
	case "IDLE":
		return l.opts.IdleNotify
	}
	return false
}

func (l *layer) invalid(line []byte, lit literal) error {
	if err := l.waitIdle(); err != nil {
		return err
	}
	if !l.authenticated() {
		// Like imapserver: no second chance before login, against
		// cross-protocol attacks.
		l.bye(textSyntaxLine)
		return errClosed
	}
	if err := l.cr.discardRest(lit); err != nil {
		return err
	}
	return l.reply(func(w *bufio.Writer) {
		writeStatus(w, "", imap.StatusResponseTypeBad, imap.ResponseCodeClientBug, textSyntaxLine)
	})
}

func (l *layer) refuse(tag string, lit literal) error {
	if err := l.waitIdle(); err != nil {
		return err
	}
	if err := l.cr.discardRest(lit); err != nil {
		return err
	}
	return l.replyStatus(tag, errTooBig)
}

func (l *layer) refuseFraming(tag string, e *framingError) error {
	if err := l.waitIdle(); err != nil {
		return err
	}
	l.log.Info("imap: command imapserver would frame differently", slog.String("reason", e.text))
	l.replyStatus(tag, &imap.Error{Type: imap.StatusResponseTypeBad, Code: imap.ResponseCodeClientBug, Text: e.text})
	return e
}

func (l *layer) begin(tag, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.pending) >= maxPipelined && !l.isClosed() {
		l.cond.Wait()
	}
	if l.isClosed() {
		return errClosed
	}
	l.pending = append(l.pending, pendingCmd{tag: tag, name: name})
	return nil
}

// send hands p to imapserver and returns once it has read all of it.
func (l *layer) send(p []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isClosed() {
		return errClosed
	}
	l.in = p
	l.cond.Broadcast()
	for len(l.in) > 0 && !l.isClosed() {
		l.cond.Wait()
	}
	rest := len(l.in)
	l.in = nil
	if rest > 0 {
		return errClosed
	}
	return nil
}

func (l *layer) sendAwait(p []byte, lit literal) (bool, error) {
	l.mu.Lock()
	conts := l.conts
	l.swallow = lit.size >= 0 && lit.nonSync
	l.mu.Unlock()

	if lit.size >= 0 {
		var hdr [24]byte
		if err := l.send(p[:lit.start]); err != nil {
			return false, err
		}
		p = append(appendInt(append(hdr[:0], '{'), lit.size), "}\r\n"...)
	}
	if err := l.send(p); err != nil {
		return false, err
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	for l.conts == conts && len(l.pending) > 0 && !l.isClosed() {
		l.cond.Wait()
	}
	l.swallow = false
	if l.conts != conts {
		return true, nil
	}
	if l.isClosed() {
		return false, errClosed
	}
	return false, nil
}

func (l *layer) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tagged
}

func (l *layer) settle(mark int) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.tagged == mark && !(l.srvWaiting && len(l.in) == 0) && !l.isClosed() {
		l.cond.Wait()
	}
	if l.tagged != mark {
		return true, nil
	}
	if l.isClosed() {
		return false, errClosed
	}
	return false, nil
}

func (l *layer) continuationLine(name string) {
	if name == "IDLE" {
		l.rtimeout = idleTimeout
	} else {
		l.rtimeout = commandTimeout
	}
}

func (l *layer) sendContinuation() error {
	return l.reply(func(w *bufio.Writer) {
		w.WriteString("+ " + textLiteralReady + "\r\n")
	})
}

// handle runs one of the layer's own commands, after the passthrough
// commands before it have been answered.
func (l *layer) handle(tag, name string, line []byte, lit literal) error {
	if name == "IDLE" {
		return l.idleCommand(tag, name, line, lit)
	}
	if err := l.waitIdle(); err != nil {
		return err
	}
	max, check := maxOwnCommand, func(size int64) error {
		if size > maxOwnLiteral {
			return errTooBig
		}
		return nil
	}
	switch name {
	case "LOGIN", "AUTHENTICATE":
		// Refuse before the client sends a password literal.
		check = func(int64) error { return errPrivacyRequired }
	case "SETMETADATA":
		maxValue := l.opts.maxMetadataSize()
		max += 2 * maxValue
		check = func(size int64) error {
			if !l.authenticated() {
				return errNotAuthenticated
			}
			if size > int64(maxValue) {
				return errMetadataMaxSize(maxValue)
			}
			return nil
		}
	}
	cmd, rej, err := l.cr.readOwn(line, lit, max, check, l.sendContinuation)
	if err != nil {
		return err
	}
	if rej == nil {
		rej = l.run(tag, name, newArgs(cmd))
	}
	var ie *imap.Error
	if errors.As(rej, &ie) {
		return l.replyStatus(tag, ie)
	}
	return rej
}

// run executes an own command whose arguments are in a. It writes the
// responses of a successful command itself; an *imap.Error is the tagged
// refusal, any other error ends the connection.
func (l *layer) run(tag, name string, a *args) error {
	switch name {
	case "STARTTLS":
		return l.startTLS(tag, a)
	case "LOGIN", "AUTHENTICATE":
		return errPrivacyRequired
	case "COMPRESS":
		return l.compress(tag, a)
	case "ID":
		return l.id(tag, a)
	case "GETMETADATA":
		return l.getMetadata(tag, a)
	case "SETMETADATA":
		return l.setMetadata(tag, a)
	case "GETQUOTA":
		return l.getQuota(tag, a)
	case "GETQUOTAROOT":
		return l.getQuotaRoot(tag, a)
	}
	return errSyntax
}

// startTLS is RFC 9051 section 6.2.1.
func (l *layer) startTLS(tag string, a *args) error {
	if !a.end() {
		return errSyntax
	}
	l.mu.Lock()
	ok := l.opts.TLSConfig != nil && !l.tls && l.user == ""
	l.mu.Unlock()
	if !ok {
		return errStartTLSUnavailable
	}
	if err := l.replyOK(tag, "Begin TLS negotiation now"); err != nil {
		return err
	}
	if l.cr.br.Buffered() > 0 {
		// Cleartext pipelined after STARTTLS would be taken as sent under TLS
		// (CVE-2011-0411); RFC 9051 section 6.2.1 forbids the client to send it.
		l.log.Info("imap: data after STARTTLS")
		return errors.New("imapext: " + textInjection)
	}
	l.wmu.Lock()
	raw := l.raw
	l.wmu.Unlock()
	tc := tls.Server(raw, l.opts.TLSConfig)
	if err := lifecycle.Handshake(tc, handshakeTimeout); err != nil {
		return fmt.Errorf("imapext: STARTTLS handshake: %w", err)
	}
	l.wmu.Lock()
	l.raw = tc
	l.dst = timedWriter{tc}
	l.wmu.Unlock()
	l.src.r = lifecycle.Reader{C: tc, Timeout: &l.rtimeout, Busy: l.busy}
	l.cr.br.Reset(&l.src)
	l.mu.Lock()
	l.tls = true
	l.mu.Unlock()
	return nil
}
