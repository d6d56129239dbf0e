// Package courier makes one delivery attempt of one message to the
// recipients of one destination domain (SPEC section 6): it finds the
// domain's hosts, POSTs the message to https://<host>/mxdeliv as other
// chatmail relays accept it, and falls back to SMTP with STARTTLS on port
// 25. Courier.Deliver fits queue.Options.Deliver; retries are the queue's.
//
// DKIM: the courier signs every message it sends (when Options.DKIM.Key is
// set), once per attempt, so the queue's spool holds the message as the
// user sent it and a new key or selector applies to mail already queued.
// Callers must not sign too.
//
// TLS: certificates are verified against the host name we looked up (the
// MX host, or the domain for implicit MX and static routes), except for
// IP-literal domains ("[1.2.3.4]") and domains starting with "_", which
// have no publicly trusted certificate: there the connection is still
// encrypted but the certificate is not checked. SMTP without STARTTLS is
// never used.
//
// /mxdeliv, as the chatmail relay's filtermail serves it: POST with header
// X-MAIL-FROM (the envelope sender, absent for the null sender), one
// X-MAIL-TO header per recipient, and the raw message as body. The answer
// is all or nothing: 200 (body: an SMTP success line) when the message was
// taken for every recipient; 400 with an SMTP reply as body ("550 5.1.1
// ...", "523 Encryption Needed ...") when it was refused; 413 ("552 ...")
// when too big; 405 for other methods; anything else comes from something
// that is not a chatmail relay. A refusal carrying a 5xx SMTP reply is
// final: every recipient fails permanently (and is bounced) without
// trying SMTP or another host. Any other non-2xx answer makes us try SMTP,
// which gives a result per recipient; if SMTP cannot be reached, a 4xx
// SMTP reply found in the HTTPS answer is the (temporary) result.
package courier

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/relay/dkim"
	"github.com/chatrelay/chatrelay/relay/queue"
)

