package relay_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

func TestConnLimitKeyIsIPOrIPv6Prefix(t *testing.T) {
	cases := map[string]string{
		"192.0.2.7:993":                   "192.0.2.7",
		"[::ffff:192.0.2.7]:993":          "192.0.2.7",
		"[2001:db8:1:2:aaaa::1]:993":      "2001:db8:1:2::/64",
		"[2001:db8:1:2:bbbb:cccc::9]:143": "2001:db8:1:2::/64",
		"[2001:db8:1:3::1]:143":           "2001:db8:1:3::/64",
	}
	for in, want := range cases {
		a, err := net.ResolveTCPAddr("tcp", in)
		if err != nil {
			t.Fatal(err)
		}
		if got := relay.IPKeyForTest(a); got != want {
			t.Errorf("%s: key %q, want %q", in, got, want)
		}
	}
}

func TestDefaultConnLimitsAreSet(t *testing.T) {
	l := relay.Default().Limits
	if l.IMAPPerIP != 50 || l.SubmissionPerIP != 20 || l.IMAP != 20000 || l.SMTPPerIP == 0 || l.HTTPS == 0 {
		t.Fatalf("defaults %+v", l)
	}
	cfg := relay.DevDefault()
	cfg.Limits.IMAP = -1
	if err := cfg.Validate(); err == nil {
		t.Fatal("negative limit accepted")
	}
}

