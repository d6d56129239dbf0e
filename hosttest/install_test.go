package hosttest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The binary is copied to /root/chatrelay in the guest and installed from
// there, as an operator would after downloading it.
const guestBinary = "/root/chatrelay"

// relay runs /root/chatrelay in the guest with stdin (nil: /dev/null) and
// returns its output.
func relayCmd(t *testing.T, g *Guest, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := g.RunInput(ctx, strings.NewReader(stdin), append([]string{guestBinary}, args...)...)
	t.Logf("chatrelay %s (%s):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), out)
	return out, err
}

func guestRun(t *testing.T, g *Guest, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := g.Run(ctx, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return strings.TrimSpace(out)
}

// guestState is systemctl's answer, failing or not.
func guestState(g *Guest, verb string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := g.Run(ctx, "systemctl", verb, "chatrelay.service")
	return strings.TrimSpace(out)
}

func exists(g *Guest, path string) bool {
	_, err := os.Lstat(g.Dir + path)
	return err == nil
}

// fileHash is the SHA-256 of a file in the guest, "" when it is missing.
func fileHash(g *Guest, path string) string {
	data, err := os.ReadFile(g.Dir + path)
	if err != nil {
		return ""
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// kept are the files install must never change once made.
var kept = []string{"/etc/chatrelay/chatrelay.toml", "/var/lib/chatrelay/dkim/private.pem"}

func hashes(g *Guest) map[string]string {
	m := map[string]string{}
	for _, p := range kept {
		m[p] = fileHash(g, p)
	}
	return m
}

func sameHashes(t *testing.T, g *Guest, before map[string]string) {
	t.Helper()
	for p, h := range hashes(g) {
		if h == "" || h != before[p] {
			t.Errorf("%s changed or vanished (before %.12s, now %.12s)", p, before[p], h)
		}
	}
}

// nothingInstalled fails when a refused install left anything behind.
func nothingInstalled(t *testing.T, g *Guest) {
	t.Helper()
	for _, p := range []string{"/etc/systemd/system/chatrelay.service", "/usr/local/bin/chatrelay", "/etc/chatrelay", "/var/lib/chatrelay"} {
		if exists(g, p) {
			t.Errorf("%s exists after a refused install", p)
		}
	}
}

func mustActive(t *testing.T, g *Guest) {
	t.Helper()
	if s := guestState(g, "is-active"); s != "active" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		j, _ := g.Run(ctx, "journalctl", "-u", "chatrelay", "-n", "30", "--no-pager")
		t.Fatalf("chatrelay.service is %q, want active; journal:\n%s", s, j)
	}
}

// TestInstallOnHost installs, reboots, upgrades, uninstalls and purges the
// relay on one booted Debian guest, checking each step from the host as a
// user would. Each step is its own subtest; they run in order on the same
// guest.
func TestInstallOnHost(t *testing.T) {
	e := needHost(t)
	g := bootGuest(t, e, "i", 0)
	ip := g.Addr.String()
	addr := func(port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }
	if err := g.CopyIn(e.bin, guestBinary, 0o755); err != nil {
		t.Fatal(err)
	}
	var acc account
	var before map[string]string
	ok := true
	step := func(name string, f func(t *testing.T)) {
		if !ok {
			t.Run(name, func(t *testing.T) { t.Skip("an earlier step this one builds on failed") })
			return
		}
		ok = t.Run(name, f)
	}
	// Refusals change nothing, so they do not stop the steps after them.
	t.Run("refuse/answer-no", func(t *testing.T) {
		out, err := relayCmd(t, g, "n\n", "install", "--ip", ip)
		if err == nil {
			t.Fatal("install answered no exited 0")
		}
		if !strings.Contains(out, "nothing done") {
			t.Errorf("no \"nothing done\" in the output")
		}
		// A piped answer is not echoed: the prompt line must still end.
		if i := strings.Index(out, "[y/N] "); i < 0 || !strings.HasPrefix(out[i+len("[y/N] "):], "\n") {
			t.Errorf("the prompt is not followed by a newline when the answer is piped")
		}
		nothingInstalled(t, g)
	})
	t.Run("refuse/no-terminal", func(t *testing.T) {
		out, err := relayCmd(t, g, "", "install", "--ip", ip)
		if err == nil {
			t.Fatal("install without a terminal and without --yes exited 0")
		}
		if !strings.Contains(out, "--yes") {
			t.Errorf("the refusal does not name --yes")
		}
		nothingInstalled(t, g)
	})
	t.Run("refuse/port-taken", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		hold := g.Command(ctx, "systemd-socket-activate", "-l", "587", "sleep", "600")
		hold.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := hold.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { syscall.Kill(-hold.Process.Pid, syscall.SIGKILL); hold.Wait() }()
		waitFor(t, 20*time.Second, "port 587 held in the guest", func() bool {
			out, _ := g.Run(ctx, "ss", "-Hltn", "sport = :587")
			return strings.Contains(out, ":587")
		})
		out, err := relayCmd(t, g, "", "install", "--ip", ip, "--yes")
		if err == nil {
			t.Fatal("install with port 587 taken exited 0")
		}
		if !strings.Contains(out, "port 587 is in use by systemd-socket") {
			t.Errorf("the refusal does not name the port and its holder")
		}
		nothingInstalled(t, g)
	})
	step("install-ip", func(t *testing.T) {
		out, err := relayCmd(t, g, "", "install", "--ip", ip, "--yes")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "chatrelay is running for ["+ip+"]") || !strings.Contains(out, "dclogin:") {
			t.Errorf("no running line and join code in the output")
		}
		mustActive(t, g)
		if s := guestState(g, "is-enabled"); s != "enabled" {
			t.Errorf("chatrelay.service is %q, want enabled", s)
		}
		relaxLoadGuard(t, g, ip)
		before = hashes(g)
	})
	step("status", func(t *testing.T) {
		out, err := relayCmd(t, g, "", "status")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "chatrelay hosttest-a serving ["+ip+"]") {
			t.Errorf("status does not say the version and domain")
		}
	})
	step("tls", func(t *testing.T) {
		for _, p := range []int{993, 465, 443} {
			v, err := tlsVersion(addr(p))
			if err != nil || v != tls.VersionTLS13 {
				t.Errorf("TLS on %d: version %x, %v; want TLS 1.3", p, v, err)
			}
		}
		if v, err := imapSTARTTLS(addr(143)); err != nil || v != tls.VersionTLS13 {
			t.Errorf("IMAP STARTTLS on 143: version %x, %v", v, err)
		}
		if v, err := smtpSTARTTLS(addr(587)); err != nil || v != tls.VersionTLS13 {
			t.Errorf("SMTP STARTTLS on 587: version %x, %v", v, err)
		}
		if g, err := smtpGreeting(addr(25)); err != nil || !strings.HasPrefix(g, "220 ") {
			t.Errorf("port 25 greeting %q, %v", g, err)
		}
	})
	step("new-account-logs-in", func(t *testing.T) {
		var err error
		if acc, err = newAccount(ip); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(acc.Email, "@["+ip+"]") {
			t.Errorf("address %q is not at [%s]", acc.Email, ip)
		}
		if err := loginBoth(ip, acc); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("sandbox-score", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, _ := g.Run(ctx, "systemd-analyze", "security", "--no-pager", "chatrelay.service")
		m := regexp.MustCompile(`Overall exposure level for chatrelay.service: ([0-9.]+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no exposure level in:\n%s", out)
		}
		score, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("systemd-analyze security chatrelay.service: %s", m[1])
		if score > 2.0 {
			t.Errorf("exposure level %.1f, want 2.0 or lower", score)
		}
	})
	t.Run("modes-and-owners", func(t *testing.T) {
		want := map[string]string{
			"/etc/chatrelay":                        "750 root:chatrelay",
			"/etc/chatrelay/chatrelay.toml":         "640 root:chatrelay",
			"/var/lib/chatrelay":                    "700 chatrelay:chatrelay",
			"/var/lib/chatrelay/dkim/private.pem":   "600 chatrelay:chatrelay",
			"/var/backups/chatrelay":                "700 chatrelay:chatrelay",
			"/usr/local/bin/chatrelay":              "755 root:root",
			"/etc/systemd/system/chatrelay.service": "644 root:root",
		}
		for p, w := range want {
			got := guestRun(t, g, "stat", "-c", "%a %U:%G", p)
			if got != w {
				t.Errorf("%s: %s, want %s", p, got, w)
			}
		}
	})
	step("reboot", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := g.Reboot(ctx); err != nil {
			t.Fatal(err)
		}
		mustActive(t, g)
		if err := loginBoth(ip, acc); err != nil {
			t.Fatal(err)
		}
	})
	step("reinstall-same-binary", func(t *testing.T) {
		out, err := relayCmd(t, g, "", "install", "--ip", ip, "--yes")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "chatrelay is upgraded and running") {
			t.Errorf("a second install does not say it upgraded")
		}
		mustActive(t, g)
		sameHashes(t, g, before)
		if err := loginBoth(ip, acc); err != nil {
			t.Fatal(err)
		}
	})
	step("upgrade-other-binary", func(t *testing.T) {
		if err := g.CopyIn(e.bin2, guestBinary, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := relayCmd(t, g, "", "install", "--ip", ip, "--yes"); err != nil {
			t.Fatal(err)
		}
		mustActive(t, g)
		out, err := relayCmd(t, g, "", "status")
		if err != nil || !strings.Contains(out, "chatrelay hosttest-b serving") {
			t.Errorf("the running relay is not the new binary (%v)", err)
		}
		sameHashes(t, g, before)
		if err := loginBoth(ip, acc); err != nil {
			t.Fatal(err)
		}
	})
	step("uninstall-keeps-data", func(t *testing.T) {
		if _, err := relayCmd(t, g, "", "uninstall", "--yes"); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"/etc/systemd/system/chatrelay.service", "/usr/local/bin/chatrelay"} {
			if exists(g, p) {
				t.Errorf("%s is still there", p)
			}
		}
		if s := guestState(g, "is-active"); s == "active" {
			t.Errorf("chatrelay.service still active")
		}
		if _, err := tlsVersion(addr(993)); err == nil {
			t.Errorf("something still answers on 993 after uninstall")
		}
		sameHashes(t, g, before)
	})
	step("install-after-uninstall", func(t *testing.T) {
		out, err := relayCmd(t, g, "n\n", "install", "--ip", ip)
		if err == nil {
			t.Fatal("answered no, install went ahead")
		}
		if !strings.Contains(out, "Upgrade (config, key and data are kept)") {
			t.Errorf("an install over kept data does not ask to upgrade")
		}
		if _, err = relayCmd(t, g, "", "install", "--ip", ip, "--yes"); err != nil {
			t.Fatal(err)
		}
		mustActive(t, g)
		sameHashes(t, g, before)
		if err := loginBoth(ip, acc); err != nil {
			t.Fatal(err)
		}
	})
	step("refuse/mode-mismatch", func(t *testing.T) {
		out, err := relayCmd(t, g, "", "install", "--domain", "relay.test", "--yes")
		if err == nil {
			t.Fatal("install --domain over an IP-mode config exited 0")
		}
		if !strings.Contains(out, "is for --ip "+ip+", not --domain relay.test") || !strings.Contains(out, "run the install with --ip "+ip) {
			t.Errorf("the refusal does not say which relay the config is for and how to keep it")
		}
		sameHashes(t, g, before)
		mustActive(t, g)
		if err := loginBoth(ip, acc); err != nil {
			t.Fatal(err)
		}
	})
	step("purge", func(t *testing.T) {
		if _, err := relayCmd(t, g, "", "uninstall", "--purge", "--yes"); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"/etc/systemd/system/chatrelay.service", "/usr/local/bin/chatrelay",
			"/etc/chatrelay", "/var/lib/chatrelay", "/var/backups/chatrelay"} {
			if exists(g, p) {
				t.Errorf("%s is still there after --purge", p)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := g.Run(ctx, "getent", "passwd", "chatrelay"); err == nil {
			t.Errorf("user chatrelay still exists: %s", out)
		}
	})
	step("install-domain-without-dns", func(t *testing.T) {
		out, err := relayCmd(t, g, "", "install", "--domain", "relay.test", "--yes")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "self-signed") {
			t.Errorf("install does not say the relay starts on a self-signed certificate")
		}
		mustActive(t, g)
		if v, err := tlsVersion(addr(993)); err != nil || v != tls.VersionTLS13 {
			t.Errorf("TLS on 993: %x, %v", v, err)
		}
		st, err := relayCmd(t, g, "", "status")
		if err != nil || !strings.Contains(st, "self-signed") {
			t.Errorf("status does not say the certificate is self-signed (%v)", err)
		}
		if _, err := relayCmd(t, g, "", "uninstall", "--purge", "--yes"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("upgrade-rollback", func(t *testing.T) { upgradeOnGuest(t, g, ip) })
}

// relaxLoadGuard edits the installed config as an operator may: the
// machines that run these tests are busy, and above max_load1 the relay
// (rightly) refuses new accounts. The edit also shows that upgrades keep
// the operator's changes.
func relaxLoadGuard(t *testing.T, g *Guest, ip string) {
	t.Helper()
	guestRun(t, g, "sed", "-i", "s/^# max_load1 = .*/max_load1 = 0.0/", "/etc/chatrelay/chatrelay.toml")
	if !strings.Contains(guestRun(t, g, "cat", "/etc/chatrelay/chatrelay.toml"), "\nmax_load1 = 0.0\n") {
		t.Fatal("max_load1 not set in the config")
	}
	guestRun(t, g, "systemctl", "restart", "chatrelay.service")
	mustActive(t, g)
	waitFor(t, time.Minute, "IMAPS after the restart", func() bool {
		_, err := tlsVersion(net.JoinHostPort(ip, "993"))
		return err == nil
	})
}

// waitFor polls cond every 100ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
