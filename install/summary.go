package install

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/relay/dkim"
)

// printSummary ends an install: what was kept, the host commands (with
// --root), the DNS records and the code to join.
func (o *Options) printSummary(res *Result) {
	w := o.Out
	defer o.printProxy(res)
	fmt.Fprintln(w)
	if res.ConfigKept {
		fmt.Fprintf(w, "Kept the existing config %s; the data in %s is untouched.\n", ConfigPath, DataDir)
	}
	if o.Root != "" {
		fmt.Fprintf(w, "Files are under %s. On the target system, run as root:\n", o.Root)
		for i, c := range res.Commands {
			fmt.Fprintf(w, "  %2d. %s\n", i+1, c)
		}
		fmt.Fprintln(w)
	} else if res.Upgrade {
		fmt.Fprintf(w, "chatrelay is upgraded and running for %s.\n", mailDomain(*o))
	} else {
		fmt.Fprintf(w, "chatrelay is running for %s.\n", mailDomain(*o))
	}

	fmt.Fprintf(w, "\nThe relay serves on these ports; a firewall in front of the machine (a cloud\nprovider's security group too) must let them in:\n\n")
	WriteFirewallRules(w, o.firewallRules())
	if o.Firewall != FirewallNone {
		fmt.Fprintf(w, "(opened in %s)\n", o.Firewall)
	}

	if o.IP != "" {
		fmt.Fprintf(w, "\nIP-only relay: no DNS records are needed. Addresses are name@[%s];\n", o.IP)
		fmt.Fprintln(w, "the certificate is self-signed, so the app must accept it (the code below says so).")
		if ip := net.ParseIP(o.IP); ip != nil && ip.To4() == nil {
			fmt.Fprintln(w, "Calls: Delta Chat cannot be told of a TURN server at an IPv6 address, so the relay's\nTURN server is not offered; a domain name (with an AAAA record) makes it work.")
		}
		res.JoinURL = DCLoginURL(o.IP)
		fmt.Fprintf(w, "\nScan this in Delta Chat to make your own account (it is created at first login).\n")
		fmt.Fprintf(w, "It is for one person: others get their own code at https://%s/\n\n", hostForURL(o.IP))
		o.printQR(res.JoinURL)
		return
	}

	ipv4, ipv6 := o.PublicIPv4, o.PublicIPv6
	guessed := false
	if ipv4 == "" && o.Root == "" {
		ipv4 = outboundIPv4()
		guessed = ipv4 != ""
	}
	recs := Records(DNSOptions{Domain: o.Domain, IPv4: ipv4, IPv6: ipv6, Selector: DefaultSelector, DKIM: res.DKIM})
	fmt.Fprintf(w, "\nPublish these records at your DNS provider:\n\n")
	WriteText(w, recs)
	if guessed {
		fmt.Fprintf(w, "\n%s is this machine's address on its default route; behind NAT use the public one\n(`chatrelay dns --domain %s --ip A` prints the records again).\n", ipv4, o.Domain)
	}
	fmt.Fprintf(w, "\nThen check them with: chatrelay dns --check --domain %s\n", o.Domain)
	fmt.Fprintln(w, "Until they are live Let's Encrypt cannot issue a certificate, and the relay serves a self-signed one.")
	res.JoinURL = "DCACCOUNT:https://" + o.Domain + "/new"
	fmt.Fprintf(w, "\nOnce DNS works, people join by scanning this in Delta Chat (or at https://%s/):\n\n", o.Domain)
	o.printQR(res.JoinURL)
}

// printProxy ends the summary with the proxy's ss:// URL, asked of the
// running relay (which made the key at its start).
func (o *Options) printProxy(res *Result) {
	w := o.Out
	if o.Root != "" {
		if o.proxyPort != 0 {
			fmt.Fprintf(w, "\nThe Shadowsocks proxy listens on port %d: once the relay runs, `chatrelay proxy show` prints its ss:// URL.\n", o.proxyPort)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var p control.Proxy
	err := control.Call(ctx, relay.ControlSocketPath(DataDir), control.CmdProxyShow, nil, &p, nil)
	switch {
	case err == nil:
		res.ProxyURL = p.URL
		fmt.Fprintf(w, "\nWhere the relay is blocked, Delta Chat reaches it through its Shadowsocks proxy (%s):\n", p.Listen)
		fmt.Fprintf(w, "scan this in Delta Chat, or set it under Settings -> Advanced -> Proxy. `chatrelay proxy show` prints it again.\n\n")
		o.printQR(p.URL)
	case o.proxyPort != 0 && res.ConfigKept:
		fmt.Fprintf(w, "\nThe existing config has no proxy: add\n\n  [proxy]\n  listen = \":%d\"\n\nto %s, then `systemctl restart chatrelay` and `chatrelay proxy show`.\n", o.proxyPort, ConfigPath)
	case o.proxyPort != 0:
		fmt.Fprintf(w, "\nThe proxy's URL could not be read (%v); `chatrelay proxy show` prints it.\n", err)
	}
}

func (o *Options) printQR(text string) {
	if qr, err := QR(text); err == nil {
		fmt.Fprint(o.Out, indent(qr, "  "))
	}
	fmt.Fprintf(o.Out, "\n  %s\n", text)
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "")
}

func hostForURL(ip string) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]"
	}
	return ip
}

// outboundIPv4 is the source address of this host's default route. A UDP
// "connection" only picks the route; no packet is sent.
func outboundIPv4() string {
	c, err := net.Dial("udp4", "192.0.2.1:53") // TEST-NET-1 (RFC 5737)
	if err != nil {
		return ""
	}
	defer c.Close()
	a, ok := c.LocalAddr().(*net.UDPAddr)
	if !ok || a.IP.IsLoopback() {
		return ""
	}
	return a.IP.String()
}

// ReadDKIM returns the DKIM TXT value of the key in dataDir, or "" with
// the reason when there is none (the relay was not installed there).
func ReadDKIM(dataDir string) (string, error) {
	data, err := os.ReadFile(DKIMKeyPath(dataDir))
	if err != nil {
		return "", err
	}
	k, err := dkim.ParsePEM(data)
	if err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Join(dataDir, "dkim"), err)
	}
	return k.TXTRecord(), nil
}