// waitOpen waits until the relay counts n open connections of proto.
func waitOpen(t *testing.T, r *relaytest.Relay, proto string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.ConnStats()[proto] != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d open connections, want %d", proto, r.ConnStats()[proto], n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cappedRelay is a relay with two accounts, port 80 open and limits; the
// slow-client timeouts are the real ones, so that held connections stay.
func cappedRelay(t *testing.T, limits relay.ConnLimits) *relaytest.Relay {
	t.Helper()
	r := relaytest.Start(t, func(c *relaytest.Cfg) {
		c.Limits = limits
		c.Listen.HTTP = "127.0.0.1:0"
	})
	for _, a := range []string{hAlice, hBob} {
		if err := r.Store().CreateAccount(a, password, mailbox.Generated); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// proven opens a connection from ip to port (as idle does) that proved
// itself: logged in (IMAP, submission, ALPN imap/smtp on 443), in a mail
// transaction (25) or in the middle of a request (http/1.1 on 443, 80).
func proven(t *testing.T, r *relaytest.Relay, ip, port string, alpn ...string) *line {
	t.Helper()
	l := idle(t, r, ip, port, alpn...)
	proto := port
	if len(alpn) > 0 {
		proto = alpn[0]
	}
	switch proto {
	case "imaps", "imap":
		if port == "imap" {
			l.send("s STARTTLS\r\n")
			l.imapTagged("s")
			tc := tls.Client(l.c, relaytest.ClientTLS())
			l = newLine(t, tc)
		}
		l.send("L LOGIN " + hBob + " " + password + "\r\n")
		if s, _ := l.imapTagged("L"); !strings.HasPrefix(s, "L OK") {
			t.Fatalf("login: %s", s)
		}
	case "submissions", "submission", "smtp":
		l.send("EHLO client.test\r\n")
		l.smtpReply()
		if port == "submission" || port == "smtp" {
			// Port 25 takes MAIL only after STARTTLS, 587 AUTH.
			l.send("STARTTLS\r\n")
			l.expect("220 ")
			l = newLine(t, tls.Client(l.c, relaytest.ClientTLS()))
			l.send("EHLO client.test\r\n")
			l.smtpReply()
		}
		if port == "smtp" {
			l.send("MAIL FROM:<x@[" + ip + "]>\r\n")
		} else {
			l.send("AUTH PLAIN " + plainAuth(hBob, password) + "\r\n")
		}
		l.expect("2")
	case "http":
		// Port 80 only redirects: a served request, idle after it.
		l.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
		l.expect("HTTP/1.1 301")
	default: // a delivery from another relay whose body is still to come
		l.send("POST /mxdeliv HTTP/1.1\r\nHost: localhost\r\nX-Mail-From: <x@[" + ip + "]>\r\nX-Mail-To: <" + hBob + ">\r\n" +
			"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
		// The handler has the request once it asks for the body.
		l.expect("HTTP/1.1 100")
		if s, _ := l.read(); s != "" {
			t.Fatalf("after 100 Continue: %q", s)
		}
	}
	return l
}

// idle opens a connection from ip to port that never proves itself: the
// TLS handshake done on TLS ports, the greeting read where there is one.
func idle(t *testing.T, r *relaytest.Relay, ip, port string, alpn ...string) *line {
	t.Helper()
	tlsOn := port == "imaps" || port == "submissions" || port == "https"
	l := newLine(t, dialFrom(t, ip, r.AddrOf(port), tlsOn, alpn...))
	proto := port
	if len(alpn) > 0 {
		proto = alpn[0]
	}
	switch proto {
	case "imaps", "imap":
		l.expect("* OK")
	case "submissions", "submission", "smtp":
		l.expect("220 ")
	}
	return l
}

func TestConnectionCapsRefuseWhenEverySlotIsProven(t *testing.T) {
	r := cappedRelay(t, relay.ConnLimits{
		IMAP: 5, IMAPPerIP: 3,
		Submission: 10, SubmissionPerIP: 2,
		SMTP: 10, SMTPPerIP: 2,
		HTTPS: 10, HTTPSPerIP: 3,
		ProveWithinSeconds: 60,
	})
	// refused expects the "too many" answer and the close.
	refused := func(t *testing.T, ip, port string, tlsOn bool, want string, alpn ...string) string {
		t.Helper()
		l := newLine(t, dialFrom(t, ip, r.AddrOf(port), tlsOn, alpn...))
		lines := l.closedWithin(10 * time.Second)
		if len(lines) == 0 || !strings.HasPrefix(lines[0], want) {
			t.Fatalf("%s from %s over the cap: %q, want %q", port, ip, lines, want)
		}
		return lines[0]
	}

	t.Run("imap", func(t *testing.T) {
		var conns []*line
		for range 2 {
			conns = append(conns, proven(t, r, "127.0.4.1", "imaps"))
		}
		// 143 and 993 share the count.
		conns = append(conns, proven(t, r, "127.0.4.1", "imap"))
		bye := refused(t, "127.0.4.1", "imaps", true, "* BYE Too many connections")
		refused(t, "127.0.4.1", "imap", false, "* BYE Too many connections")
		record(t, "connection flood: 4th IMAP connection from one address (cap 3, all logged in)", "imaps, imap", bye+", closed")
		// Another address still gets in, up to the total.
		for range 2 {
			conns = append(conns, proven(t, r, "127.0.4.2", "imaps"))
		}
		refused(t, "127.0.4.3", "imaps", true, "* BYE Too many connections")
		record(t, "connection flood: 6th IMAP connection in total (cap 5, all logged in)", "imaps", "* BYE Too many connections, try again later, closed")
		// Slots come back when connections close.
		conns[0].c.Close()
		waitOpen(t, r, "imap", 4)
		l := imapSession(t, r, "127.0.4.3", hBob)
		l.send("n NOOP\r\n")
		l.imapTagged("n")
		l.c.Close()
		for _, c := range conns[1:] {
			c.c.Close()
		}
		waitOpen(t, r, "imap", 0)
	})
	t.Run("smtp", func(t *testing.T) {
		for _, port := range []string{"smtp", "submission", "submissions"} {
			tlsOn := port == "submissions"
			a := proven(t, r, "127.0.5.1", port)
			b := proven(t, r, "127.0.5.1", port)
			ans := refused(t, "127.0.5.1", port, tlsOn, "421 4.7.0 Too many connections")
			record(t, "connection flood: 3rd SMTP connection from one address (cap 2, both past MAIL or AUTH)", port, ans+", closed")
			idle(t, r, "127.0.5.2", port).c.Close()
			a.c.Close()
			b.c.Close()
			// 465 and 587 share the count: wait for the slots to return.
			waitOpen(t, r, "smtp", 0)
			waitOpen(t, r, "submission", 0)
		}
	})
	t.Run("https", func(t *testing.T) {
		conns := []*line{
			proven(t, r, "127.0.6.1", "https", "imap"),
			proven(t, r, "127.0.6.1", "https", "smtp"),
			proven(t, r, "127.0.6.1", "https", "http/1.1"),
		}
		waitOpen(t, r, "https", 3)
		web := refused(t, "127.0.6.1", "https", true, "HTTP/1.1 503", "http/1.1")
		imapOver443 := refused(t, "127.0.6.1", "https", true, "* BYE Too many connections", "imap")
		smtpOver443 := refused(t, "127.0.6.1", "https", true, "421 4.7.0", "smtp")
		record(t, "connection flood: 4th connection to 443 from one address (cap 3, all logged in or mid-request)", "https",
			fmt.Sprintf("by ALPN: http/1.1 %q, imap %q, smtp %q; closed", web, imapOver443, smtpOver443))
		for _, c := range conns {
			c.c.Close()
		}
		waitOpen(t, r, "https", 0)
	})
	stillServed(t, r)
}

// completeSession runs a whole normal session from ip on port and fails
// the test if any step does.
func completeSession(t *testing.T, r *relaytest.Relay, ip, port string, alpn ...string) {
	t.Helper()
	proto := port
	if len(alpn) > 0 {
		proto = alpn[0]
	}
	switch proto {
	case "imaps", "imap":
		l := proven(t, r, ip, port, alpn...)
		l.send("s SELECT INBOX\r\n")
		if s, _ := l.imapTagged("s"); !strings.HasPrefix(s, "s OK") {
			t.Fatalf("%s SELECT: %s", port, s)
		}
		l.send("z LOGOUT\r\n")
		l.imapTagged("z")
		l.c.Close()
	case "submissions", "submission", "smtp":
		l := proven(t, r, ip, port, alpn...)
		from := hBob
		if port == "smtp" {
			from = "x@[" + ip + "]"
		} else {
			l.send("MAIL FROM:<" + hBob + ">\r\n")
			l.expect("250 ")
		}
		l.send("RCPT TO:<" + hAlice + ">\r\nDATA\r\n")
		l.expect("250 ")
		l.expect("354 ")
		msg := strings.ReplaceAll(string(testmsg.Encrypted(from, hAlice, 0)), "\r\n.", "\r\n..")
		l.send(msg + "\r\n.\r\n")
		if s := l.smtpReply(); !strings.HasPrefix(s, "250 ") {
			t.Fatalf("%s DATA: %s", port, s)
		}
		l.send("QUIT\r\n")
		l.c.Close()
	default:
		c := httpFrom(ip)
		defer c.CloseIdleConnections()
		base := "https://" + r.AddrOf("https")
		if port == "http" {
			base = "http://" + r.AddrOf("http")
			c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		}
		resp, err := c.Get(base + "/")
		if err != nil {
			t.Fatalf("%s GET /: %v", port, err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			t.Fatalf("%s GET /: %s", port, resp.Status)
		}
	}
}

func TestIdleUnauthenticatedEvictedWhenCapsAreFull(t *testing.T) {
	r := cappedRelay(t, relay.ConnLimits{
		IMAP: 6, IMAPPerIP: 3,
		Submission: 6, SubmissionPerIP: 3,
		SMTP: 6, SMTPPerIP: 3,
		HTTPS: 6, HTTPSPerIP: 3,
		// Eviction, not the deadline, must make room here.
		ProveWithinSeconds: 120,
	})
	type listener struct {
		port, stat string
		alpn       []string
	}
	for _, ln := range []listener{
		{"imaps", "imap", nil}, {"imap", "imap", nil},
		{"submissions", "submission", nil}, {"submission", "submission", nil},
		{"smtp", "smtp", nil},
		{"https", "https", []string{"http/1.1"}}, {"https", "https", []string{"imap"}}, {"https", "https", []string{"smtp"}},
		{"http", "http", nil},
	} {
		name := ln.port
		if len(ln.alpn) > 0 {
			name += "/" + ln.alpn[0]
		}
		t.Run(name, func(t *testing.T) {
			// A logged-in (or mid-transaction) user holds a slot (port 80
			// only redirects, so nobody stays there)...
			var owner *line
			if ln.port != "http" {
				owner = proven(t, r, "127.0.20.9", ln.port, ln.alpn...)
			}
			// ...and idle clients from several addresses fill the rest.
			var idlers []*line
			for i := range 6 - r.ConnStats()[ln.stat] {
				idlers = append(idlers, idle(t, r, fmt.Sprintf("127.0.20.%d", 1+i%2), ln.port, ln.alpn...))
			}
			waitOpen(t, r, ln.stat, 6)
			// A newcomer gets in and completes a whole session: the
			// oldest idle connection made room.
			completeSession(t, r, "127.0.20.5", ln.port, ln.alpn...)
			idlers[0].closedWithin(10 * time.Second)
			// Per address too: with room in total, a 4th connection from
			// an address holding 3 idle ones takes the place of its own
			// oldest (idlers[2], not the older idlers[1] of another
			// address).
			waitOpen(t, r, ln.stat, 5)
			third := idle(t, r, "127.0.20.1", ln.port, ln.alpn...)
			fourth := idle(t, r, "127.0.20.1", ln.port, ln.alpn...)
			idlers[2].closedWithin(10 * time.Second)
			waitOpen(t, r, ln.stat, 6)
			// The proven connection was never taken.
			switch {
			case owner == nil:
			case ln.port == "smtp" || (len(ln.alpn) > 0 && ln.alpn[0] == "smtp") || strings.HasPrefix(ln.port, "submission"):
				owner.send("NOOP\r\n")
				owner.expect("250 ")
			case len(ln.alpn) > 0 && ln.alpn[0] == "http/1.1":
				// Mid-request: still open, waiting for the body.
				owner.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if got, err := owner.br.ReadString('\n'); !isTimeout(err) {
					t.Fatalf("request in progress was ended: %q %v", got, err)
				}
			default:
				owner.send("n NOOP\r\n")
				if s, _ := owner.imapTagged("n"); !strings.HasPrefix(s, "n OK") {
					t.Fatalf("logged-in connection: %s", s)
				}
			}
			record(t, "connection caps: the cap filled by connections that never log in, then a normal client", name,
				"the oldest idle connection is closed, the newcomer completes its session; logged-in connections stay")
			if owner != nil {
				owner.c.Close()
			}
			for _, l := range append(idlers, third, fourth) {
				l.c.Close()
			}
			waitOpen(t, r, ln.stat, 0)
		})
	}
	stillServed(t, r)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestIdleUnauthenticatedClosedAfterDeadline(t *testing.T) {
	r := cappedRelay(t, relay.ConnLimits{ProveWithinSeconds: 1})
	owner := proven(t, r, "127.0.21.9", "imaps")
	type c struct {
		port string
		tls  bool
		alpn []string
		send string
	}
	for _, tc := range []c{
		{"imaps", true, nil, ""}, {"imap", false, nil, ""},
		{"submissions", true, nil, "EHLO client.test\r\n"}, {"submission", false, nil, "EHLO client.test\r\n"},
		// EHLO alone proves nothing on port 25.
		{"smtp", false, nil, "EHLO client.test\r\n"},
		{"https", true, []string{"http/1.1"}, ""}, {"https", true, []string{"imap"}, ""},
		{"https", false, nil, ""}, // no TLS handshake at all
		{"http", false, nil, "GET / HTTP/1.1\r\n"},
	} {
		name := tc.port
		if len(tc.alpn) > 0 {
			name += "/" + tc.alpn[0]
		} else if tc.port == "https" {
			name += "/no-handshake"
		}
		t.Run(name, func(t *testing.T) {
			l := newLine(t, dialFrom(t, "127.0.21.1", r.AddrOf(tc.port), tc.tls, tc.alpn...))
			if tc.send != "" {
				l.send(tc.send)
			}
			start := time.Now()
			l.closedWithin(20 * time.Second)
			record(t, "connection that never logs in (prove_within_seconds = 1)", name,
				fmt.Sprintf("closed after %.1fs", time.Since(start).Seconds()))
		})
	}
	// The logged-in connection outlived them all.
	owner.send("n NOOP\r\n")
	if s, _ := owner.imapTagged("n"); !strings.HasPrefix(s, "n OK") {
		t.Fatalf("logged-in connection: %s", s)
	}
}

// TestSlowLoginIsNotCutOffByProveWithin: a client whose right password
// waits longer than prove_within_seconds for its check (here the delay of
// an account guessed from many addresses; in a storm, a slot for a slow
// hash) logs in all the same, over IMAP and SMTP, and a wrong password
// puts the connection back under the deadline.
func TestSlowLoginIsNotCutOffByProveWithin(t *testing.T) {
	r := cappedRelay(t, relay.ConnLimits{ProveWithinSeconds: 1})
	// Guesses from 30 addresses make every login from a new address wait.
	for i := range 30 {
		imapLoginFrom(t, r, fmt.Sprintf("127.0.22.%d", i+1), hAlice+" wrong-a", hAlice+" wrong-b")
	}
	relay.SlowAuthDelaysForTest(r.Server, 2500*time.Millisecond)
	if reply := imapLoginFrom(t, r, "127.0.22.200", hAlice+" "+password)[0]; !imapOK(reply) {
		t.Fatalf("IMAP login that waited past prove_within: %q", reply)
	}
	if ans := smtpAuthFrom(t, r, "127.0.22.201", hAlice, password); !strings.HasPrefix(ans, "235 ") {
		t.Fatalf("SMTP AUTH that waited past prove_within: %q", ans)
	}
	// A wrong password is not a proof: the deadline runs again.
	l := newLine(t, dialFrom(t, "127.0.22.202", r.AddrOf("imaps"), true))
	l.expect("* OK")
	l.send("w LOGIN " + hAlice + " wrong-c\r\n")
	if reply, _ := l.imapTagged("w"); imapOK(reply) {
		t.Fatal("wrong password accepted")
	}
	l.closedWithin(20 * time.Second)
}
