package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// TestDeltaChatOverHTTPSPort sets up two core accounts whose IMAP and SMTP
// servers are both the relay's HTTPS listener (the 443-style port), with
// implicit TLS and the self-signed certificate accepted, and has them
// exchange encrypted messages. Core asks for ALPN "imap" and "smtp" on every
// port but 993 and 465, which is how the relay tells them from web traffic,
// so a free high port serves as well as 443 itself.
//
// The relay runs with its dedicated IMAP and submission listeners turned
// off, so everything core did went through the HTTPS listener; the test
// checks that the relay listed no other mail listener and counted core's
// IMAP and SMTP logins and open IMAP connections, and that core's log shows
// connections to the HTTPS port only.
func TestDeltaChatOverHTTPSPort(t *testing.T) {
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	r := startRelayWith(t, relayOptions{OnlyHTTPS: true, LogLevel: "debug"})
	dc := dctest.StartT(t)
	ctx := t.Context()

	// What the relay says it listens on (its welcome text on stdout).
	listening := r.listeners(t)
	for _, name := range []string{"imaps", "imap", "submissions", "submission"} {
		if a, ok := listening[name]; ok {
			t.Fatalf("relay listens for %s on %s; the test needs it off", name, a)
		}
	}
	if want := r.Host + ":" + strconv.Itoa(r.HTTPS); listening["https"] != want {
		t.Fatalf("relay's https listener is %q, want %q (listeners: %v)", listening["https"], want, listening)
	}

	via443 := func(ctx context.Context, acc uint32, addr, pw string) error {
		return dc.AddOrUpdateTransport(ctx, acc, dctest.TransportParams{
			Addr: addr, Password: pw,
			IMAPServer: r.Host, IMAPPort: r.HTTPS, IMAPSecurity: dctest.SecuritySSL,
			SMTPServer: r.Host, SMTPPort: r.HTTPS, SMTPSecurity: dctest.SecuritySSL,
			CertificateChecks: dctest.CertsAcceptInvalid,
		})
	}
	var alice, bob *account
	if !t.Run("configure", func(t *testing.T) {
		alice = configure(ctx, t, dc, "alice0443", "alice-long-password-443", via443)
		bob = configure(ctx, t, dc, "bobby0443", "bob-long-password-443", via443)
	}) {
		t.FailNow()
	}
	t.Run("encrypted messages", func(t *testing.T) {
		needs(t, alice, bob)
		ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		aliceChat, bobChat := vcardChat(ctx, t, dc, alice, bob, "hello bob, over the https port")
		for i := range 2 {
			exchange(ctx, t, dc, alice, aliceChat, bob, fmt.Sprintf("a->b %d via ALPN imap/smtp", i))
			exchange(ctx, t, dc, bob, bobChat, alice, fmt.Sprintf("b->a %d via ALPN imap/smtp", i))
		}
	})

	t.Run("relay side", func(t *testing.T) {
		needs(t, alice, bob)
		imapOK := r.metric(t, "chatrelay_logins_total", `proto="imap"`, `result="ok"`)
		smtpOK := r.metric(t, "chatrelay_logins_total", `proto="smtp"`, `result="ok"`)
		if imapOK < 2 || smtpOK < 2 {
			t.Errorf("relay counted %v IMAP and %v SMTP logins, want at least 2 of each (one per account)", imapOK, smtpOK)
		}
		// Core keeps its IMAP connections open (IDLE); with no IMAP
		// listener but HTTPS, they are all HTTPS connections.
		conns := r.metric(t, "chatrelay_imap_connections")
		if conns < 2 {
			t.Errorf("relay has %v open IMAP connections, want at least 2 (one per account)", conns)
		}
		t.Logf("relay: %v IMAP logins, %v SMTP logins, %v open IMAP connections, all through https %s:%d", imapOK, smtpOK, conns, r.Host, r.HTTPS)
		if log := r.log(t); strings.Contains(log, "level=ERROR") {
			t.Errorf("relay logged errors:\n%s", grepLines(log, "level=ERROR"))
		}
	})

	t.Run("core side", func(t *testing.T) {
		needs(t, alice, bob)
		log, err := os.ReadFile(filepath.Join(dc.Dir(), "core.log"))
		if err != nil {
			t.Fatal(err)
		}
		// "Attempting IMAP connection to 127.0.0.1 (127.0.0.1:PORT)",
		// "Attempting SMTP connection to 127.0.0.1 (127.0.0.1:PORT)".
		re := regexp.MustCompile(`Attempting (IMAP|SMTP) connection to \S+ \(([^)]+)\)`)
		count := map[string]int{}
		for _, m := range re.FindAllStringSubmatch(string(log), -1) {
			if m[2] != r.Host+":"+strconv.Itoa(r.HTTPS) {
				t.Errorf("core connected for %s to %s, not to the https listener %s:%d", m[1], m[2], r.Host, r.HTTPS)
			}
			count[m[1]]++
		}
		if count["IMAP"] == 0 || count["SMTP"] == 0 {
			t.Errorf("core's log shows %d IMAP and %d SMTP connection attempts, want some of each", count["IMAP"], count["SMTP"])
		}
		t.Logf("core: %d IMAP and %d SMTP connections, all to %s:%d", count["IMAP"], count["SMTP"], r.Host, r.HTTPS)
	})
}

// listeners reads the listeners the relay announced on stdout at start:
// lines "  NAME  HOST:PORT" after "chatrelay ... serving".
func (r *relay) listeners(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	re := regexp.MustCompile(`^  (imaps|imap|submissions|submission|smtp|https)\s+(\S+)$`)
	for line := range strings.Lines(r.log(t)) {
		if m := re.FindStringSubmatch(strings.TrimRight(line, "\n")); m != nil {
			out[m[1]] = m[2]
		}
	}
	if len(out) == 0 {
		t.Fatalf("relay announced no listeners; output:\n%s", tail(r.logPath, 30))
	}
	return out
}

func grepLines(s, word string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if strings.Contains(line, word) {
			b.WriteString(line)
		}
	}
	return b.String()
}
