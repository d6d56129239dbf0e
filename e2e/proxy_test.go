package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// TestDeltaChatThroughProxy sets up two Delta Chat accounts whose every
// connection goes through the relay's Shadowsocks proxy (the ss:// URL
// that `chatrelay proxy show` prints, as proxy_url with proxy_enabled),
// has them chat end to end, and checks from the relay's metrics that
// their IMAP and SMTP came through the proxy: every successful login
// arrived on a proxied connection. Once per method.
func TestDeltaChatThroughProxy(t *testing.T) {
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	for _, method := range []string{"2022-blake3-aes-256-gcm", "chacha20-ietf-poly1305"} {
		t.Run(method, func(t *testing.T) {
			port := freePorts(t, 1)[0]
			r := startRelayWith(t, relayOptions{Config: fmt.Sprintf("[proxy]\nlisten = \"127.0.0.1:%d\"\nmethod = %q\n", port, method)})
			out, err := exec.Command(relayBinary(t), "proxy", "show", "--dev", "--no-qr", "--data", r.dir+"/data").Output()
			if err != nil {
				t.Fatalf("chatrelay proxy show: %v", err)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			url := lines[len(lines)-1]
			if !strings.HasPrefix(url, "ss://") || !strings.Contains(url, fmt.Sprintf(":%d", port)) {
				t.Fatalf("proxy show's last line %q is not the ss:// URL of port %d", url, port)
			}
			t.Logf("proxy URL %s", url)

			dc := dctest.StartT(t)
			ctx := t.Context()
			// Core's own QR parser takes the URL as a proxy.
			viaProxy := func(ctx context.Context, acc uint32, addr, pw string) error {
				if res, err := dc.CheckQR(ctx, acc, url); err != nil || res["kind"] != "proxy" {
					return fmt.Errorf("check_qr(%s) = %v, %v; want kind proxy", url, res, err)
				}
				if err := dc.SetConfig(ctx, acc, "proxy_url", url); err != nil {
					return err
				}
				if err := dc.SetConfig(ctx, acc, "proxy_enabled", "1"); err != nil {
					return err
				}
				return dc.AddOrUpdateTransport(ctx, acc, r.Transport(addr, pw))
			}
			alice := configure(ctx, t, dc, "alicepxy1", "alice-proxy-password", viaProxy)
			bob := configure(ctx, t, dc, "bobbypxy2", "bobby-proxy-password", viaProxy)
			aliceToBob, bobToAlice := vcardChat(ctx, t, dc, alice, bob, "hello bob, through the proxy")
			roundTrips(ctx, t, dc, alice, aliceToBob, bob, bobToAlice, 2)

			imapSessions := r.metric(t, "chatrelay_proxy_sessions_total", `target="imaps"`)
			smtpSessions := r.metric(t, "chatrelay_proxy_sessions_total", `target="submissions"`)
			imapLogins := r.metric(t, "chatrelay_logins_total", `proto="imap"`, `result="ok"`)
			smtpLogins := r.metric(t, "chatrelay_logins_total", `proto="smtp"`, `result="ok"`)
			t.Logf("proxied sessions: imaps %v, submissions %v; logins: imap %v, smtp %v; bytes in %v, out %v; refusals %v",
				imapSessions, smtpSessions, imapLogins, smtpLogins,
				r.metric(t, "chatrelay_proxy_bytes_total", `dir="in"`), r.metric(t, "chatrelay_proxy_bytes_total", `dir="out"`),
				r.metric(t, "chatrelay_proxy_refusals_total"))
			if imapLogins == 0 || smtpLogins == 0 {
				t.Fatalf("no IMAP (%v) or SMTP (%v) logins counted", imapLogins, smtpLogins)
			}
			if imapSessions < imapLogins || smtpSessions < smtpLogins {
				t.Errorf("logins bypassed the proxy: %v IMAP logins over %v proxied IMAP connections, %v SMTP logins over %v proxied submission connections",
					imapLogins, imapSessions, smtpLogins, smtpSessions)
			}
			if n := r.metric(t, "chatrelay_proxy_refusals_total"); n != 0 {
				t.Errorf("%v proxy connections of the real client were refused", n)
			}
		})
	}
}
