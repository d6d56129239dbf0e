package dctest

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDCLoginQREscapesPassword(t *testing.T) {
	p := TransportParams{
		Addr:              "abcdefghi@localhost",
		Password:          "p&w=d +%?#/x",
		IMAPServer:        "127.0.0.1",
		IMAPPort:          1993,
		IMAPSecurity:      SecuritySSL,
		SMTPServer:        "127.0.0.1",
		SMTPPort:          1465,
		SMTPSecurity:      SecuritySSL,
		CertificateChecks: CertsAcceptInvalid,
	}
	qr := DCLoginQR(p)
	addr, query, ok := strings.Cut(strings.TrimPrefix(qr, "dclogin:"), "?")
	if !ok || addr != p.Addr {
		t.Fatalf("DCLoginQR = %q: want dclogin:%s?...", qr, p.Addr)
	}
	// Core decodes the query as application/x-www-form-urlencoded.
	v, err := url.ParseQuery(query)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"p": p.Password, "v": "1", "ih": "127.0.0.1", "ip": "1993", "is": "ssl",
		"sh": "127.0.0.1", "sp": "1465", "ss": "ssl", "ic": "3",
	}
	for k, w := range want {
		if got := v.Get(k); got != w {
			t.Errorf("%s = %q, want %q (qr %s)", k, got, w, qr)
		}
	}
	if len(v) != len(want) {
		t.Errorf("qr %s has keys %v, want exactly %v", qr, v, want)
	}
}

