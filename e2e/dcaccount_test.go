package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// netnsEnv, set in the environment of a test binary that runs inside a
// network namespace made for it, holds the hosts file to mount over
// /etc/hosts there; netnsParentEnv holds the parent's network namespace,
// so the child can tell it is really in another one.
const (
	netnsEnv       = "CHATRELAY_E2E_NETNS_HOSTS"
	netnsParentEnv = "CHATRELAY_E2E_NETNS_PARENT"
)

// underscoreDomain is a relay domain core treats as its test relays: for
// host names starting with `_` it skips the CA check and still checks
// the name.
const underscoreDomain = "_chatrelay.test"

// Onboarding with `dcaccount:DOMAIN` on a domain relay, as a user does it:
// Delta Chat invents the name and the password, fetches the settings from
// the relay's autoconfig over HTTPS (its certificate is self-signed; core
// accepts that only for a `_` host name, and checks the name), and the
// relay creates the account at first login. Then two such accounts chat,
// end-to-end encrypted.
//
// The relay listens on the standard ports of 127.0.0.1 and core resolves
// the domain through /etc/hosts, so the test runs in a network namespace
// of its own (nothing but its own loopback) with a private hosts file:
// it needs root, and skips without.
func TestDCAccountUnderscoreDomain(t *testing.T) {
	if os.Getenv(netnsEnv) == "" {
		runInNetns(t, underscoreDomain)
		return
	}
	enterNetns(t)
	r := startRelayWith(t, relayOptions{Domain: underscoreDomain})
	dc := dctest.StartT(t)
	dc.LocalDomain(underscoreDomain)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	alice := dcaccount(ctx, t, dc, r)
	bob := dcaccount(ctx, t, dc, r)
	if alice.addr == bob.addr {
		t.Fatalf("two dcaccount: setups gave one address %s", alice.addr)
	}
	vcardChat(ctx, t, dc, alice, bob, "hello over an underscore domain")
}

// dcaccount sets up a new core account from `dcaccount:DOMAIN` and checks
// it came out as the relay's autoconfig says, with strict certificate
// checks (core relaxes them for the `_` name by itself).
func dcaccount(ctx context.Context, t *testing.T, dc *dctest.RPC, r *relay) *account {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	id, err := dc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := dc.AddTransportFromQR(ctx, id, "dcaccount:"+r.Domain); err != nil {
		t.Fatalf("dcaccount:%s: %v", r.Domain, err)
	}
	if ok, err := dc.IsConfigured(ctx, id); err != nil || !ok {
		t.Fatalf("dcaccount:%s: is_configured = %v, %v", r.Domain, ok, err)
	}
	get := func(key string) string {
		t.Helper()
		v, err := dc.GetConfig(ctx, id, key)
		if err != nil {
			t.Fatalf("get_config %s: %v", key, err)
		}
		return v
	}
	addr := get("configured_addr")
	name, domain, _ := strings.Cut(addr, "@")
	if domain != r.Domain || name == "" {
		t.Fatalf("configured_addr = %q, want NAME@%s", addr, r.Domain)
	}
	// Only the address and the password were entered, with strict
	// certificate checks: the servers came from the relay's autoconfig,
	// which lists its host name and implicit-TLS ports first.
	var transports []struct {
		Addr              string  `json:"addr"`
		IMAPServer        *string `json:"imapServer"`
		CertificateChecks string  `json:"certificateChecks"`
	}
	if err := dc.CallResult(ctx, &transports, "list_transports", id); err != nil {
		t.Fatal(err)
	}
	if len(transports) != 1 || transports[0].Addr != addr || transports[0].IMAPServer != nil || transports[0].CertificateChecks != "strict" {
		t.Errorf("list_transports = %+v, want only %s, no servers entered, strict certificate checks", transports, addr)
	}
	var info map[string]any
	if err := dc.CallResult(ctx, &info, "get_info", id); err != nil {
		t.Fatal(err)
	}
	used := fmt.Sprint(info["used_transport_settings"])
	for _, want := range []string{
		fmt.Sprintf("imap:[%s:%d:tls", r.Domain, r.IMAPS),
		fmt.Sprintf("smtp:[%s:%d:tls", r.Domain, r.Submissions),
		"cert_strict",
	} {
		if !strings.Contains(used, want) {
			t.Errorf("used_transport_settings %q, want %q in it", used, want)
		}
	}
	if _, err := dc.WaitEvent(ctx, id, "ImapInboxIdle", nil); err != nil {
		t.Fatalf("%s: core's inbox loop never went into IDLE: %v", addr, err)
	}
	t.Logf("TIME dcaccount:%s -> %s: %v", r.Domain, addr, time.Since(start).Round(time.Millisecond))
	return &account{id: id, name: name, addr: addr}
}

// runInNetns runs this test again, in a new network and mount namespace
// whose /etc/hosts names domain as 127.0.0.1, and passes on its outcome.
func runInNetns(t *testing.T, domain string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test makes a network namespace with a hosts file of its own (run the e2e tests as root, as CI does)")
	}
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian packages util-linux, iproute2): %v", tool, err)
		}
	}
	parentNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Skipf("cannot read this process's network namespace: %v", err)
	}
	bin := relayBinary(t) // built once, out here
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, fmt.Appendf(nil, "127.0.0.1 localhost %s\n::1 localhost\n", domain), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--mount", "--propagation", "private",
		os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=7m")
	cmd.Env = append(os.Environ(), netnsEnv+"="+hosts, netnsParentEnv+"="+parentNS, RelayBinaryEnv+"="+bin)
	out, err := cmd.CombinedOutput()
	t.Logf("inside the network namespace:\n%s", out)
	switch {
	case strings.Contains(string(out), "--- PASS: "+t.Name()):
		if err != nil {
			t.Fatalf("the test passed inside the namespace, but the run failed: %v", err)
		}
	case strings.Contains(string(out), "--- SKIP: "+t.Name()):
		t.Skip("skipped inside the network namespace (see above)")
	default:
		t.Fatalf("failed inside the network namespace: %v", err)
	}
}

// enterNetns checks this process runs in a network namespace other than
// its parent's, brings its loopback up and mounts the hosts file.
func enterNetns(t *testing.T) {
	t.Helper()
	ns, err := os.Readlink("/proc/self/ns/net")
	if err != nil || ns == os.Getenv(netnsParentEnv) {
		t.Fatalf("%s is set, but this is not a network namespace of the test's own (%q, %v)", netnsEnv, ns, err)
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	if err := syscall.Mount(os.Getenv(netnsEnv), "/etc/hosts", "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("mount the test's hosts file over /etc/hosts: %v", err)
	}
}
