package courier

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay/dkim"
	"github.com/chatrelay/chatrelay/relay/queue"

	"github.com/chatrelay/chatrelay/internal/testclock"
)

const sender = "alice@relay.test"

var (
	dkimOnce sync.Once
	dkimKey  *dkim.Key
)

func testKey(t *testing.T) *dkim.Key {
	t.Helper()
	dkimOnce.Do(func() {
		k, err := dkim.Generate()
		if err != nil {
			t.Fatal(err)
		}
		dkimKey = k
	})
	return dkimKey
}

// clock is a test clock that moves only when told.
type clock = testclock.Clock

type fixture struct {
	t     *testing.T
	ca    *pki
	dns   *resolver
	clock *clock
	msg   []byte
}

func newFixture(t *testing.T) *fixture {
	return &fixture{
		t:     t,
		ca:    newPKI(t),
		dns:   newResolver(),
		clock: testclock.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)),
		msg:   testmsg.Encrypted(sender, "bob@a.example", 0),
	}
}

// courier returns a courier that talks to peers on p's ports.
func (f *fixture) courier(p *peer, edit func(*Options)) *Courier {
	opts := Options{
		Resolver:  f.dns,
		HeloName:  "relay.test",
		SMTPPort:  p.smtpPort,
		HTTPSPort: p.httpsPort,
		RootCAs:   f.ca.pool,
		DKIM:      DKIMOptions{Key: testKey(f.t), Domain: "relay.test", Selector: "dkim"},
		Now:       f.clock.Now,
		// A dead peer answers at once on loopback; keep a hung one short.
		DialTimeout:    5 * time.Second,
		CommandTimeout: 10 * time.Second,
		DataTimeout:    10 * time.Second,
		HTTPTimeout:    10 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		// The test peers are on loopback.
		AllowTargets: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}
	if testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if edit != nil {
		edit(&opts)
	}
	c := New(opts)
	f.t.Cleanup(c.Close)
	return c
}

func (f *fixture) body() func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(f.msg)), nil }
}

func (f *fixture) deliver(c *Courier, domain string, rcpts ...string) []queue.Result {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := c.Deliver(ctx, sender, domain, rcpts, f.body())
	if len(res) != len(rcpts) {
		f.t.Fatalf("Deliver returned %d results for %d recipients", len(res), len(rcpts))
	}
	for i, r := range res {
		if r.Rcpt != rcpts[i] {
			f.t.Fatalf("result %d is for %q, want %q", i, r.Rcpt, rcpts[i])
		}
	}
	return res
}

// verifySigned checks that body carries our valid DKIM signature on top of
// the original message.
func (f *fixture) verifySigned(body string) {
	f.t.Helper()
	k := testKey(f.t)
	err := dkim.Verify(strings.NewReader(body), "relay.test", func(name string) ([]string, error) {
		if name == "dkim._domainkey.relay.test" {
			return []string{k.TXTRecord()}, nil
		}
		return nil, dkim.ErrNoKey
	})
	if err != nil {
		f.t.Errorf("delivered message does not verify: %v", err)
	}
	if !strings.HasPrefix(body, "DKIM-Signature:") || !strings.HasSuffix(body, string(f.msg)) {
		f.t.Errorf("delivered message is not signature + original (%.60q)", body)
	}
}

func wantOK(t *testing.T, res []queue.Result) {
	t.Helper()
	for _, r := range res {
		if r.Err != nil {
			t.Errorf("%s: %v", r.Rcpt, r.Err)
		}
	}
}

func wantFailed(t *testing.T, res []queue.Result, permanent bool) {
	t.Helper()
	for _, r := range res {
		if r.Err == nil {
			t.Errorf("%s: delivered, want a failure", r.Rcpt)
		} else if r.Permanent != permanent {
			t.Errorf("%s: permanent=%v, want %v (%v)", r.Rcpt, r.Permanent, permanent, r.Err)
		}
	}
}