// Resolver is the DNS the courier uses; *net.Resolver satisfies it. Tests
// and networks without working DNS plug in their own.
type Resolver interface {
	LookupMX(ctx context.Context, domain string) ([]*net.MX, error)
	LookupHost(ctx context.Context, host string) ([]string, error)
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// NewDNSResolver returns a Resolver that asks the DNS server at addr
// ("ip:port") over UDP and TCP, or the system's resolvers when addr is "".
func NewDNSResolver(addr string) Resolver {
	if addr == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}

// DKIMOptions is how outgoing mail is signed.
type DKIMOptions struct {
	// Key signs; nil means no signature (IP-mode relays have no DKIM).
	Key *dkim.Key
	// Domain is d=, Selector s=.
	Domain, Selector string
}

// Options configure a Courier.
type Options struct {
	// Resolver answers MX and address lookups (default: the system's).
	Resolver Resolver
	// StaticRoutes maps a destination domain to "host[:port]" to connect
	// to instead of its MX, for networks whose DNS is gone. The port, if
	// given, replaces SMTPPort for that route; HTTPS uses HTTPSPort. A
	// route replaces DNS, not the peer's identity: TLS is still verified
	// against the domain.
	StaticRoutes map[string]string
	// HeloName is our host name, said in EHLO.
	HeloName string
	// LocalAddr, if set, is the address outgoing connections come from:
	// an IP-mode peer checks that it matches the [IP] in From.
	LocalAddr net.IP
	// SMTPPort (default 25) and HTTPSPort (default 443) are where peers
	// listen; dev and test relays use other ports.
	SMTPPort, HTTPSPort int
	// RootCAs verifies peers' certificates (default: the system's).
	RootCAs *x509.CertPool
	// DKIM signs every message the courier sends.
	DKIM DKIMOptions
	// DisableMXDeliv skips HTTPS and always uses SMTP.
	DisableMXDeliv bool
	// SMTPStickiness is how long HTTPS is skipped for a host after an
	// SMTP delivery to it succeeded (default 30m, SPEC section 6).
	SMTPStickiness time.Duration
	// DialTimeout bounds one TCP connect (default 30s), CommandTimeout
	// one SMTP reply (default 2m), DataTimeout the reply to the end of
	// DATA (default 10m) and HTTPTimeout one /mxdeliv request (default
	// 2m).
	DialTimeout, CommandTimeout, DataTimeout, HTTPTimeout time.Duration
	// AllowTargets are networks the courier may connect to although they
	// are not public unicast (loopback, RFC 1918, ULA, link-local, CGNAT
	// and the like) or are this machine's own addresses: private
	// federations and tests. Every other such address, whether it comes
	// from an MX, an address record or an address literal, is refused.
	AllowTargets []netip.Prefix
	// OwnAddrs are the relay's own addresses, refused like private ones
	// (default: the addresses of the machine's interfaces).
	OwnAddrs []netip.Addr
	// Now is the clock; tests move it. Defaults to time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Courier delivers messages to other servers. It is safe for concurrent
// use and keeps HTTPS connections to peers open between deliveries.
type Courier struct {
	opts    Options
	log     *slog.Logger
	strict  *http.Client // verifies certificates
	relaxed *http.Client // encrypts without verifying ([IP] and _ domains)

	own []netip.Addr

	mu       sync.Mutex
	smtpOnly map[string]time.Time // host -> skip HTTPS until
}

// New returns a Courier.
func New(opts Options) *Courier {
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if opts.HeloName == "" {
		opts.HeloName = "localhost"
	}
	if opts.SMTPPort == 0 {
		opts.SMTPPort = 25
	}
	if opts.HTTPSPort == 0 {
		opts.HTTPSPort = 443
	}
	if opts.SMTPStickiness <= 0 {
		opts.SMTPStickiness = 30 * time.Minute
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 30 * time.Second
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = 2 * time.Minute
	}
	if opts.DataTimeout <= 0 {
		opts.DataTimeout = 10 * time.Minute
	}
	if opts.HTTPTimeout <= 0 {
		opts.HTTPTimeout = 2 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	routes := make(map[string]string, len(opts.StaticRoutes))
	for d, h := range opts.StaticRoutes {
		routes[strings.ToLower(strings.TrimSuffix(d, "."))] = h
	}
	opts.StaticRoutes = routes
	if opts.OwnAddrs == nil {
		opts.OwnAddrs = InterfaceAddrs()
	}
	c := &Courier{opts: opts, log: opts.Logger.With("part", "courier"), smtpOnly: map[string]time.Time{}}
	for _, ip := range opts.OwnAddrs {
		c.own = append(c.own, ip.Unmap())
	}
	c.strict = c.newHTTPClient(false)
	c.relaxed = c.newHTTPClient(true)
	return c
}

// Close drops idle HTTPS connections.
func (c *Courier) Close() {
	c.strict.CloseIdleConnections()
	c.relaxed.CloseIdleConnections()
}

// target is one host to try for a domain.
type target struct {
	// name identifies the host: in URLs, in TLS verification, and as the
	// key of the SMTP stickiness. An IP for IP-literal domains.
	name string
	// addr, if set, is where to connect instead of resolving name (a
	// static route's host).
	addr     string
	smtpPort int
	// insecure: encrypt but do not verify the certificate.
	insecure bool
}

// permanentError is a failure that retrying will not fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Deliver makes one attempt to deliver the message to rcpts, all of
// domain. It returns one result per recipient.
func (c *Courier) Deliver(ctx context.Context, from, domain string, rcpts []string, body func() (io.ReadCloser, error)) []queue.Result {
	targets, err := c.targets(ctx, domain)
	if err != nil {
		return allFailed(rcpts, err)
	}
	sig, err := c.sign(body)
	if err != nil {
		return allFailed(rcpts, fmt.Errorf("dkim sign: %w", err))
	}
	var (
		lastErr error
		verdict *smtp.SMTPError // an SMTP reply carried by an /mxdeliv refusal
		// refusedAll: every host tried was refused as a target, which
		// retrying will not change.
		refusedAll = true
	)
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		if c.useHTTPS(t) {
			err := c.mxdeliv(ctx, t, from, rcpts, sig, body)
			if err == nil {
				c.log.Debug("delivered over HTTPS", "domain", domain, "host", t.name)
				return allOK(rcpts)
			}
			var se *smtp.SMTPError
			if errors.As(err, &se) && se.Code >= 500 {
				// A relay that refused the message for good ("550 No such
				// user", "523 Encryption Needed") would refuse it over SMTP
				// too: bounce now rather than ask again.
				c.log.Debug("HTTPS delivery refused", "domain", domain, "host", t.name, "code", se.Code)
				return allFailed(rcpts, err)
			}
			c.log.Debug("HTTPS delivery failed, trying SMTP", "domain", domain, "host", t.name, "err", err)
			if se != nil && verdict == nil {
				verdict = se
			}
			if !errors.As(err, new(refusedTargetError)) {
				refusedAll = false
			}
			lastErr = err
		}
		results, err := c.smtpDeliver(ctx, t, from, rcpts, sig, body)
		if err != nil {
			// Could not talk to this host: make sure HTTPS is tried again
			// next time, then try the next host.
			c.forgetSMTP(t.name)
			c.log.Debug("SMTP delivery failed", "domain", domain, "host", t.name, "err", err)
			if !errors.As(err, new(refusedTargetError)) {
				refusedAll = false
			}
			lastErr = err
			continue
		}
		if anyOK(results) {
			c.rememberSMTP(t.name)
		}
		return results
	}
	if verdict != nil {
		return allFailed(rcpts, verdict)
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	if lastErr == nil {
		lastErr = errors.New("no host to deliver to")
	}
	if refusedAll && errors.As(lastErr, new(refusedTargetError)) {
		return allFailed(rcpts, permanentError{fmt.Errorf("%s: %w", domain, lastErr)})
	}
	return allFailed(rcpts, fmt.Errorf("%s: %w", domain, lastErr))
}

// targets returns the hosts to try for domain, best first.
func (c *Courier) targets(ctx context.Context, domain string) ([]target, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if strings.HasPrefix(domain, "[") && strings.HasSuffix(domain, "]") {
		// RFC 5321 section 4.1.3: an address literal names the host
		// itself; no DNS is involved.
		lit := strings.TrimPrefix(domain[1:len(domain)-1], "ipv6:")
		ip, err := netip.ParseAddr(lit)
		if err != nil {
			return nil, permanentError{fmt.Errorf("bad address literal %s", domain)}
		}
		return []target{{name: ip.String(), smtpPort: c.opts.SMTPPort, insecure: true}}, nil
	}
	insecure := strings.HasPrefix(domain, "_")
	if route, ok := c.opts.StaticRoutes[domain]; ok {
		host, port := route, c.opts.SMTPPort
		if h, p, err := net.SplitHostPort(route); err == nil {
			n, err := strconv.Atoi(p)
			if err != nil {
				return nil, fmt.Errorf("static route for %s: bad port in %q", domain, route)
			}
			host, port = h, n
		}
		return []target{{name: domain, addr: host, smtpPort: port, insecure: insecure}}, nil
	}

	mxs, err := c.opts.Resolver.LookupMX(ctx, domain)
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound, err == nil && len(mxs) == 0:
		// RFC 5321 section 5.1: without MX records the domain itself is
		// the host (implicit MX). Go reports "no MX" and "no such domain"
		// alike, so a domain with no address either is the permanent
		// case.
		addrs, err := c.opts.Resolver.LookupHost(ctx, domain)
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound || err == nil && len(addrs) == 0 {
			return nil, permanentError{fmt.Errorf("domain %s has no MX and no address (RFC 5321 section 5.1)", domain)}
		} else if err != nil {
			return nil, fmt.Errorf("look up %s: %w", domain, err)
		}
		return []target{{name: domain, smtpPort: c.opts.SMTPPort, insecure: insecure}}, nil
	case err != nil && len(mxs) == 0:
		return nil, fmt.Errorf("look up MX of %s: %w", domain, err)
	}
	// RFC 7505 section 3: a single MX of "." says the domain takes no
	// mail.
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		return nil, permanentError{&smtp.SMTPError{Code: 556, EnhancedCode: smtp.EnhancedCode{5, 1, 10},
			Message: fmt.Sprintf("domain %s does not accept mail (null MX, RFC 7505)", domain)}}
	}
	mxs = slices.Clone(mxs)
	// Equal preferences keep the resolver's (randomised) order, RFC 5321
	// section 5.1.
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	var out []target
	for _, mx := range mxs {
		host := strings.ToLower(strings.TrimSuffix(mx.Host, "."))
		if host == "" || slices.ContainsFunc(out, func(t target) bool { return t.name == host }) {
			continue
		}
		out = append(out, target{name: host, smtpPort: c.opts.SMTPPort, insecure: insecure})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("MX of %s lists no usable host", domain)
	}
	return out, nil
}

// sign returns the DKIM-Signature header field to put in front of the
// message, or "" when signing is off.
func (c *Courier) sign(body func() (io.ReadCloser, error)) (string, error) {
	if c.opts.DKIM.Key == nil {
		return "", nil
	}
	rc, err := body()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	return dkim.Signature(c.opts.DKIM.Key, c.opts.DKIM.Domain, c.opts.DKIM.Selector, rc)
}

func (c *Courier) useHTTPS(t target) bool {
	if c.opts.DisableMXDeliv {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.smtpOnly[t.name]
	if ok && c.opts.Now().Before(until) {
		return false
	}
	delete(c.smtpOnly, t.name)
	return true
}

// rememberSMTP skips HTTPS to host for a while: it evidently takes SMTP,
// and a failing /mxdeliv (not a chatmail relay, or blocked) would cost a
// round trip on every message.
func (c *Courier) rememberSMTP(host string) {
	if c.opts.DisableMXDeliv {
		return
	}
	c.mu.Lock()
	c.smtpOnly[host] = c.opts.Now().Add(c.opts.SMTPStickiness)
	c.mu.Unlock()
}

// forgetSMTP undoes rememberSMTP when SMTP to the host stopped working
// (port 25 blocked, say), so HTTPS is tried again at once.
func (c *Courier) forgetSMTP(host string) {
	c.mu.Lock()
	delete(c.smtpOnly, host)
	c.mu.Unlock()
}

// dial connects to host:port, resolving host through our resolver and
// binding to LocalAddr. Addresses of the other family than LocalAddr are
// skipped; each address is tried in turn.
func (c *Courier) dial(ctx context.Context, host string, port int) (net.Conn, error) {
	var addrs []string
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []string{ip.String()}
	} else {
		addrs, err = c.opts.Resolver.LookupHost(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("look up %s: %w", host, err)
		}
	}
	d := net.Dialer{Timeout: c.opts.DialTimeout}
	local := c.opts.LocalAddr
	if local != nil {
		d.LocalAddr = &net.TCPAddr{IP: local}
	}
	var lastErr error
	for _, a := range addrs {
		ip := net.ParseIP(a)
		if ip == nil {
			continue
		}
		if nip, _ := netip.AddrFromSlice(ip); !c.allowed(nip) {
			if lastErr == nil || errors.As(lastErr, new(refusedTargetError)) {
				lastErr = refusedTargetError{host: host, ip: nip.Unmap()}
			}
			c.log.Warn("refused delivery target: not a public address, or this relay's own", "host", host, "addr", nip.Unmap().String())
			continue
		}
		if local != nil && (local.To4() == nil) != (ip.To4() == nil) {
			lastErr = fmt.Errorf("%s: not reachable from %s", a, local)
			continue
		}
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(a, strconv.Itoa(port)))
		if err == nil {
			return conn, nil
		}
		lastErr = err
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("%s has no address", host)
	}
	return nil, lastErr
}

