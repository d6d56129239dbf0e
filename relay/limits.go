package relay

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/acme"
)

// ConnLimits caps simultaneous client connections per protocol, in total
// and per client address. A connection over a cap gets the protocol's
// "too many connections" answer (IMAP BYE, SMTP 421, HTTP 503) and is
// closed. 0 means no cap.
//
// IPv6 clients are counted per /64, the block one subscriber usually
// gets, so that a single host cannot dodge the per-address cap by
// rotating addresses.
type ConnLimits struct {
	// IMAP counts ports 993 and 143 together.
	IMAP      int `toml:"imap"`
	IMAPPerIP int `toml:"imap_per_ip"`
	// Submission counts ports 465 and 587 together.
	Submission      int `toml:"submission"`
	SubmissionPerIP int `toml:"submission_per_ip"`
	// SMTP is inbound mail on port 25.
	SMTP      int `toml:"smtp"`
	SMTPPerIP int `toml:"smtp_per_ip"`
	// HTTPS is port 443, whatever ALPN routes a connection to (web,
	// IMAP, submission); port 80 has its own count with the same caps.
	HTTPS      int `toml:"https"`
	HTTPSPerIP int `toml:"https_per_ip"`
}

// DefaultConnLimits suit a relay with thousands of users: every Delta Chat
// device keeps one or two IMAP connections open and submits now and then;
// a household or a small office behind one address stays far below the
// per-address caps.
func DefaultConnLimits() ConnLimits {
	return ConnLimits{
		IMAP: 20000, IMAPPerIP: 50,
		Submission: 5000, SubmissionPerIP: 20,
		SMTP: 2000, SMTPPerIP: 20,
		HTTPS: 10000, HTTPSPerIP: 100,
	}
}

func (l ConnLimits) validate() error {
	for _, v := range []int{l.IMAP, l.IMAPPerIP, l.Submission, l.SubmissionPerIP, l.SMTP, l.SMTPPerIP, l.HTTPS, l.HTTPSPerIP} {
		if v < 0 {
			return errors.New("config: limits must not be negative (0 means no limit)")
		}
	}
	return nil
}

// Protocol answers for a connection over a cap.
const (
	imapTooMany = "* BYE Too many connections, try again later\r\n"
	// RFC 5321 section 3.8: a server may answer 421 and close instead of
	// the greeting.
	smtpTooMany = "421 4.7.0 Too many connections, try again later\r\n"
	httpTooMany = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nRetry-After: 60\r\nContent-Length: 37\r\n\r\nToo many connections, try again later"
)

const (
	// refuseTimeout bounds the handshake and the write of a refusal.
	refuseTimeout = 5 * time.Second
	// maxRefusing bounds refusals in flight; beyond it a connection is
	// closed without an answer, so a flood costs at most this many
	// goroutines and TLS handshakes.
	maxRefusing = 64
)

// connLimiter counts the open connections of one protocol.
type connLimiter struct {
	name         string
	total, perIP int

	mu   sync.Mutex
	n    int
	byIP map[string]int

	refused    atomic.Int64
	lastLogged atomic.Int64 // unix seconds of the last "cap reached" log line
}

func newConnLimiter(name string, total, perIP int) *connLimiter {
	return &connLimiter{name: name, total: total, perIP: perIP, byIP: map[string]int{}}
}

// acquire takes a slot for a connection from key; false when a cap is
// reached, with the cap that was ("total" or "per-ip").
func (l *connLimiter) acquire(key string) (bool, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total > 0 && l.n >= l.total {
		return false, "total"
	}
	if l.perIP > 0 && l.byIP[key] >= l.perIP {
		return false, "per-ip"
	}
	l.n++
	l.byIP[key]++
	return true, ""
}

func (l *connLimiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.byIP[key]--; l.byIP[key] <= 0 {
		delete(l.byIP, key)
	}
}