func TestMXDelivRequest(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example")})
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	c := f.courier(p, nil)

	// The queue hands the courier spool files; their size gives the
	// request a Content-Length.
	path := filepath.Join(t.TempDir(), "msg")
	os.WriteFile(path, f.msg, 0o600)
	res := c.Deliver(context.Background(), sender, "a.example", []string{"bob@a.example", "carol@a.example"},
		func() (io.ReadCloser, error) { return os.Open(path) })
	wantOK(t, res)

	hits, ok, smtpOK := p.stats()
	if hits != 1 || ok != 1 || smtpOK != 0 {
		t.Fatalf("peer saw %d HTTPS requests (%d ok) and %d SMTP messages; want one HTTPS delivery", hits, ok, smtpOK)
	}
	req := p.httpReqs[0]
	if req.from != sender || !slices.Equal(req.to, []string{"bob@a.example", "carol@a.example"}) {
		t.Errorf("X-Mail-From %q, X-Mail-To %q", req.from, req.to)
	}
	if req.contentLength != int64(len(req.body)) {
		t.Errorf("Content-Length %d for a %d-byte body", req.contentLength, len(req.body))
	}
	f.verifySigned(req.body)
}

func TestSMTPWhenMXDelivFailsThenSkipsHTTPSFor30Minutes(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example")})
	p.setHTTP(404, "not a chatmail relay")
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	c := f.courier(p, nil)

	wantOK(t, f.deliver(c, "a.example", "bob@a.example"))
	if hits, _, smtpOK := p.stats(); hits != 1 || smtpOK != 1 {
		t.Fatalf("first delivery: %d HTTPS hits, %d SMTP messages; want 1 and 1", hits, smtpOK)
	}
	m := p.smtpMsgs[0]
	if m.helo != "relay.test" || !m.tls || m.from != sender || !slices.Equal(m.to, []string{"bob@a.example"}) {
		t.Errorf("SMTP message %+v", m)
	}
	f.verifySigned(m.body)

	// Within 30 minutes HTTPS is not even tried.
	f.clock.Advance(29 * time.Minute)
	wantOK(t, f.deliver(c, "a.example", "bob@a.example"))
	if hits, _, smtpOK := p.stats(); hits != 1 || smtpOK != 2 {
		t.Fatalf("second delivery: %d HTTPS hits, %d SMTP messages; want 1 and 2", hits, smtpOK)
	}

	// 30 minutes after the last SMTP success, HTTPS first again.
	p.setHTTP(200, "250 2.0.0 OK")
	f.clock.Advance(30*time.Minute + time.Second)
	wantOK(t, f.deliver(c, "a.example", "bob@a.example"))
	if hits, ok, smtpOK := p.stats(); hits != 2 || ok != 1 || smtpOK != 2 {
		t.Fatalf("third delivery: %d HTTPS hits (%d ok), %d SMTP; want HTTPS used", hits, ok, smtpOK)
	}
}

func TestSMTPWhenNothingListensOnHTTPS(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example"), noHTTPS: true})
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	wantOK(t, f.deliver(f.courier(p, nil), "a.example", "bob@a.example"))
	if _, _, smtpOK := p.stats(); smtpOK != 1 {
		t.Fatalf("%d SMTP messages, want 1", smtpOK)
	}
}

func TestSMTPPerRecipientResults(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example")})
	p.rcptErr = func(rcpt string) error {
		switch {
		case strings.HasPrefix(rcpt, "gone@"):
			return rcptReply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		case strings.HasPrefix(rcpt, "full@"):
			return rcptReply(452, smtp.EnhancedCode{4, 2, 2}, "mailbox full")
		}
		return nil
	}
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	c := f.courier(p, func(o *Options) { o.DisableMXDeliv = true })
	res := f.deliver(c, "a.example", "bob@a.example", "gone@a.example", "full@a.example")
	if res[0].Err != nil {
		t.Errorf("bob: %v", res[0].Err)
	}
	if res[1].Err == nil || !res[1].Permanent || !strings.Contains(res[1].Err.Error(), "550") {
		t.Errorf("gone: %+v, want permanent 550", res[1])
	}
	if res[2].Err == nil || res[2].Permanent {
		t.Errorf("full: %+v, want temporary", res[2])
	}
	if hits, _, _ := p.stats(); hits != 0 {
		t.Error("HTTPS used although disabled")
	}
	if len(p.smtpMsgs) != 1 || !slices.Equal(p.smtpMsgs[0].to, []string{"bob@a.example"}) {
		t.Errorf("peer got %+v", p.smtpMsgs)
	}
}