// classify turns a delivery error into a queue result's error and
// permanence: SMTP 5xx replies and permanentErrors are final, the rest
// (4xx, network, TLS, DNS trouble) temporary.
func classify(err error) queue.Result {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return queue.Result{Err: err, Permanent: se.Code >= 500 && se.Code < 600, Reply: replyCode(se)}
	}
	var pe permanentError
	if errors.As(err, &pe) {
		return queue.Result{Err: err, Permanent: true}
	}
	return queue.Result{Err: err}
}

func allFailed(rcpts []string, err error) []queue.Result {
	r := classify(err)
	out := make([]queue.Result, len(rcpts))
	for i, rcpt := range rcpts {
		out[i] = queue.Result{Rcpt: rcpt, Err: r.Err, Permanent: r.Permanent, Reply: r.Reply}
	}
	return out
}

func allOK(rcpts []string) []queue.Result {
	out := make([]queue.Result, len(rcpts))
	for i, rcpt := range rcpts {
		out[i] = queue.Result{Rcpt: rcpt}
	}
	return out
}

func anyOK(results []queue.Result) bool {
	return slices.ContainsFunc(results, func(r queue.Result) bool { return r.Err == nil })
}

var _ queue.DeliverFunc = (*Courier)(nil).Deliver

// replyCode is the reply code and, when the server gave a valid one, the
// enhanced status code of se (RFC 3463): "550 5.1.1". Nothing of the
// server's text is kept.
func replyCode(se *smtp.SMTPError) string {
	if se.Code < 200 || se.Code > 599 {
		return ""
	}
	code := strconv.Itoa(se.Code)
	ec := se.EnhancedCode
	if ec[0] == se.Code/100 && ec[1] >= 0 && ec[1] <= 999 && ec[2] >= 0 && ec[2] <= 999 {
		code += fmt.Sprintf(" %d.%d.%d", ec[0], ec[1], ec[2])
	}
	return code
}
