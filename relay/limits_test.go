package relay_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

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

func TestConnectionCapsPerAddressAndTotal(t *testing.T) {
	r := hostileRelay(t, func(c *relaytest.Cfg) {
		c.Limits = relay.ConnLimits{
			IMAP: 5, IMAPPerIP: 3,
			Submission: 10, SubmissionPerIP: 2,
			SMTP: 10, SMTPPerIP: 2,
			HTTPS: 10, HTTPSPerIP: 3,
		}
	})
	// held opens a connection that got the protocol greeting.
	held := func(t *testing.T, ip, port string, tlsOn bool, greet string, alpn ...string) *line {
		t.Helper()
		l := newLine(t, dialFrom(t, ip, r.AddrOf(port), tlsOn, alpn...))
		l.expect(greet)
		return l
	}
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
			conns = append(conns, held(t, "127.0.4.1", "imaps", true, "* OK"))
		}
		// 143 and 993 share the count.
		conns = append(conns, held(t, "127.0.4.1", "imap", false, "* OK"))
		bye := refused(t, "127.0.4.1", "imaps", true, "* BYE Too many connections")
		refused(t, "127.0.4.1", "imap", false, "* BYE Too many connections")
		record(t, "connection flood: 4th IMAP connection from one address (cap 3)", "imaps, imap", bye+", closed")
		// Another address still gets in, up to the total.
		for range 2 {
			conns = append(conns, held(t, "127.0.4.2", "imaps", true, "* OK"))
		}
		refused(t, "127.0.4.3", "imaps", true, "* BYE Too many connections")
		record(t, "connection flood: 6th IMAP connection in total (cap 5)", "imaps", "* BYE Too many connections, try again later, closed")
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
			a := held(t, "127.0.5.1", port, tlsOn, "220 ")
			b := held(t, "127.0.5.1", port, tlsOn, "220 ")
			ans := refused(t, "127.0.5.1", port, tlsOn, "421 4.7.0 Too many connections")
			record(t, "connection flood: 3rd SMTP connection from one address (cap 2)", port, ans+", closed")
			held(t, "127.0.5.2", port, tlsOn, "220 ").c.Close()
			a.c.Close()
			b.c.Close()
			// 465 and 587 share the count: wait for the slots to return.
			waitOpen(t, r, "smtp", 0)
			waitOpen(t, r, "submission", 0)
		}
	})
	t.Run("https", func(t *testing.T) {
		var conns []*line
		for range 3 {
			conns = append(conns, newLine(t, dialFrom(t, "127.0.6.1", r.AddrOf("https"), true, "http/1.1")))
		}
		waitOpen(t, r, "https", 3)
		web := refused(t, "127.0.6.1", "https", true, "HTTP/1.1 503", "http/1.1")
		imapOver443 := refused(t, "127.0.6.1", "https", true, "* BYE Too many connections", "imap")
		smtpOver443 := refused(t, "127.0.6.1", "https", true, "421 4.7.0", "smtp")
		record(t, "connection flood: 4th connection to 443 from one address (cap 3)", "https",
			fmt.Sprintf("by ALPN: http/1.1 %q, imap %q, smtp %q; closed", web, imapOver443, smtpOver443))
		for _, c := range conns {
			c.c.Close()
		}
		waitOpen(t, r, "https", 0)
	})
	stillServed(t, r)
}
