package relay_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

func scrape(t *testing.T, r *relaytest.Relay) string {
	t.Helper()
	resp, err := http.Get("http://" + r.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metricLine(page, prefix string) string {
	for _, l := range strings.Split(page, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func TestMetricsMoveWithTraffic(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice, bob = "alicealic@localhost", "bobbobbob@localhost"
	login(t, r, alice).Close()
	login(t, r, bob).Close()
	dialIMAP(t, r, nil).Login(bob, "wrong-password").Wait()
	if err := submit(t, r, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
		t.Fatal(err)
	}
	submit(t, r, alice, password, alice, []string{bob}, testmsg.Cleartext(alice, bob))
	gated, _, _ := relay.HandshakeGateForTest(r.Server)
	if gated < 5 {
		t.Errorf("%d TLS handshakes gated, want one per connection (5)", gated)
	}
	page := scrape(t, r)
	for _, want := range []string{
		fmt.Sprintf("chatrelay_tls_handshakes_gated_total %d", gated),
		`chatrelay_tls_handshake_gate_timeouts_total 0`,
		`chatrelay_accounts 2`,
		`chatrelay_logins_total{proto="imap",result="ok"} 2`,
		`chatrelay_logins_total{proto="imap",result="failed"} 1`,
		`chatrelay_deliveries_total{kind="local"} 1`,
		`chatrelay_refusals_total{reason="523 5.7.1"} 1`,
	} {
		if metricLine(page, want) == "" {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(page, "alicealic") || strings.Contains(page, "bobbobbob") {
		t.Error("metrics name a user")
	}
}