func TestTargetHost(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"127.0.0.1:465:tls.", "127.0.0.1"},
		{"127.0.0.1", "127.0.0.1"},
		{"127.0.0.1.", "127.0.0.1"},
		{"[::1]:993", "::1"},
		{"https://autoconfig.example.org/mail/config-v1.1.xml", "autoconfig.example.org"},
		{"imap.example.org:993", "imap.example.org"},
		{"localhost", "localhost"},
		{"server", ""},
		{"`x`", ""},
	} {
		if got := targetHost(tc.in); got != tc.want {
			t.Errorf("targetHost(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNetLogFindsTargets(t *testing.T) {
	n := newNetLog()
	for _, line := range []string{
		"INFO deltachat::net::dns: No memory-cached DNS resolution for 127.0.0.1 available, waiting for the resolver. account_id=1",
		"INFO deltachat::smtp: SMTP trying to connect to 127.0.0.1:465:tls. account_id=1",
		"INFO deltachat::imap::client: Attempting IMAP connection to 127.0.0.1 (127.0.0.1:993). account_id=1",
		"INFO deltachat::imap::client: Attempting IMAP connection to imap.example.org (93.184.215.14:993). account_id=1",
		"WARN deltachat::smtp::connect: SMTP failed to connect to 127.0.0.1 (127.0.0.1:465): Connection to 127.0.0.1:465 failed",
		"INFO deltachat::configure: Configure ... account_id=1",
	} {
		n.scanLine(line)
	}
	r := &RPC{net: n}
	if got, want := r.ConnectionTargets(), []string{"127.0.0.1", "93.184.215.14", "imap.example.org"}; !slices.Equal(got, want) {
		t.Errorf("ConnectionTargets = %q, want %q", got, want)
	}
	if got, want := r.NonLoopbackTargets(), []string{"93.184.215.14", "imap.example.org"}; !slices.Equal(got, want) {
		t.Errorf("NonLoopbackTargets = %q, want %q", got, want)
	}
	// A domain of the test's own namespace, and names under it, are
	// local; a name that merely ends the same way is not.
	for _, line := range []string{
		"INFO deltachat::imap::client: Attempting IMAP connection to _relay.test (127.0.0.1:993). account_id=1",
		"INFO deltachat::net::dns: No memory-cached DNS resolution for autoconfig._relay.test available",
		"INFO deltachat::smtp: SMTP trying to connect to x_relay.test:465:tls. account_id=1",
	} {
		n.scanLine(line)
	}
	r.LocalDomain("_relay.test")
	if got, want := r.NonLoopbackTargets(), []string{"93.184.215.14", "imap.example.org", "x_relay.test"}; !slices.Equal(got, want) {
		t.Errorf("NonLoopbackTargets with LocalDomain = %q, want %q", got, want)
	}
}

// TestCoreOffline drives the real core with no server at all: everything an
// account can do before it is configured.
func TestCoreOffline(t *testing.T) {
	rpc := StartT(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	info, err := rpc.SystemInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v := info["deltachat_core_version"]; !strings.HasPrefix(v, "v2.") {
		t.Errorf("deltachat_core_version = %q, want v2.x", v)
	}
	t.Logf("core %s, sqlite %s", info["deltachat_core_version"], info["sqlite_version"])

	acc, err := rpc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := rpc.IsConfigured(ctx, acc); err != nil || ok {
		t.Errorf("IsConfigured(new account) = %v, %v; want false", ok, err)
	}
	if err := rpc.SetConfig(ctx, acc, "displayname", "Alice"); err != nil {
		t.Fatal(err)
	}
	if v, err := rpc.GetConfig(ctx, acc, "displayname"); err != nil || v != "Alice" {
		t.Errorf("displayname = %q, %v; want Alice", v, err)
	}
	if v, err := rpc.GetConfig(ctx, acc, "webxdc_realtime_enabled"); err != nil || v != "0" {
		t.Errorf("webxdc_realtime_enabled = %q, %v; want 0", v, err)
	}

	// Unknown methods and bad parameters come back as errors, not hangs.
	var rpcErr *Error
	if _, err := rpc.Call(ctx, "no_such_method"); !errors.As(err, &rpcErr) {
		t.Errorf("no_such_method: err = %v, want an *Error", err)
	}
	if _, err := rpc.MakeVcard(ctx, acc, SelfContactID); !errors.As(err, &rpcErr) {
		t.Errorf("make_vcard before configuring: err = %v, want an *Error", err)
	}

	qr := DCLoginQR(TransportParams{
		Addr: "abcdefghi@localhost", Password: "pass word&more",
		IMAPServer: "127.0.0.1", IMAPPort: 1993, IMAPSecurity: SecuritySSL,
		SMTPServer: "127.0.0.1", SMTPPort: 1465, SMTPSecurity: SecuritySSL,
		CertificateChecks: CertsAcceptInvalid,
	})
	res, err := rpc.CheckQR(ctx, acc, qr)
	if err != nil {
		t.Fatalf("check_qr(%s): %v", qr, err)
	}
	if res["kind"] != "login" || res["address"] != "abcdefghi@localhost" {
		t.Errorf("check_qr(%s) = %v, want kind login, address abcdefghi@localhost", qr, res)
	}

	// Concurrent calls are matched to their replies by id.
	errs := make(chan error, 20)
	for i := range 20 {
		go func() {
			name := "n" + strings.Repeat("x", i)
			if err := rpc.SetConfig(ctx, acc, "selfstatus", name); err != nil {
				errs <- err
				return
			}
			info, err := rpc.SystemInfo(ctx)
			if err == nil && info["deltachat_core_version"] == "" {
				err = errors.New("empty system info")
			}
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}

	// A second account has its own event queue, and events arrive.
	acc2, err := rpc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if acc2 == acc {
		t.Fatalf("second account has the same id %d", acc)
	}
	if _, err := rpc.WaitEvent(ctx, acc2, "", nil); err != nil {
		t.Errorf("no event for the new account %d: %v", acc2, err)
	}

	// Waits end with the context.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := rpc.WaitEvent(short, acc, "IncomingMsg", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitEvent past its deadline: err = %v, want DeadlineExceeded", err)
	}

	rpc.Close()
	if _, err := rpc.SystemInfo(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("call after Close: err = %v, want ErrClosed", err)
	}
}