func TestRejectedEverywhereIsPermanent(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example")})
	p.setHTTP(404, "not a chatmail relay")
	p.rcptErr = func(string) error { return rcptReply(550, smtp.EnhancedCode{5, 1, 1}, "no such user") }
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	wantFailed(t, f.deliver(f.courier(p, nil), "a.example", "bob@a.example"), true)
}

// A permanent refusal over /mxdeliv is the answer for every recipient:
// neither SMTP nor another MX host is asked again (they would refuse too,
// and the sender should get the bounce now). A temporary one still falls
// back to SMTP.
func TestMXDelivPermanentRefusalIsNotRetriedOverSMTP(t *testing.T) {
	for _, tc := range []struct {
		reply     string
		permanent bool
	}{
		{"550 No such user", true},
		{"523 5.7.1 Encryption Needed: Invalid Unencrypted Mail", true},
		{"451 4.3.0 Temporary server error, try again later", false},
	} {
		t.Run(tc.reply[:3], func(t *testing.T) {
			f := newFixture(t)
			p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example")})
			p.setHTTP(400, tc.reply)
			backup := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx2.a.example"), httpsPort: p.httpsPort, smtpPort: p.smtpPort})
			f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
			f.dns.addMX("a.example", 20, "mx2.a.example", backup.ip)
			res := f.deliver(f.courier(p, nil), "a.example", "bob@a.example", "carol@a.example")
			p.mu.Lock()
			mails := p.smtpMails
			p.mu.Unlock()
			backup.mu.Lock()
			mails2, hits2 := backup.smtpMails, backup.httpHits
			backup.mu.Unlock()
			if !tc.permanent {
				wantOK(t, res)
				if mails != 1 {
					t.Errorf("%d SMTP transactions after a temporary refusal, want 1", mails)
				}
				return
			}
			wantFailed(t, res, true)
			for _, r := range res {
				if !strings.Contains(r.Err.Error(), tc.reply[:3]) {
					t.Errorf("%s: %v, want the relay's %s", r.Rcpt, r.Err, tc.reply[:3])
				}
			}
			if mails != 0 || mails2 != 0 || hits2 != 0 {
				t.Errorf("after a permanent refusal: %d SMTP transactions, backup MX %d SMTP and %d HTTPS; want none", mails, mails2, hits2)
			}
		})
	}
}

func TestMXDelivRefusalDecidesWhenSMTPIsUnreachable(t *testing.T) {
	for _, tc := range []struct {
		reply     string
		permanent bool
	}{
		{"523 5.7.1 Encryption Needed: Invalid Unencrypted Mail", true},
		{"451 4.3.0 Temporary server error, try again later", false},
		{"<html>bad gateway</html>", false},
	} {
		t.Run(tc.reply[:3], func(t *testing.T) {
			f := newFixture(t)
			p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example"), noSMTP: true})
			p.setHTTP(400, tc.reply)
			f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
			res := f.deliver(f.courier(p, nil), "a.example", "bob@a.example")
			wantFailed(t, res, tc.permanent)
		})
	}
}

func TestNullMXIsPermanent(t *testing.T) {
	f := newFixture(t)
	f.dns.mx["nomail.example"] = []*net.MX{{Host: ".", Pref: 0}}
	c := f.courier(&peer{smtpPort: 1, httpsPort: 1}, nil)
	res := f.deliver(c, "nomail.example", "bob@nomail.example")
	wantFailed(t, res, true)
	if !strings.Contains(res[0].Err.Error(), "556") {
		t.Errorf("null MX error %v, want 556 (RFC 7505 section 4.3)", res[0].Err)
	}
	if q := f.dns.asked(); !slices.Equal(q, []string{"MX nomail.example"}) {
		t.Errorf("DNS queries %v", q)
	}
}

