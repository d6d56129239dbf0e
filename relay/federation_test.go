package relay_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/dkim"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// freePortOn finds a port free on every given loopback address, so that
// relays on different addresses can share port numbers as real relays do.
func freePortOn(t *testing.T, ips ...string) int {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ok := true
		var held []net.Listener
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
			if err != nil {
				ok = false
				break
			}
			held = append(held, l)
		}
		ln.Close()
		for _, l := range held {
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no common free port")
	return 0
}

// peers are two relays on 127.0.0.2 and 127.0.0.3 that reach each other
// on shared port numbers.
type peers struct {
	smtpPort, httpsPort int
	cfgA, cfgB          relay.Config
}

func newPeers(t *testing.T, domainA, domainB string) *peers {
	p := &peers{
		smtpPort:  freePortOn(t, "127.0.0.2", "127.0.0.3"),
		httpsPort: freePortOn(t, "127.0.0.2", "127.0.0.3"),
	}
	mk := func(ip, domain string) relay.Config {
		cfg := relaytest.Config(t.TempDir())
		if domain == "" {
			cfg.Domain, cfg.IP = "", ip
		} else {
			cfg.Domain = domain
		}
		cfg.Listen.SMTP = fmt.Sprintf("%s:%d", ip, p.smtpPort)
		cfg.Listen.HTTPS = fmt.Sprintf("%s:%d", ip, p.httpsPort)
		cfg.Listen.IMAPS = ip + ":0"
		cfg.Listen.IMAP = ""
		cfg.Listen.Submissions = ip + ":0"
		cfg.Listen.Submission = ""
		cfg.Federation.SMTPPort = p.smtpPort
		cfg.Federation.HTTPSPort = p.httpsPort
		// The peers are on loopback, which the courier refuses unless told.
		cfg.Federation.AllowPrivateTargets = []string{"127.0.0.2", "127.0.0.3"}
		return cfg
	}
	p.cfgA, p.cfgB = mk("127.0.0.2", domainA), mk("127.0.0.3", domainB)
	return p
}