// open is the number of connections holding a slot.
func (l *connLimiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// ipKey is what the per-address caps count: the IP, or for IPv6 its /64.
func ipKey(addr net.Addr) string {
	var ip net.IP
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip = a.IP
	default:
		ip = net.ParseIP(hostOf(addr))
	}
	if ip == nil {
		return hostOf(addr)
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// connLimits are the server's limiters and the refusal machinery shared by
// all listeners.
type connLimits struct {
	imap, submission, smtp, https, http *connLimiter
	refusing                            chan struct{}
	// maxWait, when set, shortens every read and write deadline of a
	// limited connection to at most this long: tests use it to make
	// slow-client timeouts fast.
	maxWait atomic.Int64
}

func newConnLimits(c ConnLimits) *connLimits {
	return &connLimits{
		imap:       newConnLimiter("imap", c.IMAP, c.IMAPPerIP),
		submission: newConnLimiter("submission", c.Submission, c.SubmissionPerIP),
		smtp:       newConnLimiter("smtp", c.SMTP, c.SMTPPerIP),
		https:      newConnLimiter("https", c.HTTPS, c.HTTPSPerIP),
		http:       newConnLimiter("http", c.HTTPS, c.HTTPSPerIP),
		refusing:   make(chan struct{}, maxRefusing),
	}
}

// limitListener wraps the raw TCP listener of a port (below any TLS), so
// that every protocol on it is counted from accept to close, and a
// connection over a cap never reaches the protocol server.
func (s *Server) limitListener(name string, ln net.Listener) net.Listener {
	ls := s.limits
	var lim *connLimiter
	var refuse func(net.Conn)
	tlsConf := s.certs.TLSConfig()
	switch name {
	case "imaps":
		lim, refuse = ls.imap, refuseTLS(tlsConf, imapTooMany)
	case "imap":
		lim, refuse = ls.imap, refusePlain(imapTooMany)
	case "submissions":
		lim, refuse = ls.submission, refuseTLS(tlsConf, smtpTooMany)
	case "submission":
		lim, refuse = ls.submission, refusePlain(smtpTooMany)
	case "smtp":
		lim, refuse = ls.smtp, refusePlain(smtpTooMany)
	case "https":
		lim, refuse = ls.https, refuseALPN(tlsConf)
	case "http":
		lim, refuse = ls.http, refusePlain(httpTooMany)
	default:
		return ln
	}
	return &limitListener{Listener: ln, s: s, lim: lim, refuse: refuse}
}

type limitListener struct {
	net.Listener
	s      *Server
	lim    *connLimiter
	refuse func(net.Conn)
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := ipKey(c.RemoteAddr())
		ok, which := l.lim.acquire(key)
		if ok {
			return &limitedConn{Conn: c, release: func() { l.lim.release(key) }, maxWait: &l.s.limits.maxWait}, nil
		}
		l.lim.refused.Add(1)
		l.logRefusal(which)
		select {
		case l.s.limits.refusing <- struct{}{}:
			go func() {
				defer func() { <-l.s.limits.refusing }()
				c.SetDeadline(time.Now().Add(refuseTimeout))
				l.refuse(c)
				c.Close()
			}()
		default:
			c.Close()
		}
	}
}

// logRefusal tells the operator a cap was reached, at most once a minute
// per protocol; client addresses are not logged.
func (l *limitListener) logRefusal(which string) {
	now := time.Now().Unix()
	last := l.lim.lastLogged.Load()
	if now-last < 60 || !l.lim.lastLogged.CompareAndSwap(last, now) {
		return
	}
	l.s.log.Warn("connection refused: too many connections", "protocol", l.lim.name, "cap", which,
		"open", l.lim.open(), "refused_total", l.lim.refused.Load())
}

func refusePlain(answer string) func(net.Conn) {
	return func(c net.Conn) { c.Write([]byte(answer)) }
}

// refuseTLS answers over TLS on an implicit-TLS port, where a plain text
// answer would only be a handshake error to the client.
func refuseTLS(conf *tls.Config, answer string) func(net.Conn) {
	return func(c net.Conn) {
		tc := tls.Server(c, conf)
		if tc.Handshake() == nil {
			tc.Write([]byte(answer))
		}
	}
}

// refuseALPN answers on port 443 in the protocol the client chose.
func refuseALPN(conf *tls.Config) func(net.Conn) {
	return func(c net.Conn) {
		tc := tls.Server(c, conf)
		if tc.Handshake() != nil {
			return
		}
		switch tc.ConnectionState().NegotiatedProtocol {
		case acme.ALPNIMAP:
			tc.Write([]byte(imapTooMany))
		case acme.ALPNSMTP:
			tc.Write([]byte(smtpTooMany))
		case "", "http/1.1":
			tc.Write([]byte(httpTooMany))
		}
	}
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
	maxWait *atomic.Int64
	closed  atomic.Bool
	onClose atomic.Pointer[func()]
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	c.closed.Store(true)
	if f := c.onClose.Swap(nil); f != nil {
		(*f)()
	}
	return err
}

// OnClose has f called once c is closed (imapext.ClosingConn: a hibernated
// IMAP connection waits without a goroutine, and must learn of a close
// from here).
func (c *limitedConn) OnClose(f func()) {
	c.onClose.Store(&f)
	if c.closed.Load() {
		if f := c.onClose.Swap(nil); f != nil {
			(*f)()
		}
	}
}

// SyscallConn reaches the socket beneath (the IMAP layer waits on it while
// a connection idles); limitedConn holds no bytes of its own.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// ClampDeadline returns the deadline c sets for t (imapext: a connection
// waiting without a goroutine keeps the time itself).
func (c *limitedConn) ClampDeadline(t time.Time) time.Time { return c.clamp(t) }

func (c *limitedConn) clamp(t time.Time) time.Time {
	if d := time.Duration(c.maxWait.Load()); d > 0 {
		if limit := time.Now().Add(d); t.IsZero() || t.After(limit) {
			return limit
		}
	}
	return t
}

func (c *limitedConn) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *limitedConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.clamp(t))
}
func (c *limitedConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t))
}

// ConnStats is the number of open connections per protocol, for status
// and tests.
func (s *Server) ConnStats() map[string]int {
	ls := s.limits
	return map[string]int{
		"imap": ls.imap.open(), "submission": ls.submission.open(), "smtp": ls.smtp.open(),
		"https": ls.https.open(), "http": ls.http.open(),
	}
}