func TestImplicitMX(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "b.example")})
	f.dns.hosts["b.example"] = []string{p.ip}
	wantOK(t, f.deliver(f.courier(p, nil), "b.example", "bob@b.example"))
	if _, ok, _ := p.stats(); ok != 1 {
		t.Errorf("%d HTTPS deliveries, want 1", ok)
	}
}

func TestDNSOutcomes(t *testing.T) {
	f := newFixture(t)
	f.dns.mxErr["flaky.example"] = &net.DNSError{Err: "server misbehaving", Name: "flaky.example", IsTemporary: true}
	f.dns.mx["empty.example"] = []*net.MX{{Host: "mx.empty.example.", Pref: 10}} // no address
	c := f.courier(&peer{smtpPort: 1, httpsPort: 1}, nil)
	wantFailed(t, f.deliver(c, "nowhere.example", "bob@nowhere.example"), true)
	wantFailed(t, f.deliver(c, "flaky.example", "bob@flaky.example"), false)
	wantFailed(t, f.deliver(c, "empty.example", "bob@empty.example"), false)
}

func TestMXPreferenceAndFallback(t *testing.T) {
	f := newFixture(t)
	second := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx2.a.example")})
	third := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx3.a.example"), httpsPort: second.httpsPort, smtpPort: second.smtpPort})
	dead := startPeer(t, peerConfig{noHTTPS: true, noSMTP: true, httpsPort: second.httpsPort, smtpPort: second.smtpPort})
	f.dns.addMX("a.example", 30, "mx3.a.example", third.ip)
	f.dns.addMX("a.example", 10, "mx1.a.example", dead.ip)
	f.dns.addMX("a.example", 20, "mx2.a.example", second.ip)
	wantOK(t, f.deliver(f.courier(second, nil), "a.example", "bob@a.example"))
	if _, ok, _ := second.stats(); ok != 1 {
		t.Errorf("second-preference MX got %d messages, want 1", ok)
	}
	if hits, _, smtpOK := third.stats(); hits+smtpOK != 0 {
		t.Error("third-preference MX was contacted although the second took the message")
	}
}

func TestIPLiteralNeedsNoDNSAndTakesSelfSigned(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: (*pki)(nil).issue(t, "self-signed.invalid")})
	domain := "[" + p.ip + "]"
	c := f.courier(p, nil)
	wantOK(t, f.deliver(c, domain, "bob@"+domain))
	if _, ok, _ := p.stats(); ok != 1 {
		t.Errorf("%d HTTPS deliveries, want 1", ok)
	}
	c = f.courier(p, func(o *Options) { o.DisableMXDeliv = true })
	wantOK(t, f.deliver(c, domain, "bob@"+domain))
	if _, _, smtpOK := p.stats(); smtpOK != 1 || !p.smtpMsgs[0].tls {
		t.Errorf("SMTP to an IP literal: %d messages, want 1 over TLS", smtpOK)
	}
	if q := f.dns.asked(); len(q) != 0 {
		t.Errorf("DNS asked %v for an IP literal", q)
	}
}

func TestUnderscoreDomainTakesSelfSigned(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: (*pki)(nil).issue(t, "_test.example")})
	f.dns.hosts["_test.example"] = []string{p.ip}
	wantOK(t, f.deliver(f.courier(p, nil), "_test.example", "bob@_test.example"))
	wantOK(t, f.deliver(f.courier(p, func(o *Options) { o.DisableMXDeliv = true }), "_test.example", "bob@_test.example"))
	if _, ok, smtpOK := p.stats(); ok != 1 || smtpOK != 1 {
		t.Errorf("%d HTTPS and %d SMTP deliveries, want one each", ok, smtpOK)
	}
}