func waitMessages(t *testing.T, r *relaytest.Relay, user string, n int, within time.Duration) [][]byte {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := imapclient.DialTLS(r.AddrOf("imaps"), &imapclient.Options{TLSConfig: relaytest.ClientTLS()})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(user, password).Wait(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		msgs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) >= n {
			var out [][]byte
			for _, m := range msgs {
				out = append(out, m.FindBodySection(&imap.FetchItemBodySection{Peek: true}))
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d messages, want %d", user, len(msgs), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFederationIPModeOverMXDeliv(t *testing.T) {
	p := newPeers(t, "", "")
	a := relaytest.StartConfig(t, p.cfgA)
	b := relaytest.StartConfig(t, p.cfgB)
	alice, bob := "alicealic@[127.0.0.2]", "bobbobbob@[127.0.0.3]"
	login(t, a, alice).Close()
	login(t, b, bob).Close()

	msg := testmsg.Encrypted(alice, bob, 2000)
	if err := submit(t, a, alice, password, alice, []string{bob}, msg); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, b, bob, 1, 10*time.Second)
	body := msg[bytes.Index(msg, []byte("\r\n\r\n")):]
	if !bytes.HasSuffix(got[0], body) {
		t.Fatal("body changed on the way")
	}
	for _, h := range []string{"Received:", "X-Mailer:", "User-Agent:", "DKIM-Signature:"} {
		if bytes.Contains(got[0], []byte("\r\n"+h)) || bytes.HasPrefix(got[0], []byte(h)) {
			t.Errorf("%s header reached the recipient", h)
		}
	}
	if !bytes.Contains(got[0], []byte("Subject: [...]")) {
		t.Error("subject not replaced")
	}
}

func TestFederationOverSMTPWhenMXDelivOff(t *testing.T) {
	p := newPeers(t, "", "")
	p.cfgB.Federation.DisableMXDeliv = true
	a := relaytest.StartConfig(t, p.cfgA)
	b := relaytest.StartConfig(t, p.cfgB)
	alice, bob := "alicealic@[127.0.0.2]", "bobbobbob@[127.0.0.3]"
	login(t, a, alice).Close()
	login(t, b, bob).Close()
	if err := submit(t, a, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, b, bob, 1, 10*time.Second)
}

// A message waits in A's queue while B is down and arrives when B returns,
// also across a restart of A.
func TestFederationQueueWaitsForPeer(t *testing.T) {
	p := newPeers(t, "", "")
	b := relaytest.StartConfig(t, p.cfgB)
	bob := "bobbobbob@[127.0.0.3]"
	login(t, b, bob).Close()
	b.Stop()

	a := relaytest.StartConfig(t, p.cfgA)
	alice := "alicealic@[127.0.0.2]"
	login(t, a, alice).Close()
	if err := submit(t, a, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
		t.Fatal(err)
	}
	waitQueued(t, a, 1)
	a.Stop()

	a2 := relaytest.StartConfig(t, p.cfgA)
	if n, _ := a2.Queue().Stats(); n != 1 {
		t.Fatalf("queue after restart holds %d, want 1", n)
	}
	b2 := relaytest.StartConfig(t, p.cfgB)
	a2.Queue().Retry("")
	waitMessages(t, b2, bob, 1, 10*time.Second)
	waitQueued(t, a2, 0)
}

func waitQueued(t *testing.T, r *relaytest.Relay, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		items, err := r.Queue().List()
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == n && (n == 0 || items[0].Attempts > 0) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue holds %d items, want %d", len(items), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFederationBouncesAfterLifetime(t *testing.T) {
	p := newPeers(t, "", "")
	p.cfgA.Federation.BounceAfterHours = 1
	a := relaytest.StartConfig(t, p.cfgA)
	alice, bob := "alicealic@[127.0.0.2]", "bobbobbob@[127.0.0.3]"
	login(t, a, alice).Close()
	if err := submit(t, a, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
		t.Fatal(err)
	}
	waitQueued(t, a, 1)
	a.Clock.Advance(2 * time.Hour)
	a.Queue().Retry("")
	got := waitMessages(t, a, alice, 1, 10*time.Second)
	s := string(got[0])
	for _, want := range []string{"From: Mail Delivery System <mailer-daemon@[127.0.0.2]>", "multipart/report", "Auto-Submitted: auto-replied", "Final-Recipient: rfc822; " + bob} {
		if !strings.Contains(s, want) {
			t.Errorf("bounce lacks %q", want)
		}
	}
	waitQueued(t, a, 0)
}

// testDNS is a resolver for two domain-mode relays.
type testDNS struct {
	mu  sync.Mutex
	mx  map[string]string
	ip  map[string]string
	txt map[string]string
}

func (d *testDNS) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h, ok := d.mx[strings.TrimSuffix(name, ".")]; ok {
		return []*net.MX{{Host: h + ".", Pref: 10}}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (d *testDNS) LookupHost(ctx context.Context, host string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ip, ok := d.ip[strings.TrimSuffix(host, ".")]; ok {
		return []string{ip}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (d *testDNS) LookupTXT(ctx context.Context, name string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.txt[strings.TrimSuffix(name, ".")]; ok {
		return []string{v}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// domainPeers starts a.test on 127.0.0.2 and b.test on 127.0.0.3 with a
// test resolver, each trusting the other's certificate.
func domainPeers(t *testing.T, edit func(a, b *relay.Config)) (a, b *relaytest.Relay, dns *testDNS) {
	p := newPeers(t, "a.test", "b.test")
	if edit != nil {
		edit(&p.cfgA, &p.cfgB)
	}
	dns = &testDNS{
		mx: map[string]string{"a.test": "a.test", "b.test": "b.test"},
		ip: map[string]string{"a.test": "127.0.0.2", "b.test": "127.0.0.3"},
	}
	roots := x509.NewCertPool()
	opts := relay.Options{Resolver: dns, RootCAs: roots}
	a = relaytest.StartWith(t, p.cfgA, opts)
	b = relaytest.StartWith(t, p.cfgB, opts)
	for _, r := range []*relaytest.Relay{a, b} {
		c, err := r.Certs.Certificate()
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(leaf)
	}
	dns.mu.Lock()
	dns.txt = map[string]string{"dkim._domainkey.a.test": a.DKIMRecord(), "dkim._domainkey.b.test": b.DKIMRecord()}
	dns.mu.Unlock()
	return a, b, dns
}

func TestFederationDomainsWithDKIM(t *testing.T) {
	for _, mxdeliv := range []bool{true, false} {
		t.Run(fmt.Sprintf("mxdeliv=%v", mxdeliv), func(t *testing.T) {
			a, b, _ := domainPeers(t, func(_, b *relay.Config) { b.Federation.DisableMXDeliv = !mxdeliv })
			alice, bob := "alicealic@a.test", "bobbobbob@b.test"
			login(t, a, alice).Close()
			login(t, b, bob).Close()
			if err := submit(t, a, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
				t.Fatal(err)
			}
			got := waitMessages(t, b, bob, 1, 10*time.Second)
			if bytes.Contains(got[0], []byte("DKIM-Signature:")) {
				t.Error("DKIM-Signature kept in the stored message")
			}
		})
	}
}

// Inbound checks, on port 25 and /mxdeliv alike, refuse and store nothing.
func TestInboundRefusals(t *testing.T) {
	a, b, dns := domainPeers(t, func(_, b *relay.Config) { b.MaxMessageSize = 512 << 10 })
	bob := "bobbobbob@b.test"
	login(t, b, bob).Close()
	key, err := dkim.LoadOrCreate(relay.DKIMKeyPath(a.Dir))
	if err != nil {
		t.Fatal(err)
	}
	signed := func(domain string, msg []byte) []byte {
		sig, err := dkim.Signature(key, domain, "dkim", bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte(sig), msg...)
	}
	good := signed("a.test", testmsg.Encrypted("alicealic@a.test", bob, 0))
	// Subject is signed: changing it breaks the signature.
	tampered := bytes.Replace(good, []byte("Subject: [...]"), []byte("Subject: [..!]"), 1)
	big := signed("a.test", testmsg.Encrypted("alicealic@a.test", bob, 1<<20))

	viaSMTPReply := func(from string, to []string, msg []byte) (int, string) {
		c, err := smtp.DialStartTLS(b.AddrOf("smtp"), relaytest.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.SendMail(from, to, bytes.NewReader(msg))
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se.Code, fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		}
		return smtpCode(err), ""
	}
	viaSMTP := func(from string, to []string, msg []byte) int {
		code, _ := viaSMTPReply(from, to, msg)
		return code
	}
	viaHTTPS := func(from string, to []string, msg []byte) int {
		req, _ := http.NewRequest("POST", "https://"+b.AddrOf("https")+"/mxdeliv", bytes.NewReader(msg))
		req.Header.Set("X-MAIL-FROM", from)
		for _, r := range to {
			req.Header.Add("X-MAIL-TO", r)
		}
		resp, err := httpsClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		code, _ := strconv.Atoi(strings.SplitN(string(body), " ", 2)[0])
		if code == 250 {
			return 0
		}
		return code
	}
	cases := []struct {
		name string
		from string
		to   []string
		msg  []byte
		code int
	}{
		{"unknown recipient", "alicealic@a.test", []string{"nobodyhere@b.test"}, good, 550},
		{"no DKIM signature", "alicealic@a.test", []string{bob}, testmsg.Encrypted("alicealic@a.test", bob, 0), 554},
		{"d= is not the From domain", "alicealic@a.test", []string{bob}, signed("other.test", testmsg.Encrypted("alicealic@a.test", bob, 0)), 554},
		{"broken signature", "alicealic@a.test", []string{bob}, tampered, 554},
		{"cleartext", "alicealic@a.test", []string{bob}, signed("a.test", testmsg.Cleartext("alicealic@a.test", bob)), 523},
		{"address literal from another IP", "x@[127.0.0.9]", []string{bob}, testmsg.Encrypted("x@[127.0.0.9]", bob, 0), 554},
		{"oversize", "alicealic@a.test", []string{bob}, big, 552},
		{"open relay attempt", "alicealic@a.test", []string{"victim@elsewhere.test"}, good, 550},
	}
	for _, via := range []struct {
		name string
		send func(string, []string, []byte) int
	}{{"smtp", viaSMTP}, {"mxdeliv", viaHTTPS}} {
		for _, tc := range cases {
			t.Run(via.name+"/"+tc.name, func(t *testing.T) {
				if got := via.send(tc.from, tc.to, tc.msg); got != tc.code {
					t.Fatalf("got %d, want %d", got, tc.code)
				}
			})
		}
	}
	// The reference relay's wording, which Delta Chat users see in bounces;
	// other DKIM refusals name "dkim" once.
	if _, text := viaSMTPReply("alicealic@a.test", []string{bob}, testmsg.Encrypted("alicealic@a.test", bob, 0)); text != "554 5.7.1 No DKIM signature found" {
		t.Errorf("unsigned message: %q", text)
	}
	if _, text := viaSMTPReply("alicealic@a.test", []string{bob}, tampered); strings.Contains(text, "dkim: ") || !strings.HasPrefix(text, "554 5.7.1 DKIM check failed: ") {
		t.Errorf("broken signature: %q, want one \"DKIM check failed\" and no \"dkim:\"", text)
	}
	if n := len(waitMessages(t, b, bob, 0, 0)); n != 0 {
		t.Fatalf("%d messages stored after refusals", n)
	}
	// The good message passes both ways.
	if got := viaSMTP("alicealic@a.test", []string{bob}, good); got != 0 {
		t.Fatalf("signed encrypted mail over SMTP: %d", got)
	}
	if got := viaHTTPS("alicealic@a.test", []string{bob}, good); got != 0 {
		t.Fatalf("signed encrypted mail over /mxdeliv: %d", got)
	}
	// No key published for the selector: the signature cannot verify.
	dns.mu.Lock()
	dns.txt = nil
	dns.mu.Unlock()
	if got, text := viaSMTPReply("alicealic@a.test", []string{bob}, good); got != 554 || strings.Contains(text, "dkim: ") {
		t.Fatalf("no key published: %q, want 554 without a \"dkim:\" prefix", text)
	}
}

// Where DNS is gone: static routes reach the peer, and its DKIM key comes
// from the peer itself over HTTPS (verified TLS), so verification holds.
func TestFederationStaticRoutesWithoutDNS(t *testing.T) {
	a, b, dns := domainPeers(t, func(a, b *relay.Config) {
		a.Federation.StaticRoutes = map[string]string{"b.test": "127.0.0.3"}
		b.Federation.StaticRoutes = map[string]string{"a.test": "127.0.0.2"}
	})
	// No DNS at all from here on.
	dns.mu.Lock()
	dns.mx, dns.ip, dns.txt = nil, nil, nil
	dns.mu.Unlock()
	alice, bob := "alicealic@a.test", "bobbobbob@b.test"
	login(t, a, alice).Close()
	login(t, b, bob).Close()
	if err := submit(t, a, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, b, bob, 1, 10*time.Second)
	if err := submit(t, b, bob, password, bob, []string{alice}, testmsg.Encrypted(bob, alice, 0)); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, a, alice, 1, 10*time.Second)
}
