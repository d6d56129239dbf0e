package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// cli runs the admin commands in-process, as main wires them.
func cli(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := &cobra.Command{Use: "chatrelay", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(adminCmds()...)
	var out, errOut bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func startAdminRelay(t *testing.T) *relaytest.Relay {
	t.Helper()
	r := relaytest.Start(t, nil)
	if _, err := os.Stat(relay.ControlSocketPath(r.Dir)); err != nil {
		t.Fatalf("the relay serves no control socket: %v", err)
	}
	return r
}

func loginOK(r *relaytest.Relay, addr, pw string) bool {
	_, err := r.Store().Login(addr, pw, nil)
	return err == nil
}

var passwordRe = regexp.MustCompile(`(?m)^password: (\S+)$`)

func TestAdminCLIAccounts(t *testing.T) {
	r := startAdminRelay(t)
	data := "--data=" + r.Dir

	out, _, err := cli(t, "", "account", "add", "admin@localhost", data)
	m := passwordRe.FindStringSubmatch(out)
	if err != nil || m == nil || len(m[1]) < 20 {
		t.Fatalf("account add: %q %v", out, err)
	}
	if !loginOK(r, "admin@localhost", m[1]) {
		t.Fatal("printed password does not log in")
	}
	out, _, err = cli(t, "chosen-password\n", "account", "add", "--password-stdin", "Second@LOCALHOST", data)
	if err != nil || passwordRe.MatchString(out) || !loginOK(r, "second@localhost", "chosen-password") {
		t.Fatalf("account add --password-stdin: %q %v", out, err)
	}

	refusals := []struct {
		name  string
		stdin string
		args  []string
		want  string
	}{
		{"existing account", "", []string{"account", "add", "admin@localhost"}, "already exists"},
		{"other domain", "", []string{"account", "add", "admin@example.org"}, "domain is not ours"},
		{"bad name", "", []string{"account", "add", "ad+min@localhost"}, "a-z 0-9"},
		{"short password", "short\n", []string{"account", "add", "--password-stdin", "third@localhost"}, "password too short"},
		{"no password on stdin", "", []string{"account", "add", "--password-stdin", "third@localhost"}, "standard input"},
		{"block unknown", "", []string{"account", "block", "nobody@localhost"}, "no account nobody@localhost"},
		{"unblock unknown", "", []string{"account", "unblock", "nobody@localhost"}, "no account nobody@localhost"},
		{"passwd unknown", "", []string{"account", "passwd", "nobody@localhost"}, "no account nobody@localhost"},
		{"delete unknown", "", []string{"account", "delete", "--yes", "nobody@localhost"}, "no account nobody@localhost"},
		{"delete not confirmed", "n\n", []string{"account", "delete", "admin@localhost"}, "not deleted"},
		{"delete, no answer", "", []string{"account", "delete", "admin@localhost"}, "not deleted"},
		{"missing address", "", []string{"account", "block"}, "accepts 1 arg"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := cli(t, tc.stdin, append(tc.args, data)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want an error with %q", err, tc.want)
			}
		})
	}
	if ok, _ := r.Store().AccountExists("admin@localhost"); !ok {
		t.Fatal("unconfirmed delete deleted")
	}
	if n, _ := r.Store().CountAccounts(); n != 2 {
		t.Fatalf("%d accounts after refusals, want 2", n)
	}

	out, _, err = cli(t, "", "account", "list", data)
	if err != nil || !strings.Contains(out, "admin@localhost") || !strings.Contains(out, "second@localhost") || !strings.Contains(out, "2 accounts") {
		t.Fatalf("account list: %q %v", out, err)
	}

	if _, _, err := cli(t, "", "account", "block", "second@localhost", data); err != nil {
		t.Fatal(err)
	}
	out, _, _ = cli(t, "", "account", "list", data)
	if loginOK(r, "second@localhost", "chosen-password") || !regexp.MustCompile(`second@localhost.*yes`).MatchString(out) {
		t.Fatalf("blocked account logs in, or list does not say blocked:\n%s", out)
	}
	if _, _, err := cli(t, "", "account", "unblock", "second@localhost", data); err != nil || !loginOK(r, "second@localhost", "chosen-password") {
		t.Fatalf("unblock: %v", err)
	}

	out, _, err = cli(t, "", "account", "passwd", "second@localhost", data)
	m = passwordRe.FindStringSubmatch(out)
	if err != nil || m == nil || !loginOK(r, "second@localhost", m[1]) || loginOK(r, "second@localhost", "chosen-password") {
		t.Fatalf("passwd: %q %v", out, err)
	}
	if _, _, err := cli(t, "another-password\n", "account", "passwd", "--password-stdin", "second@localhost", data); err != nil || !loginOK(r, "second@localhost", "another-password") {
		t.Fatalf("passwd --password-stdin: %v", err)
	}

	out, _, err = cli(t, "y\n", "account", "delete", "second@localhost", data)
	if err != nil || !strings.Contains(out, "deleted second@localhost") {
		t.Fatalf("delete: %q %v", out, err)
	}
	if ok, _ := r.Store().AccountExists("second@localhost"); ok {
		t.Fatal("deleted account still exists")
	}
	if _, _, err := cli(t, "", "account", "delete", "--yes", "admin@localhost", data); err != nil {
		t.Fatalf("delete --yes: %v", err)
	}
	if n, _ := r.Store().CountAccounts(); n != 0 {
		t.Fatalf("%d accounts left", n)
	}
}

func TestAdminCLIStatusInvitesQueue(t *testing.T) {
	r := startAdminRelay(t)
	data := "--data=" + r.Dir
	if _, err := r.Store().Login("bobbobbob@localhost", "long-enough-password", func(string, string) error { return nil }); err != nil {
		t.Fatal(err)
	}

	out, _, err := cli(t, "", "status", data)
	if err != nil {
		t.Fatal(err)
	}
	turnAt := net.JoinHostPort("127.0.0.1", strconv.Itoa(r.TURN().Port()))
	for _, want := range []string{"serving localhost", "accounts:     1", "queue:        empty", "certificate:  self-signed", r.AddrOf("imaps"), "recent errors: none", "registration: open",
		"turn:         " + turnAt + " (udp " + turnAt + ", tcp " + turnAt + "), relay 127.0.0.1 ports 49152-49251", "0 allocations now, 0 since start",
		// A self-signed relay serves iroh but cannot serve core's iroh
		// client, and says so.
		"iroh relay:   built-in, not announced (0 nodes)", "an IP-only or self-signed relay cannot serve webxdc realtime"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	out, stderr, err := cli(t, "", "invite", "create", "--uses", "2", "--expires", "7d", data)
	if err != nil {
		t.Fatal(err)
	}
	// The test relay is self-signed and open: the link is the web page's,
	// and the operator hears that invites are not needed.
	m := regexp.MustCompile(`^https://127\.0\.0\.1:\d+/\?token=([a-z2-7]{26})\n$`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(stderr, "good for 2 accounts, expires") ||
		!strings.Contains(stderr, "self-signed") || !strings.Contains(stderr, "invites are not needed") {
		t.Fatalf("invite create printed %q (stderr %q)", out, stderr)
	}
	token := m[1]
	if _, _, err := cli(t, "", "invite", "create", "--uses", "0", "--expires", "0", data); err != nil {
		t.Fatal(err)
	}
	out, _, err = cli(t, "", "invite", "list", data)
	if err != nil || !strings.Contains(out, token) || !strings.Contains(out, "0/2") || !strings.Contains(out, "0/unlimited") || !strings.Contains(out, "never") {
		t.Fatalf("invite list: %q %v", out, err)
	}
	if _, _, err := cli(t, "", "invite", "revoke", token, data); err != nil {
		t.Fatal(err)
	}
	out, _, _ = cli(t, "", "invite", "list", data)
	if strings.Contains(out, token) {
		t.Fatal("revoked invite still listed")
	}

	refusals := []struct {
		name string
		args []string
		want string
	}{
		{"revoke twice", []string{"invite", "revoke", token}, "no invite with token"},
		{"revoke bad token", []string{"invite", "revoke", "not-a-token"}, "no invite with token"},
		{"bad expiry", []string{"invite", "create", "--expires", "soon"}, "--expires"},
		{"negative uses", []string{"invite", "create", "--uses", "-1"}, "--uses"},
		{"drop unknown", []string{"queue", "drop", "nope"}, "no queued message"},
		{"retry unknown", []string{"queue", "retry", "nope"}, "no queued message"},
		{"retry without id", []string{"queue", "retry"}, "--all"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := cli(t, "", append(tc.args, data)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want an error with %q", err, tc.want)
			}
		})
	}

	out, _, err = cli(t, "", "queue", "list", data)
	if err != nil || !strings.Contains(out, "queue is empty") {
		t.Fatalf("queue list: %q %v", out, err)
	}
	if out, _, err := cli(t, "", "queue", "retry", "--all", data); err != nil || !strings.Contains(out, "retrying every queued message") {
		t.Fatalf("queue retry --all: %q %v", out, err)
	}
}

func TestAdminCLIBackupAndRestore(t *testing.T) {
	r := startAdminRelay(t)
	data := "--data=" + r.Dir
	if _, _, err := cli(t, "long-enough-password\n", "account", "add", "--password-stdin", "keepme@localhost", data); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "backup")
	out, _, err := cli(t, "", "backup", dir, data)
	if err != nil || !strings.Contains(out, "backup: ") || !strings.Contains(out, "backup written to "+dir+": 1 accounts") {
		t.Fatalf("backup: %q %v", out, err)
	}
	if _, _, err := cli(t, "", "backup", dir, data); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("backup into the same dir again: %v", err)
	}
	if _, _, err := cli(t, "", "restore", dir, data); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("restore while running: %v", err)
	}

	// Into a fresh data dir, with the relay elsewhere stopped, by config
	// file.
	fresh := filepath.Join(t.TempDir(), "fresh")
	conf := filepath.Join(t.TempDir(), "chatrelay.toml")
	os.WriteFile(conf, []byte("domain = \"localhost\"\ndata_dir = \""+fresh+"\"\n"), 0o600)
	out, _, err = cli(t, "", "restore", dir, "--config", conf)
	if err != nil || !strings.Contains(out, "restore: backup verified: 1 accounts") || !strings.Contains(out, "restored 1 accounts") {
		t.Fatalf("restore: %q %v", out, err)
	}
	r2 := relaytest.StartConfig(t, relaytest.Config(fresh))
	if !loginOK(r2, "keepme@localhost", "long-enough-password") {
		t.Fatal("restored account does not log in")
	}
	if _, _, err := cli(t, "", "restore", filepath.Join(t.TempDir(), "nothing"), "--data", t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a chatrelay backup") {
		t.Fatalf("restore from an empty dir: %v", err)
	}
}

