package relay

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/mailbox/imapext/lifecycle"
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

	// ProveWithinSeconds is how long a client has, from connect, to prove
	// itself: on port 25 a MAIL command (after EHLO), on IMAP and
	// submission a successful login, on HTTPS and HTTP a complete request
	// (an HTTP connection idle between requests has it again). A client
	// that has not is closed; 0 means no deadline. While it has not, a
	// newcomer that finds a cap reached takes its slot (oldest first),
	// instead of being refused.
	ProveWithinSeconds int `toml:"prove_within_seconds"`
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
		ProveWithinSeconds: 10,
	}
}

func (l ConnLimits) validate() error {
	for _, v := range []int{l.IMAP, l.IMAPPerIP, l.Submission, l.SubmissionPerIP, l.SMTP, l.SMTPPerIP, l.HTTPS, l.HTTPSPerIP, l.ProveWithinSeconds} {
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

// connLimiter counts the open connections of one protocol. The ones that
// have not yet proven themselves (see ConnLimits.ProveWithinSeconds) are
// also kept in order of arrival, in total and per address: when a cap is
// reached, the oldest of them gives its slot to the newcomer. A proven
// connection (logged in, in a mail transaction, in a request) is never
// taken this way.
type connLimiter struct {
	name         string
	total, perIP int

	mu   sync.Mutex
	n    int
	byIP map[string]*ipSlots // at most one entry per open connection
	idle list.List           // of *slot, unproven, oldest first

	refused    atomic.Int64
	evicted    atomic.Int64
	lastLogged atomic.Int64 // unix seconds of the last "cap reached" log line
}

type ipSlots struct {
	n    int
	idle list.List // of *slot, unproven, oldest first
}

// slot is one connection's place in its limiter.
type slot struct {
	lim     *connLimiter
	key     string
	conn    net.Conn // the raw connection, closed on eviction
	id      string   // its key in connLimits.byAddr
	gone    bool     // released or evicted
	elem    *list.Element
	ipElem  *list.Element
	timer   *time.Timer
	timeout time.Duration
}

func newConnLimiter(name string, total, perIP int) *connLimiter {
	return &connLimiter{name: name, total: total, perIP: perIP, byIP: map[string]*ipSlots{}}
}

// acquire takes a slot for conn from key. When a cap is reached, the
// oldest unproven connection under that cap (from the same address for
// the per-address cap) is returned as the victim to close, and its slot
// is the newcomer's; with none to take, acquire fails with the cap that
// was ("total" or "per-ip").
func (l *connLimiter) acquire(key string, conn net.Conn) (sl *slot, victim *slot, which string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ip := l.byIP[key]
	switch {
	case l.perIP > 0 && ip != nil && ip.n >= l.perIP:
		if ip.idle.Len() == 0 {
			return nil, nil, "per-ip"
		}
		victim = ip.idle.Front().Value.(*slot)
	case l.total > 0 && l.n >= l.total:
		if l.idle.Len() == 0 {
			return nil, nil, "total"
		}
		victim = l.idle.Front().Value.(*slot)
	}
	if victim != nil {
		l.drop(victim)
		l.evicted.Add(1)
		ip = l.byIP[key]
	}
	if ip == nil {
		ip = &ipSlots{}
		l.byIP[key] = ip
	}
	sl = &slot{lim: l, key: key, conn: conn}
	l.n++
	ip.n++
	sl.elem = l.idle.PushBack(sl)
	sl.ipElem = ip.idle.PushBack(sl)
	return sl, victim, ""
}

// drop gives sl's place back; l.mu is held.
func (l *connLimiter) drop(sl *slot) {
	if sl.gone {
		return
	}
	sl.gone = true
	l.n--
	ip := l.byIP[sl.key]
	if sl.elem != nil {
		l.idle.Remove(sl.elem)
		ip.idle.Remove(sl.ipElem)
		sl.elem, sl.ipElem = nil, nil
	}
	if ip.n--; ip.n <= 0 {
		delete(l.byIP, sl.key)
	}
}

func (l *connLimiter) release(sl *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drop(sl)
}

// prove marks sl as proven: no longer evictable nor under the deadline.
func (l *connLimiter) prove(sl *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sl.gone || sl.elem == nil {
		return
	}
	l.idle.Remove(sl.elem)
	l.byIP[sl.key].idle.Remove(sl.ipElem)
	sl.elem, sl.ipElem = nil, nil
	if sl.timer != nil {
		sl.timer.Stop()
	}
}

// unprove puts a proven connection back among the evictable ones, as the
// newest, with a fresh deadline (an HTTP connection idle between
// requests).
func (l *connLimiter) unprove(sl *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sl.gone || sl.elem != nil {
		return
	}
	sl.elem = l.idle.PushBack(sl)
	sl.ipElem = l.byIP[sl.key].idle.PushBack(sl)
	if sl.timer != nil {
		sl.timer.Reset(sl.timeout)
	}
}

// expire closes sl when its deadline passes unproven.
func (l *connLimiter) expire(sl *slot) {
	l.mu.Lock()
	unproven := !sl.gone && sl.elem != nil
	l.mu.Unlock()
	if unproven {
		sl.conn.Close()
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
	// proveWithin is ConnLimits.ProveWithinSeconds; 0 means no deadline.
	proveWithin time.Duration

	// byAddr finds a connection's slot from the addresses its protocol
	// server sees (the TLS and IMAP layers wrap the raw connection).
	mu     sync.Mutex
	byAddr map[string]*slot
	// timeoutCap is Options.ClientTimeoutCap.
	timeoutCap time.Duration
}

func newConnLimits(c ConnLimits, timeoutCap time.Duration) *connLimits {
	return &connLimits{
		imap:       newConnLimiter("imap", c.IMAP, c.IMAPPerIP),
		submission: newConnLimiter("submission", c.Submission, c.SubmissionPerIP),
		smtp:       newConnLimiter("smtp", c.SMTP, c.SMTPPerIP),
		https:      newConnLimiter("https", c.HTTPS, c.HTTPSPerIP),
		http:       newConnLimiter("http", c.HTTPS, c.HTTPSPerIP),
		refusing:   make(chan struct{}, maxRefusing),

		proveWithin: time.Duration(c.ProveWithinSeconds) * time.Second,
		byAddr:      map[string]*slot{},
		timeoutCap:  timeoutCap,
	}
}

func connID(local, remote net.Addr) string {
	if local == nil || remote == nil {
		return ""
	}
	return local.String() + "|" + remote.String()
}

func (ls *connLimits) lookup(local, remote net.Addr) *slot {
	id := connID(local, remote)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.byAddr[id]
}

// proved tells the limits that the connection between local and remote
// proved itself: logged in, began a mail transaction or sent a complete
// request. It is not evicted for a newcomer from now on.
func (ls *connLimits) proved(local, remote net.Addr) {
	if sl := ls.lookup(local, remote); sl != nil {
		sl.lim.prove(sl)
	}
}

// idleAgain puts a proven connection back among the evictable ones.
func (ls *connLimits) idleAgain(local, remote net.Addr) {
	if sl := ls.lookup(local, remote); sl != nil {
		sl.lim.unprove(sl)
	}
}

type connKey struct{}

// withConn keeps an HTTP request's connection in its context
// (http.Server.ConnContext), for provedByRequest.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// provedByRequest marks a connection proven once a complete request
// header arrived on it.
func (ls *connLimits) provedByRequest(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			ls.proved(c.LocalAddr(), c.RemoteAddr())
		}
		h.ServeHTTP(w, r)
	})
}

