package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// The SMTP layer in front of go-smtp, on every SMTP connection (25, 465,
// 587, 443 by ALPN). It answers VRFY the way the reference relay's
// Postfix does, "252 2.0.0" (SPEC section 5): go-smtp answers VRFY itself
// ("252 2.5.0 ...") and offers no hook for it.
//
// go-smtp takes a connection for TLS only when it is a *tls.Conn, so
// nothing could read its plaintext between that TLS and go-smtp's parser.
// The layer therefore owns TLS, and each service is two go-smtp servers:
//
//   - pre serves connections before STARTTLS (587, 25): it offers STARTTLS
//     in EHLO and refuses AUTH, as go-smtp does without TLS. The layer
//     answers STARTTLS itself (go-smtp never sees it), makes the handshake
//     and hands the TLS connection to post, as a fresh SMTP session
//     (RFC 3207 section 4.2: the client starts over with EHLO), whose
//     greeting the layer drops.
//   - post serves TLS connections: implicit TLS (465, 443) and STARTTLS
//     ones. It sees them as plain net.Conns, so it allows AUTH
//     (AllowInsecureAuth) and offers no STARTTLS; the layer hands it TLS
//     connections only, and the sessions check TLS again (connTLS).
//
// The layer reads the client one line at a time and hands go-smtp one
// line per Read. go-smtp reads again only after it has answered every
// line it was given (it handles commands in order, in one goroutine), so
// an answer of the layer's never overtakes one of go-smtp's, pipelining
// or not. Message bodies (after a 354 reply to DATA, until the line "."),
// BDAT chunks and AUTH continuation lines (after a 334) pass through
// uninterpreted, framed exactly as go-smtp frames them.
type smtpService struct {
	pre, post *smtp.Server
	starttls  *tls.Config // the STARTTLS handshake's config
	handoff   *handoffListener
	startPost sync.Once
}

const (
	smtpVRFYReply     = "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
	smtpStartTLSReply = "220 2.0.0 Ready to start TLS\r\n"
	// smtpMaxLine is the longest command line the layer reads whole;
	// go-smtp refuses a line longer than its MaxLineLength (4096) anyway.
	smtpMaxLine = 8192
)

// errOwnTLS is what go-smtp's own STARTTLS would get: it never runs one,
// since the layer answers every STARTTLS command.
var errOwnTLS = errors.New("smtp: STARTTLS is answered in front of go-smtp")

// newSMTPService makes the two servers of a service; configure sets the
// options both share.
func newSMTPService(backend smtp.Backend, starttls *tls.Config, configure func(*smtp.Server)) *smtpService {
	pre := smtp.NewServer(backend)
	configure(pre)
	// Non-nil, so that EHLO offers STARTTLS before TLS; never used.
	pre.TLSConfig = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, errOwnTLS }}
	pre.AllowInsecureAuth = false
	post := smtp.NewServer(backend)
	configure(post)
	post.TLSConfig = nil
	post.AllowInsecureAuth = true // every connection post sees is TLS
	return &smtpService{pre: pre, post: post, starttls: starttls, handoff: newHandoffListener()}
}

// Serve serves ln: TLS connections (*tls.Conn, from a TLS listener or the
// 443 mux) go to post, plain ones to pre.
func (s *smtpService) Serve(ln net.Listener) error {
	s.startPost.Do(func() { go s.post.Serve(s.handoff) })
	return s.pre.Serve(&frontListener{Listener: ln, svc: s})
}

// Shutdown stops both servers and waits for their connections.
func (s *smtpService) Shutdown(ctx context.Context) error {
	return errors.Join(s.pre.Shutdown(ctx), s.post.Shutdown(ctx))
}

// frontListener wraps every connection of ln in the layer.
type frontListener struct {
	net.Listener
	svc *smtpService
}

func (l *frontListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc, ok := c.(*tls.Conn)
		if !ok {
			return newFrontConn(c, l.svc), nil
		}
		if !l.svc.handoff.give(newFrontConn(tc, nil)) {
			tc.Close()
		}
	}
}