// Without a relay the commands say so and exit 1, through the real main.
func TestAdminCLINoRelayRunning(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"status", "--data", dir},
		{"account", "list", "--data", dir},
		{"invite", "create", "--data", dir},
		{"queue", "list", "--data", dir},
		{"backup", filepath.Join(t.TempDir(), "b"), "--data", dir},
	} {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("%v: %v, want exit code 1", args, err)
		}
		want := "chatrelay: no relay is running with data dir " + dir + " (is `chatrelay serve` running?)\n"
		if stderr.String() != want {
			t.Fatalf("%v said %q, want %q", args, stderr.String(), want)
		}
	}
	// --dev looks in ./chatrelay-data.
	_, _, err := cli(t, "", "status", "--dev")
	abs, _ := filepath.Abs("chatrelay-data")
	if err == nil || !strings.Contains(err.Error(), "data dir "+abs+" ") {
		t.Fatalf("status --dev: %v", err)
	}
}

// proxy show prints the ss:// URL as its last line; rotate prints a new
// one and the old key stays valid; with the proxy off both say so.
func TestAdminCLIProxy(t *testing.T) {
	r := relaytest.Start(t, func(c *relay.Config) { c.Proxy.Listen = "127.0.0.1:0" })
	data := "--data=" + r.Dir
	lastLine := func(s string) string {
		lines := strings.Split(strings.TrimSpace(s), "\n")
		return lines[len(lines)-1]
	}
	out, _, err := cli(t, "", "proxy", "show", data)
	if err != nil || lastLine(out) != r.ProxyURL() || !strings.HasPrefix(r.ProxyURL(), "ss://") {
		t.Fatalf("proxy show: %v, last line %q, want %q", err, lastLine(out), r.ProxyURL())
	}
	if !strings.Contains(out, "█") {
		t.Error("proxy show printed no QR code")
	}
	old := r.ProxyURL()
	out, errOut, err := cli(t, "", "proxy", "rotate", "--no-qr", data)
	if err != nil || strings.TrimSpace(out) != r.ProxyURL() || r.ProxyURL() == old || !strings.Contains(errOut, "1 older key") {
		t.Fatalf("proxy rotate: %v, %q / %q; old %q, now %q", err, out, errOut, old, r.ProxyURL())
	}

	off := startAdminRelay(t)
	if _, _, err := cli(t, "", "proxy", "show", "--data="+off.Dir); err == nil || !strings.Contains(err.Error(), "proxy is off") {
		t.Fatalf("proxy show with the proxy off: %v", err)
	}
}