func TestUntrustedCertificateIsTemporaryAndSendsNothing(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: (*pki)(nil).issue(t, "mx.a.example")})
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	res := f.deliver(f.courier(p, nil), "a.example", "bob@a.example")
	wantFailed(t, res, false)
	hits, _, _ := p.stats()
	p.mu.Lock()
	mails := p.smtpMails
	p.mu.Unlock()
	if hits != 0 || mails != 0 {
		t.Errorf("peer with an untrusted certificate saw %d HTTPS requests and %d MAIL commands", hits, mails)
	}
}

func TestCertificateForAnotherNameIsRefused(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "other.example")})
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	wantFailed(t, f.deliver(f.courier(p, nil), "a.example", "bob@a.example"), false)
	if hits, ok, smtpOK := p.stats(); hits+ok+smtpOK != 0 {
		t.Errorf("message reached a host whose certificate names someone else")
	}
}

func TestSTARTTLSIsRequired(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example"), noTLSSMTP: true})
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	res := f.deliver(f.courier(p, func(o *Options) { o.DisableMXDeliv = true }), "a.example", "bob@a.example")
	wantFailed(t, res, false)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.smtpMails != 0 {
		t.Error("sent MAIL over a connection without TLS")
	}
}

func TestStaticRoute(t *testing.T) {
	f := newFixture(t)
	// The route replaces DNS; the certificate is still checked against
	// the domain.
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "c.example")})
	c := f.courier(p, func(o *Options) { o.StaticRoutes = map[string]string{"C.example": p.ip} })
	wantOK(t, f.deliver(c, "c.example", "bob@c.example"))
	if _, ok, _ := p.stats(); ok != 1 {
		t.Errorf("%d HTTPS deliveries over the route, want 1", ok)
	}

	// A port in the route is the SMTP port for it.
	c = f.courier(&peer{smtpPort: 1, httpsPort: 1}, func(o *Options) {
		o.DisableMXDeliv = true
		o.StaticRoutes = map[string]string{"c.example": net.JoinHostPort(p.ip, itoa(p.smtpPort))}
	})
	wantOK(t, f.deliver(c, "c.example", "bob@c.example"))
	if _, _, smtpOK := p.stats(); smtpOK != 1 {
		t.Errorf("%d SMTP deliveries over the route, want 1", smtpOK)
	}
	if q := f.dns.asked(); len(q) != 0 {
		t.Errorf("DNS asked %v for a statically routed domain", q)
	}
}

func TestLocalAddrBinding(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example")})
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)
	local := net.ParseIP("127.0.0.5")
	wantOK(t, f.deliver(f.courier(p, func(o *Options) { o.LocalAddr = local }), "a.example", "bob@a.example"))
	wantOK(t, f.deliver(f.courier(p, func(o *Options) { o.LocalAddr = local; o.DisableMXDeliv = true }), "a.example", "bob@a.example"))
	if len(p.httpReqs) != 1 || p.httpReqs[0].remoteIP != "127.0.0.5" {
		t.Errorf("HTTPS peer saw %+v, want a connection from 127.0.0.5", p.httpReqs)
	}
	if len(p.smtpMsgs) != 1 || p.smtpMsgs[0].remoteIP != "127.0.0.5" {
		t.Errorf("SMTP peer saw %+v, want a connection from 127.0.0.5", p.smtpMsgs)
	}
}

func TestParseReply(t *testing.T) {
	for in, want := range map[string]string{
		"550 5.1.1 no such user":    "550 5.1.1 no such user",
		"452 mailbox full\r\nmore":  "452 0.0.0 mailbox full",
		"552":                       "552 0.0.0 ",
		"250 2.0.0 OK":              "",
		"<html>":                    "",
		"5500 nope":                 "",
		"421-4.7.0 busy\r\n421 bye": "421 4.7.0 busy",
	} {
		se := parseReply(in)
		got := ""
		if se != nil {
			got = fmtReply(se)
		}
		if got != want {
			t.Errorf("parseReply(%q) = %q, want %q", in, got, want)
		}
	}
}

func fmtReply(se *smtp.SMTPError) string {
	return itoa(se.Code) + " " + itoa(se.EnhancedCode[0]) + "." + itoa(se.EnhancedCode[1]) + "." + itoa(se.EnhancedCode[2]) + " " + se.Message
}