// connTLS is the TLS state of an SMTP connection, whoever made its TLS.
func connTLS(c *smtp.Conn) (tls.ConnectionState, bool) {
	if st, ok := c.TLSConnectionState(); ok {
		return st, true
	}
	if f, ok := c.Conn().(*frontConn); ok && f.tls != nil {
		return f.tls.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// frontConn is one connection as go-smtp sees it.
type frontConn struct {
	net.Conn              // the transport: TCP, or TLS over it
	tls      *tls.Conn    // the TLS transport, if it is one
	svc      *smtpService // answers STARTTLS when set (plain connections)
	r        *bufio.Reader
	chunkBuf []byte // BDAT bytes being handed to go-smtp
	pending  []byte // client bytes for go-smtp's next Read

	midLine bool   // the last bytes handed on did not end a line
	chunk   uint64 // BDAT chunk bytes still to pass on
	body    int    // dataState while go-smtp reads a DATA body, 0 otherwise
	// The reply go-smtp writes next is to DATA (354: a body follows) or
	// to AUTH (334: a continuation line follows).
	afterData, afterAuth bool
	continuation         bool // the next line answers a 334
	// greeting: drop go-smtp's greeting, written on a connection handed
	// over after STARTTLS.
	greeting bool
	// over: the connection went on, TLS, to post (or broke in the
	// handshake); this side reads EOF and does not close it. Close may
	// come from another goroutine (a shutdown).
	over atomic.Bool
	// shaken: the TLS handshake was made (implicit TLS makes it on the
	// first read or write, within smtpHandshakeTimeout).
	shaken bool
}

// smtpHandshakeTimeout bounds a TLS handshake, implicit or after STARTTLS.
const smtpHandshakeTimeout = time.Minute

// handshake makes an implicit-TLS connection's handshake within its
// deadline, before go-smtp's greeting or first read would start it with
// no read deadline.
func (f *frontConn) handshake() error {
	if f.tls == nil || f.shaken {
		return nil
	}
	f.shaken = true
	ctx, cancel := context.WithTimeout(context.Background(), smtpHandshakeTimeout)
	defer cancel()
	return f.tls.HandshakeContext(ctx)
}

func newFrontConn(c net.Conn, svc *smtpService) *frontConn {
	f := &frontConn{Conn: c, svc: svc, r: bufio.NewReaderSize(c, smtpMaxLine)}
	f.tls, _ = c.(*tls.Conn)
	return f
}

func (f *frontConn) Read(p []byte) (int, error) {
	if err := f.handshake(); err != nil {
		return 0, err
	}
	for len(f.pending) == 0 {
		if f.over.Load() {
			return 0, io.EOF
		}
		if err := f.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	return n, nil
}

// next reads the next piece of what the client sent: a chunk's bytes, a
// body line, or a command line, which it may answer itself.
func (f *frontConn) next() error {
	if f.chunk > 0 {
		// Read hands pending out whole before it calls next again, so
		// one buffer serves every chunk.
		if f.chunkBuf == nil {
			f.chunkBuf = make([]byte, 32<<10)
		}
		n, err := f.r.Read(f.chunkBuf[:min(f.chunk, uint64(len(f.chunkBuf)))])
		f.pending = f.chunkBuf[:n]
		f.chunk -= uint64(n)
		if n > 0 {
			return nil
		}
		return err
	}
	line, err := f.r.ReadSlice('\n')
	if len(line) == 0 {
		return err
	}
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
		// The last bytes before the end: go-smtp has them as they are.
		f.pending = bytes.Clone(line)
		return nil
	}
	atStart := !f.midLine
	f.midLine = line[len(line)-1] != '\n'
	if f.body != 0 {
		// A body line: the reader's buffer stays as it is until Read has
		// handed the whole line out, so no copy per line.
		f.pending = line
		f.scanBody(line)
		return nil
	}
	f.pending = bytes.Clone(line)
	switch {
	case !atStart:
	case f.continuation:
		f.continuation = false
	default:
		return f.command(line)
	}
	return nil
}

// The states of go-smtp's DATA reader (its data.go), mirrored so that the
// layer finds the end of a body exactly where go-smtp does: "." alone on
// a line after CRLF, ended by CRLF.
const (
	bodyOff = iota
	bodyLineStart
	bodyDot
	bodyDotCR
	bodyCR
	bodyMiddle
)

func (f *frontConn) scanBody(b []byte) {
	for _, c := range b {
		switch f.body {
		case bodyLineStart:
			switch c {
			case '.':
				f.body = bodyDot
			case '\r':
				f.body = bodyCR
			default:
				f.body = bodyMiddle
			}
		case bodyDot:
			f.body = bodyMiddle
			if c == '\r' {
				f.body = bodyDotCR
			}
		case bodyDotCR:
			if c == '\n' {
				f.body = bodyOff
				return
			}
			f.body = bodyMiddle
		case bodyCR:
			switch c {
			case '\n':
				f.body = bodyLineStart
			case '\r':
			default:
				f.body = bodyMiddle
			}
		case bodyMiddle:
			if c == '\r' {
				f.body = bodyCR
			}
		}
	}
}

// command looks at one command line: VRFY and (before TLS) STARTTLS are
// answered here; the rest goes to go-smtp, which sees the verb as its
// parseCmd does.
func (f *frontConn) command(line []byte) error {
	verb, arg := smtpVerb(string(line))
	switch verb {
	case "VRFY":
		// RFC 5321 section 3.5.3: 252, cannot verify but will try.
		f.pending = nil
		_, err := io.WriteString(f.Conn, smtpVRFYReply)
		return err
	case "STARTTLS":
		if f.svc != nil {
			f.pending = nil
			return f.startTLS()
		}
	case "DATA":
		f.afterData = true
	case "AUTH":
		f.afterAuth = true
	case "BDAT":
		f.chunk = bdatSize(arg)
	}
	return nil
}

// startTLS answers STARTTLS, makes the handshake and hands the connection
// to the post server; go-smtp's session on this side ends (EOF).
func (f *frontConn) startTLS() error {
	f.over.Store(true)
	// RFC 3207 section 4.2: nothing the client sent before TLS counts
	// after it. A client that pipelined after STARTTLS is cut off, so
	// that no cleartext bytes are taken as sent over TLS.
	if f.r.Buffered() > 0 {
		f.Conn.Close()
		return io.EOF
	}
	if _, err := io.WriteString(f.Conn, smtpStartTLSReply); err != nil {
		f.Conn.Close()
		return io.EOF
	}
	tc := tls.Server(f.Conn, f.svc.starttls)
	ctx, cancel := context.WithTimeout(context.Background(), smtpHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		f.Conn.Close()
		return io.EOF
	}
	next := newFrontConn(tc, nil)
	next.greeting, next.shaken = true, true
	if !f.svc.handoff.give(next) {
		tc.Close()
	}
	return io.EOF
}

func (f *frontConn) Write(p []byte) (int, error) {
	if err := f.handshake(); err != nil {
		return 0, err
	}
	n := len(p)
	if f.greeting {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			return n, nil
		}
		f.greeting = false
		if p = p[i+1:]; len(p) == 0 {
			return n, nil
		}
	}
	if f.afterData {
		f.afterData = false
		if bytes.HasPrefix(p, []byte("354")) {
			f.body = bodyLineStart
		}
	}
	if f.afterAuth && bytes.HasPrefix(p, []byte("334")) {
		f.continuation = true // AUTH goes on: 334 again, or a final reply
	} else if f.afterAuth {
		f.afterAuth = false
	}
	if _, err := f.Conn.Write(p); err != nil {
		return 0, err
	}
	return n, nil
}

func (f *frontConn) Close() error {
	if f.over.Load() {
		return nil // handed over, or closed already
	}
	return f.Conn.Close()
}

// smtpVerb is a command line's verb and argument as go-smtp's parseCmd
// reads them: anything starting with STARTTLS is STARTTLS; otherwise a
// four-letter verb alone or followed by a space.
func smtpVerb(line string) (verb, arg string) {
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(strings.ToUpper(line), "STARTTLS") {
		return "STARTTLS", ""
	}
	if len(line) == 4 {
		return strings.ToUpper(line), ""
	}
	if len(line) < 6 || line[4] != ' ' {
		return "", ""
	}
	return strings.ToUpper(line[:4]), strings.TrimSpace(line[5:])
}

// bdatSize is the chunk size go-smtp reads after a BDAT command, 0 when
// it refuses the arguments (and then reads no chunk).
func bdatSize(arg string) uint64 {
	args := strings.Fields(arg)
	if len(args) == 0 || len(args) > 2 || len(args) == 2 && !strings.EqualFold(args[1], "LAST") {
		return 0
	}
	n, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		return 0
	}
	return n
}

// handoffListener is the post server's listener: connections handed to it
// in the process.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoffListener() *handoffListener {
	return &handoffListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return handoffAddr{} }

type handoffAddr struct{}

func (handoffAddr) Network() string { return "handoff" }
func (handoffAddr) String() string  { return "handoff" }
