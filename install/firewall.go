package install

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/relay"
)

// A PortRule is what a firewall in front of the relay must let in: one
// port or a range, over one protocol.
type PortRule struct {
	Proto    string // "tcp" or "udp"
	From, To int
	What     string
}

// Spec is the rule in the port/proto form ufw and firewalld take
// ("3478/udp", "49152:65535/udp" for ufw; firewalld wants a dash).
func (r PortRule) Spec(rangeSep string) string {
	if r.From == r.To {
		return fmt.Sprintf("%d/%s", r.From, r.Proto)
	}
	return fmt.Sprintf("%d%s%d/%s", r.From, rangeSep, r.To, r.Proto)
}

// FirewallRules are the ports cfg serves on from outside: the mail and
// web listeners, and the built-in TURN server's port (UDP and TCP) and
// relay range (UDP). Loopback listeners need no rule.
func FirewallRules(cfg relay.Config) []PortRule {
	var rules []PortRule
	add := func(addr, proto, what string) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			return
		}
		p, err := strconv.Atoi(port)
		if err != nil || p == 0 {
			return
		}
		rules = append(rules, PortRule{Proto: proto, From: p, To: p, What: what})
	}
	l := cfg.Listen
	add(l.SMTP, "tcp", "inbound mail")
	add(l.HTTP, "tcp", "ACME, redirect to HTTPS")
	add(l.IMAP, "tcp", "IMAP (STARTTLS)")
	add(l.HTTPS, "tcp", "HTTPS, /new, IMAP and submission by ALPN")
	add(l.Submissions, "tcp", "submission (TLS)")
	add(l.Submission, "tcp", "submission (STARTTLS)")
	add(l.IMAPS, "tcp", "IMAP (TLS)")
	if t := cfg.TURN; t.BuiltIn() {
		add(t.ListenUDP, "udp", "TURN for calls")
		add(t.ListenTCP, "tcp", "TURN for calls")
		if len(rules) > 0 && (t.ListenUDP != "" || t.ListenTCP != "") {
			rules = append(rules, PortRule{Proto: "udp", From: t.MinPort, To: t.MaxPort, What: "TURN relay ports"})
		}
	}
	return rules
}

// WriteFirewallRules prints the rules, for an operator whose firewall (or
// cloud provider's security group) the installer does not manage.
func WriteFirewallRules(w io.Writer, rules []PortRule) {
	for _, r := range rules {
		fmt.Fprintf(w, "  %-16s %s\n", r.Spec("-"), r.What)
	}
}

// Firewalls the installer knows how to open ports in.
const (
	FirewallUFW       = "ufw"
	FirewallFirewalld = "firewalld"
	FirewallNone      = "none"
)

// DetectFirewall names the firewall managing this host: ufw when `ufw
// status` says active, firewalld when `firewall-cmd --state` says running,
// else none. Each program gets a few seconds.
func DetectFirewall(ctx context.Context) string {
	probe := func(want string, args ...string) bool {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).Output()
		return err == nil && strings.Contains(string(out), want)
	}
	switch {
	case probe("Status: active", "ufw", "status"):
		return FirewallUFW
	case probe("running", "firewall-cmd", "--state"):
		return FirewallFirewalld
	}
	return FirewallNone
}

// firewallCommands open rules in firewall (none for FirewallNone).
func firewallCommands(firewall string, rules []PortRule) []Command {
	var cmds []Command
	switch firewall {
	case FirewallUFW:
		for _, r := range rules {
			cmds = append(cmds, Command{Args: []string{"ufw", "allow", r.Spec(":"), "comment", "chatrelay " + r.What}})
		}
	case FirewallFirewalld:
		for _, r := range rules {
			cmds = append(cmds, Command{Args: []string{"firewall-cmd", "--permanent", "--add-port=" + r.Spec("-")}})
		}
		if len(cmds) > 0 {
			cmds = append(cmds, Command{Args: []string{"firewall-cmd", "--reload"}})
		}
	}
	return cmds
}
