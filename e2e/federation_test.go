package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// TestDeltaChatFederationIPMode runs two IP-only relays, `serve --dev --ip
// 127.0.0.2` and `--ip 127.0.0.3`, with an account on each set up in core by
// a dclogin: code (ic=3: self-signed). The two meet by SecureJoin and write
// to each other, so every message crosses from one relay to the other: once
// over HTTPS /mxdeliv (the default) and once over SMTP to the peer's port
// 1025, with /mxdeliv turned off on both relays.
func TestDeltaChatFederationIPMode(t *testing.T) {
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	for _, tc := range []struct {
		name   string
		config string
		// overHTTPS: the senders log "delivered over HTTPS".
		overHTTPS bool
	}{
		{"mxdeliv", "", true},
		{"smtp", "[federation]\ndisable_mxdeliv = true", false},
	} {
		// Each variant's relays stop at the end of its subtest, freeing the
		// fixed dev ports for the next.
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r1 := startRelayWith(t, relayOptions{IP: "127.0.0.2", LogLevel: "debug", Config: tc.config})
			r2 := startRelayWith(t, relayOptions{IP: "127.0.0.3", LogLevel: "debug", Config: tc.config})
			dc := dctest.StartT(t)
			if !federate(t, dc, r1, r2) {
				return // steps left out by -run
			}

			for _, r := range []*relay{r1, r2} {
				log := r.log(t)
				if got := strings.Contains(log, `msg="delivered over HTTPS"`); got != tc.overHTTPS {
					t.Errorf("relay %s logged delivery over HTTPS: %v, want %v", r.Domain, got, tc.overHTTPS)
				}
				if !tc.overHTTPS && strings.Contains(log, "HTTPS delivery failed") {
					t.Errorf("relay %s tried /mxdeliv with disable_mxdeliv set", r.Domain)
				}
				// SecureJoin (4 messages) and 4 each way after it.
				out, in := r.metric(t, "chatrelay_deliveries_total", `kind="out"`), r.metric(t, "chatrelay_deliveries_total", `kind="in"`)
				if out < 4 || in < 4 {
					t.Errorf("relay %s counted %v deliveries out and %v in, want at least 4 each", r.Domain, out, in)
				}
				t.Logf("relay %s: %v deliveries out, %v in", r.Domain, out, in)
			}
			targets := dc.ConnectionTargets()
			for _, r := range []*relay{r1, r2} {
				if !slices.Contains(targets, r.Host) {
					t.Errorf("core's log showed connections to %q, not to the relay at %s", targets, r.Host)
				}
			}
			t.Logf("core's connection targets: %q", targets)
			t.Logf("TIME federation over %s, whole variant: %v", tc.name, time.Since(start).Round(time.Millisecond))
		})
	}
}

// federate puts alice on r1 and bob on r2, both by dclogin: code, has them
// meet by SecureJoin and exchange messages both ways. It reports whether
// every step ran.
func federate(t *testing.T, dc *dctest.RPC, r1, r2 *relay) bool {
	ctx := t.Context()
	byQR := func(r *relay) func(ctx context.Context, acc uint32, addr, pw string) error {
		return func(ctx context.Context, acc uint32, addr, pw string) error {
			qr := dctest.DCLoginQR(r.Transport(addr, pw))
			if !strings.Contains(qr, "ic=3") {
				return fmt.Errorf("dclogin code %s does not accept the self-signed certificate (ic=3)", qr)
			}
			if res, err := dc.CheckQR(ctx, acc, qr); err != nil || res["kind"] != "login" {
				return fmt.Errorf("check_qr(%s) = %v, %v; want kind login", qr, res, err)
			}
			return dc.AddTransportFromQR(ctx, acc, qr)
		}
	}
	var alice, bob *account
	if !t.Run("dclogin on both relays", func(t *testing.T) {
		alice = configureAt(ctx, t, dc, "alice0001", r1.Domain, "alice-long-password-1", byQR(r1))
		bob = configureAt(ctx, t, dc, "bobby0002", r2.Domain, "bob-long-password-2", byQR(r2))
		// Each account is on its own relay, and only there.
		if err := imapLogin(r1, alice.addr, alice.password); err != nil {
			t.Errorf("IMAP login as %s on %s: %v", alice.addr, r1.Domain, err)
		}
		if err := imapLogin(r2, bob.addr, bob.password); err != nil {
			t.Errorf("IMAP login as %s on %s: %v", bob.addr, r2.Domain, err)
		}
		if err := imapLogin(r1, bob.addr, bob.password); err == nil {
			t.Errorf("relay %s let %s log in", r1.Domain, bob.addr)
		}
	}) {
		t.FailNow()
	}
	var aliceChat, bobChat uint32
	if !t.Run("securejoin across relays", func(t *testing.T) {
		needs(t, alice, bob)
		// secureJoin also sends one message each way in the new chat.
		aliceChat, bobChat = secureJoin(ctx, t, dc, alice, bob)
	}) {
		t.FailNow()
	}
	ran := false
	t.Run("messages both ways", func(t *testing.T) {
		needs(t, alice, bob)
		if aliceChat == 0 {
			t.Skip("needs the chats from the securejoin step")
		}
		ran = true
		ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		for i, text := range []string{"über die Föderation 🚀", "line one\nline two", "<b>not html</b> & \"quotes\""} {
			if m := exchange(ctx, t, dc, alice, aliceChat, bob, fmt.Sprintf("%d a->b %s", i, text)); m.ChatID != bobChat {
				t.Errorf("%s got %q in chat %d, want %d", bob.addr, m.Text, m.ChatID, bobChat)
			}
			if m := exchange(ctx, t, dc, bob, bobChat, alice, fmt.Sprintf("%d b->a %s", i, text)); m.ChatID != aliceChat {
				t.Errorf("%s got %q in chat %d, want %d", alice.addr, m.Text, m.ChatID, aliceChat)
			}
		}
	})
	return ran
}
