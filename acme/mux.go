package acme

import (
	"container/list"
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/accept"
)

const (
	// defaultHandshakeTimeout bounds a TLS handshake on port 443. Mobile
	// clients on poor links need a few seconds; a client that needs more
	// is more likely holding a slot on purpose.
	defaultHandshakeTimeout = 10 * time.Second
	// defaultMaxHandshakes bounds handshakes in flight, so a flood of
	// clients that never finish cannot exhaust memory or goroutines;
	// beyond it the oldest handshake in flight is aborted to make room,
	// so that whoever fills the slots first cannot keep others out.
	defaultMaxHandshakes = 1024
)

// Mux shares one TLS listener (port 443) between HTTPS, IMAP and
// submission, routed by the ALPN protocol the client negotiated: "imap"
// goes to IMAP, "smtp" to SMTP, anything else (h2, http/1.1, none) to
// HTTPS. TLS-ALPN-01 validation handshakes ("acme-tls/1") are answered by
// the certificate callback and closed (RFC 8737 section 3).
//
// The listeners it returns yield *tls.Conn with the handshake done, so a
// server that looks for *tls.Conn treats the connection as TLS, and
// http.Server sees the negotiated protocol.
type Mux struct {
	// HandshakeTimeout bounds each handshake and the wait for a route's
	// server to accept the connection; default 10s. Set before Serve.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds handshakes in flight; default 1024. A new
	// connection beyond it aborts the oldest handshake in flight. Set
	// before Serve.
	MaxHandshakes int
	// OnHandshakeError, if set, hears of every failed handshake (for
	// metrics: a client refusing our certificate shows here). Set before
	// Serve.
	OnHandshakeError func(error)

	mu       sync.Mutex
	inFlight list.List // of net.Conn handshaking, oldest first

	ln  net.Listener
	cfg *tls.Config

	imap, smtp, https *routeListener

	ctx       context.Context // cancelled by Close, aborts handshakes in flight
	cancel    context.CancelFunc
	closeOnce sync.Once
	closeErr  error
}

// NewMux returns a Mux that accepts from ln and handshakes with cfg
// (usually Manager.TLSConfig()). cfg must list "imap" and "smtp" in
// NextProtos for those routes to be reachable.
func NewMux(ln net.Listener, cfg *tls.Config) *Mux {
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mux{ln: ln, cfg: cfg, ctx: ctx, cancel: cancel}
	m.imap = newRouteListener(m)
	m.smtp = newRouteListener(m)
	m.https = newRouteListener(m)
	return m
}

// IMAP returns the listener of connections that negotiated "imap".
func (m *Mux) IMAP() net.Listener { return m.imap }

// SMTP returns the listener of connections that negotiated "smtp".
func (m *Mux) SMTP() net.Listener { return m.smtp }

// HTTPS returns the listener of all other connections.
func (m *Mux) HTTPS() net.Listener { return m.https }

// Serve accepts connections until Close, handshaking each in its own
// goroutine so a slow client cannot stall the others. It returns nil after
// Close and the listener's error otherwise.
func (m *Mux) Serve() error {
	timeout := m.HandshakeTimeout
	if timeout <= 0 {
		timeout = defaultHandshakeTimeout
	}
	limit := m.MaxHandshakes
	if limit <= 0 {
		limit = defaultMaxHandshakes
	}
	retry := accept.Retry{Done: m.ctx.Done()}
	for {
		c, err := retry.Accept(m.ln)
		if err != nil {
			if m.ctx.Err() != nil {
				return nil
			}
			return err
		}
		m.mu.Lock()
		if m.inFlight.Len() >= limit {
			// Its goroutine ends at once: the handshake fails.
			m.inFlight.Remove(m.inFlight.Front()).(net.Conn).Close()
		}
		e := m.inFlight.PushBack(c)
		m.mu.Unlock()
		go m.handle(c, timeout, e)
	}
}

func (m *Mux) handle(c net.Conn, timeout time.Duration, e *list.Element) {
	deadline := time.Now().Add(timeout)
	// The context lets Close abort handshakes in flight; the conn deadline
	// also bounds our writes to a client that stopped reading.
	c.SetDeadline(deadline)
	tc := tls.Server(c, m.cfg)
	ctx, cancel := context.WithDeadline(m.ctx, deadline)
	err := tc.HandshakeContext(ctx)
	cancel()
	m.mu.Lock()
	m.inFlight.Remove(e) // a no-op if it was aborted
	m.mu.Unlock()
	if err != nil {
		c.Close()
		if m.OnHandshakeError != nil && m.ctx.Err() == nil {
			m.OnHandshakeError(err)
		}
		return
	}
	var route *routeListener
	switch tc.ConnectionState().NegotiatedProtocol {
	case ALPNACME:
		// The validation server only needed the certificate.
		tc.Close()
		return
	case ALPNIMAP:
		route = m.imap
	case ALPNSMTP:
		route = m.smtp
	default:
		route = m.https
	}
	// The server behind the route sets its own deadlines.
	c.SetDeadline(time.Time{})
	route.deliver(tc, timeout)
}

// Close stops Serve, closes the listener and the three route listeners,
// and aborts handshakes in flight. Connections already handed to servers
// are theirs to close.
func (m *Mux) Close() error {
	m.closeOnce.Do(func() {
		m.cancel()
		m.closeErr = m.ln.Close()
		m.imap.Close()
		m.smtp.Close()
		m.https.Close()
	})
	return m.closeErr
}

// routeListener is a net.Listener fed by the Mux.
type routeListener struct {
	mux       *Mux
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newRouteListener(m *Mux) *routeListener {
	return &routeListener{mux: m, conns: make(chan net.Conn), done: make(chan struct{})}
}

// deliver hands c to the route's Accept. If nobody accepts within timeout
// (no server on this route, or one that is overloaded) c is closed rather
// than held forever.
func (l *routeListener) deliver(c net.Conn, timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	case <-t.C:
		c.Close()
	}
}

func (l *routeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close closes this route only; its connections are refused from now on.
func (l *routeListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *routeListener) Addr() net.Addr { return l.mux.ln.Addr() }
