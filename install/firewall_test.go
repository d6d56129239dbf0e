package install

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/relay"
)

func ruleSpecs(rules []PortRule) []string {
	var s []string
	for _, r := range rules {
		s = append(s, r.Spec("-"))
	}
	return s
}

func TestFirewallRulesNameEveryPublicPort(t *testing.T) {
	got := ruleSpecs(FirewallRules(relay.Default()))
	want := []string{"25/tcp", "80/tcp", "143/tcp", "443/tcp", "465/tcp", "587/tcp", "993/tcp", "3478/udp", "3478/tcp", "49152-65535/udp"}
	if !slices.Equal(got, want) {
		t.Errorf("rules %v, want %v", got, want)
	}
	// An external TURN server, and loopback listeners, need no rule.
	cfg := relay.Default()
	cfg.TURN.Server, cfg.TURN.Secret = "turn.example.org:3478", "secret"
	cfg.Listen.HTTP = "127.0.0.1:80"
	if got := ruleSpecs(FirewallRules(cfg)); slices.Contains(got, "3478/udp") || slices.Contains(got, "80/tcp") {
		t.Errorf("rules %v", got)
	}
	if got := ruleSpecs(FirewallRules(relay.DevDefault())); len(got) != 0 {
		t.Errorf("dev mode (loopback) rules %v", got)
	}
}

// With ufw or firewalld managing the host, install opens the ports in it;
// the summary lists them either way.
func TestInstallOpensPortsInTheFirewall(t *testing.T) {
	for _, c := range []struct {
		firewall string
		want     []string
	}{
		{FirewallUFW, []string{"ufw allow 25/tcp comment chatrelay inbound mail", "ufw allow 3478/udp comment chatrelay TURN for calls", "ufw allow 3478/tcp comment chatrelay TURN for calls", "ufw allow 49152:65535/udp comment chatrelay TURN relay ports"}},
		{FirewallFirewalld, []string{"firewall-cmd --permanent --add-port=993/tcp", "firewall-cmd --permanent --add-port=3478/udp", "firewall-cmd --permanent --add-port=49152-65535/udp", "firewall-cmd --reload"}},
		{FirewallNone, nil},
	} {
		t.Run(c.firewall, func(t *testing.T) {
			root := t.TempDir()
			res, out := installRoot(t, root, Options{IP: "203.0.113.7", Binary: fakeBinary(t, "x"), Firewall: c.firewall})
			cmds := argv(res.Commands)
			for _, w := range c.want {
				if !slices.Contains(cmds, w) {
					t.Errorf("no %q in %q", w, cmds)
				}
			}
			for _, cmd := range cmds {
				if c.firewall == FirewallNone && (strings.HasPrefix(cmd, "ufw") || strings.HasPrefix(cmd, "firewall-cmd")) {
					t.Errorf("no firewall, yet %q", cmd)
				}
			}
			for _, w := range []string{"3478/udp", "3478/tcp", "49152-65535/udp", "TURN relay ports", "25/tcp"} {
				if !strings.Contains(out, w) {
					t.Errorf("summary does not list %s:\n%s", w, out)
				}
			}
		})
	}
}

// The rules follow the installed config (an upgrade keeps it).
func TestFirewallRulesFollowTheConfig(t *testing.T) {
	root := t.TempDir()
	cfgPath := filepath.Join(root, ConfigPath)
	os.MkdirAll(filepath.Dir(cfgPath), 0o755)
	os.WriteFile(cfgPath, []byte("ip = \"203.0.113.7\"\n[turn]\nmin_port = 40000\nmax_port = 40999\n"), 0o640)
	o := Options{Root: root}
	if got := ruleSpecs(o.firewallRules()); !slices.Contains(got, "40000-40999/udp") {
		t.Errorf("rules %v", got)
	}
}