// httpConnState makes an HTTP connection idle between requests
// evictable again, with a fresh deadline.
func (ls *connLimits) httpConnState(c net.Conn, st http.ConnState) {
	if st == http.StateIdle {
		ls.idleAgain(c.LocalAddr(), c.RemoteAddr())
	}
}

func (ls *connLimits) register(sl *slot) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.byAddr[sl.id] = sl
}

func (ls *connLimits) unregister(sl *slot) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.byAddr[sl.id] == sl {
		delete(ls.byAddr, sl.id)
	}
}

// limitListener wraps the raw TCP listener of a port (below any TLS), so
// that every protocol on it is counted from accept to close, and a
// connection over a cap never reaches the protocol server.
func (s *Server) limitListener(name string, ln net.Listener) net.Listener {
	ls := s.limits
	var lim *connLimiter
	var refuse func(net.Conn)
	tlsConf := s.clientTLS()
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

// connSample is a listener that says what type of connection its Accept
// returns, so that Start can check it before serving (checkIMAPConns).
type connSample interface {
	// sampleConn returns a value (possibly a nil pointer) of that type.
	sampleConn() net.Conn
}

func (l *limitListener) sampleConn() net.Conn { return (*limitedConn)(nil) }

// checkIMAPConns fails when the connections ln (an IMAP listener beneath
// TLS) yields are not what the IMAP layer needs to let the goroutine of a
// hibernated connection go (lifecycle.Socket): a wrapper that lacks a
// method would turn that off silently, costing a goroutine per idle
// client.
func checkIMAPConns(name string, ln net.Listener) error {
	cs, ok := ln.(connSample)
	if !ok {
		return fmt.Errorf("%s listener: %T does not say what its connections are (sampleConn), so the IMAP layer's needs cannot be checked", name, ln)
	}
	if err := lifecycle.CheckSocket(cs.sampleConn()); err != nil {
		return fmt.Errorf("%s listener: %w", name, err)
	}
	return nil
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ls := l.s.limits
		sl, victim, which := l.lim.acquire(ipKey(c.RemoteAddr()), c)
		if victim != nil {
			ls.unregister(victim)
			victim.conn.Close()
			l.logEviction(which)
		}
		if sl != nil {
			sl.id = connID(c.LocalAddr(), c.RemoteAddr())
			sl.timeout = ls.proveWithin
			ls.register(sl)
			if sl.timeout > 0 {
				// Under l.lim.mu, so that prove sees the timer.
				l.lim.mu.Lock()
				sl.timer = time.AfterFunc(sl.timeout, func() { l.lim.expire(sl) })
				l.lim.mu.Unlock()
			}
			release := func() {
				ls.unregister(sl)
				l.lim.release(sl)
				if sl.timer != nil {
					sl.timer.Stop()
				}
			}
			return &limitedConn{Conn: c, release: release, timeoutCap: ls.timeoutCap}, nil
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

// logEviction tells the operator that connections which had not proven
// themselves were closed to make room, at most once a minute per protocol.
func (l *limitListener) logEviction(_ string) {
	now := time.Now().Unix()
	last := l.lim.lastLogged.Load()
	if now-last < 60 || !l.lim.lastLogged.CompareAndSwap(last, now) {
		return
	}
	l.s.log.Warn("connection cap reached: closed the oldest connection that had not logged in", "protocol", l.lim.name,
		"open", l.lim.open(), "evicted_total", l.lim.evicted.Load())
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
	once       sync.Once
	release    func()
	timeoutCap time.Duration // connLimits.timeoutCap
	closed     atomic.Bool
	onClose    atomic.Pointer[func()]
	// gate is set while a TLS handshake on c computes under the relay's
	// handshakeGate; held, while c holds one of its slots.
	gate atomic.Pointer[handshakeGate]
	held atomic.Bool
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	c.closed.Store(true)
	if g := c.gate.Load(); g != nil {
		c.letGo(g)
	}
	if f := c.onClose.Swap(nil); f != nil {
		(*f)()
	}
	return err
}

// limitedConn is what the IMAP layer needs beneath TLS to let the
// goroutine of a hibernated connection go; Start checks it too
// (checkIMAPConns), for wrappers added later.
var _ lifecycle.Socket = (*limitedConn)(nil)

// OnClose has f called once c is closed (lifecycle.Socket: a hibernated
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

// ClampDeadline returns the deadline c sets for t (lifecycle.Socket: a
// connection waiting without a goroutine keeps the time itself).
func (c *limitedConn) ClampDeadline(t time.Time) time.Time { return c.clamp(t) }

func (c *limitedConn) clamp(t time.Time) time.Time {
	if d := c.timeoutCap; d > 0 {
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
