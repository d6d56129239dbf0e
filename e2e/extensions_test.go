package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// TestDeltaChatIMAPExtensions shows, from the IMAP wire, that core uses the
// extensions the relay offers: COMPRESS=DEFLATE, METADATA and QUOTA. One
// account's IMAP goes through a recording proxy (dctest.IMAPProxy, which
// ends TLS and reads on through DEFLATE); the test then exchanges messages
// with a second account, so core's compressed session also carries real
// traffic, and reads what core sent and what the relay answered.
//
// A push token (SETMETADATA /private/devicetoken) is not part of it: core
// stores one only when the app hands it a token from the platform's push
// service (dc_accounts_set_push_device_token in the C API), and
// deltachat-rpc-server has no call for that (none in its OpenRPC schema,
// 2.62.0). The test logs whether one appeared.
func TestDeltaChatIMAPExtensions(t *testing.T) {
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	r := startRelay(t)
	proxy, err := dctest.NewIMAPProxy(net.JoinHostPort(r.Host, strconv.Itoa(r.IMAPS)))
	if err != nil {
		t.Fatal(err)
	}
	dc := dctest.StartT(t)
	// Cleanups run last first: the proxy closes before core and the relay.
	t.Cleanup(func() { proxy.Close() })
	ctx := t.Context()

	var alice, bob *account
	if !t.Run("configure through the proxy", func(t *testing.T) {
		alice = configure(ctx, t, dc, "alice0ext", "alice-long-password-ext", func(ctx context.Context, acc uint32, addr, pw string) error {
			p := r.Transport(addr, pw)
			p.IMAPServer, p.IMAPPort = "127.0.0.1", proxy.Addr().Port
			return dc.AddOrUpdateTransport(ctx, acc, p)
		})
		bob = configure(ctx, t, dc, "bobby0ext", "bob-long-password-ext", func(ctx context.Context, acc uint32, addr, pw string) error {
			return dc.AddOrUpdateTransport(ctx, acc, r.Transport(addr, pw))
		})
	}) {
		t.FailNow()
	}
	t.Run("messages over the compressed session", func(t *testing.T) {
		needs(t, alice, bob)
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		aliceChat, bobChat := vcardChat(ctx, t, dc, bob, alice, "hello alice, the wire is listening")
		for i := range 2 {
			// Core shows at most about 4 KB of text; this stays under.
			long := strings.TrimSpace(strings.Repeat(fmt.Sprintf("compressible line %d. ", i), 100))
			exchange(ctx, t, dc, bob, aliceChat, alice, long)
			exchange(ctx, t, dc, alice, bobChat, bob, fmt.Sprintf("alice -> bob %d", i))
		}
	})

	// Core fetches quota on its inbox loop (at most once a minute), which
	// may come a moment after configuring; showing connectivity reads it.
	t.Run("wire", func(t *testing.T) {
		needs(t, alice)
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		want := map[string]*regexp.Regexp{
			"COMPRESS DEFLATE": regexp.MustCompile(`(?i)^\S+ COMPRESS DEFLATE$`),
			"GETMETADATA":      regexp.MustCompile(`(?i)^\S+ GETMETADATA `),
			"GETQUOTAROOT":     regexp.MustCompile(`(?i)^\S+ GETQUOTAROOT `),
		}
		wantReply := map[string]*regexp.Regexp{
			"* METADATA":  regexp.MustCompile(`(?i)^\* METADATA `),
			"* QUOTAROOT": regexp.MustCompile(`(?i)^\* QUOTAROOT `),
			"* QUOTA":     regexp.MustCompile(`(?i)^\* QUOTA \S+ \(STORAGE \d+ \d+\)`),
		}
		var sessions []dctest.IMAPSession
		var missing []string
		for {
			sessions = proxy.Sessions()
			missing = missingLines(sessions, want, wantReply)
			if len(missing) == 0 {
				break
			}
			if _, err := dc.Call(ctx, "get_connectivity_html", alice.id); err != nil {
				t.Fatal(err)
			}
			select {
			case <-ctx.Done():
				t.Fatalf("after %d IMAP sessions, core never sent or the relay never answered %q; the sessions:\n%s", len(sessions), missing, describeSessions(sessions))
			case <-time.After(200 * time.Millisecond):
			}
		}
		var compressed int
		var token bool
		keys := map[string]bool{}
		getMetadata := regexp.MustCompile(`(?i)^\S+ GETMETADATA (.*)$`)
		quota := regexp.MustCompile(`(?i)^\* QUOTA `)
		for i, s := range sessions {
			if s.Err != nil {
				t.Errorf("session %d: %v", i, s.Err)
			}
			if s.Compressed {
				compressed++
			}
			for _, resp := range s.Responses {
				if wantReply["* METADATA"].MatchString(resp) || wantReply["* QUOTAROOT"].MatchString(resp) || quota.MatchString(resp) {
					t.Logf("session %d, relay: %s", i, resp)
				}
			}
			for _, c := range s.Commands {
				if strings.Contains(strings.ToLower(c), "/private/devicetoken") {
					token = true
				}
				if m := getMetadata.FindStringSubmatch(c); m != nil {
					keys[m[1]] = true
				}
			}
		}
		t.Logf("%d IMAP sessions through the proxy, %d compressed; GETMETADATA %q", len(sessions), compressed, sortedKeys(keys))
		if token {
			t.Logf("core sent a push token (/private/devicetoken)")
		} else {
			t.Logf("core sent no push token (/private/devicetoken): deltachat-rpc-server has no way to set one")
		}
		// One session did it all, GETMETADATA and GETQUOTAROOT read out of
		// the DEFLATE stream after COMPRESS, and the answers likewise.
		whole := -1
		for i, s := range sessions {
			if s.Compressed && missingLines([]dctest.IMAPSession{s}, want, wantReply) == nil {
				whole = i
				break
			}
		}
		if whole < 0 {
			t.Fatalf("no one session has COMPRESS, then METADATA and QUOTA inside the compressed stream:\n%s", describeSessions(sessions))
		}
		t.Logf("session %d, from the start:\n%s", whole, describeSessions(sessions[whole:whole+1]))
	})

	t.Run("core log and connectivity", func(t *testing.T) {
		needs(t, alice)
		log, err := os.ReadFile(filepath.Join(dc.Dir(), "core.log"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range []string{"Enabling IMAP compression.", "Server supports metadata", "Updated quota."} {
			if !strings.Contains(string(log), line) {
				t.Errorf("core's log never says %q", line)
			}
		}
		var html string
		if err := dc.CallResult(ctx, &html, "get_connectivity_html", alice.id); err != nil {
			t.Fatal(err)
		}
		// The quota the relay reports: "... KiB of ... MiB used" or a
		// percentage, depending on core's version.
		if !regexp.MustCompile(`(?i)\bused\b|\d+ ?%`).MatchString(html) {
			t.Errorf("connectivity view shows no storage use:\n%s", html)
		}
		if m := regexp.MustCompile(`(?i)[^<>]*\bused\b[^<>]*`).FindString(html); m != "" {
			t.Logf("connectivity view: %s", strings.TrimSpace(m))
		}
	})
}

// missingLines lists the names of the patterns no session matched: want
// among commands, wantReply among responses.
func missingLines(sessions []dctest.IMAPSession, want, wantReply map[string]*regexp.Regexp) []string {
	var missing []string
	check := func(patterns map[string]*regexp.Regexp, lines func(dctest.IMAPSession) []string) {
	pattern:
		for name, re := range patterns {
			for _, s := range sessions {
				for _, l := range lines(s) {
					if re.MatchString(l) {
						continue pattern
					}
				}
			}
			missing = append(missing, name)
		}
	}
	check(want, func(s dctest.IMAPSession) []string { return s.Commands })
	check(wantReply, func(s dctest.IMAPSession) []string { return s.Responses })
	return missing
}

// describeSessions prints each session's commands and the relay's tagged
// replies (untagged ones too, shortened), for reading in a test log.
func describeSessions(sessions []dctest.IMAPSession) string {
	var b strings.Builder
	short := func(s string) string {
		if len(s) > 160 {
			return s[:160] + "..."
		}
		return s
	}
	for i, s := range sessions {
		fmt.Fprintf(&b, "session %d (compressed %v, err %v):\n", i, s.Compressed, s.Err)
		for j, c := range s.Commands {
			if j == 30 {
				fmt.Fprintf(&b, "  C: (%d more)\n", len(s.Commands)-j)
				break
			}
			if f := strings.Fields(c); len(f) > 1 && strings.EqualFold(f[1], "LOGIN") {
				c = f[0] + " LOGIN ..." // no passwords in logs
			}
			fmt.Fprintf(&b, "  C: %s\n", short(c))
		}
		for j, r := range s.Responses {
			if j == 40 {
				fmt.Fprintf(&b, "  S: (%d more)\n", len(s.Responses)-j)
				break
			}
			fmt.Fprintf(&b, "  S: %s\n", short(r))
		}
	}
	return b.String()
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
