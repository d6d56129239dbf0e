package e2e

import (
	"context"
	"crypto/tls"
	"html"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// An invite on a self-signed relay, the way its operator and user meet
// it: `chatrelay invite create` prints a link that works there (core
// refuses DCACCOUNT: over a self-signed certificate with UnknownIssuer),
// opening the link spends nothing, the page's button makes the account,
// and Delta Chat sets itself up from the dclogin: code the page shows.
func TestInviteOnSelfSignedRelay(t *testing.T) {
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	r := startRelayWith(t, relayOptions{Config: `registration = "invite"`})
	out, err := exec.Command(relayBinary(t), "invite", "create", "--data", filepath.Join(r.dir, "data")).Output()
	if err != nil {
		t.Fatalf("invite create: %v", err)
	}
	link := strings.TrimSpace(string(out))
	u, err := url.Parse(link)
	if err != nil || u.Scheme != "https" || u.Path != "/" || u.Query().Get("token") == "" {
		t.Fatalf("invite create printed %q, want https://HOST/?token=T", link)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	read := func(resp *http.Response, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s %s: HTTP %d %v", resp.Request.Method, link, resp.StatusCode, err)
		}
		return string(b)
	}
	// Twice, as a link preview and then the reader would.
	for range 2 {
		if page := read(client.Get(link)); !strings.Contains(page, `<form method="post">`) || strings.Contains(page, "dclogin:") {
			t.Fatalf("invite page without a button, or with a code:\n%s", page)
		}
	}
	page := read(client.Post(link, "application/x-www-form-urlencoded", nil))
	m := regexp.MustCompile(`<textarea[^>]*>([^<]+)</textarea>`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no code after the button:\n%s", page)
	}
	code := html.UnescapeString(m[1])
	login, err := url.Parse(code)
	if err != nil || login.Scheme != "dclogin" || login.Query().Get("ic") != "3" {
		t.Fatalf("page code %q, want dclogin: with ic=3", code)
	}
	name, domain, _ := strings.Cut(login.Opaque, "@")

	dc := dctest.StartT(t)
	configureAt(t.Context(), t, dc, name, domain, login.Query().Get("p"), func(ctx context.Context, acc uint32, _, _ string) error {
		return dc.AddTransportFromQR(ctx, acc, code)
	})
	// The invite was good for one account: it is spent now.
	resp, err := client.Post(link, "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "not valid") {
		t.Fatalf("second POST of a one-use invite:\n%s", b)
	}
}
