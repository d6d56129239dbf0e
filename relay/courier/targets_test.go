package courier

import (
	"net/netip"
	"strings"
	"testing"
)

// TestCourierRefusesPrivateTargets: a domain whose MX, address record or
// address literal points at loopback is refused before any connection,
// over HTTPS and SMTP alike, as a permanent failure, unless the network is
// in AllowTargets.
func TestCourierRefusesPrivateTargets(t *testing.T) {
	f := newFixture(t)
	p := startPeer(t, peerConfig{cert: f.ca.issue(t, "mx.a.example")})
	f.dns.addMX("a.example", 10, "mx.a.example", p.ip)  // MX
	f.dns.hosts["b.example"] = []string{p.ip}           // implicit MX
	f.dns.addMX("c.example", 10, "mx.c.example", "::1") // IPv6 loopback
	f.dns.addMX("d.example", 10, "mx.d.example", "")    // mapped IPv4
	f.dns.hosts["mx.d.example"] = []string{"::ffff:" + p.ip}
	noPrivate := func(o *Options) { o.AllowTargets = nil }
	for _, domain := range []string{"a.example", "b.example", "c.example", "d.example", "[" + p.ip + "]", "[IPv6:::1]"} {
		res := f.deliver(f.courier(p, noPrivate), domain, "bob@"+domain)
		wantFailed(t, res, true)
		if err := res[0].Err; err == nil || !strings.Contains(err.Error(), "not a public address") {
			t.Errorf("%s: error %v, want a refused target", domain, err)
		}
	}
	p.mu.Lock()
	hits, mails := p.httpHits, p.smtpMails
	p.mu.Unlock()
	if hits != 0 || mails != 0 {
		t.Fatalf("the courier reached the refused peer: %d HTTPS requests, %d MAIL commands", hits, mails)
	}

	// Configured, the same peer takes the message.
	wantOK(t, f.deliver(f.courier(p, nil), "a.example", "bob@a.example"))
}

// TestCourierRefusesPrivateTargetsRanges checks the address ranges without
// connecting anywhere.
func TestCourierRefusesPrivateTargetsRanges(t *testing.T) {
	c := New(Options{OwnAddrs: []netip.Addr{netip.MustParseAddr("198.252.206.1")}})
	for _, a := range []string{
		"127.0.0.1", "127.1.2.3", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
		"fc00::1", "fd12:3456::1", "169.254.1.1", "fe80::1", "100.64.0.1",
		"100.127.255.255", "0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "239.1.1.1",
		"ff02::1", "255.255.255.255", "240.0.0.1", "::ffff:127.0.0.1",
		"::ffff:10.0.0.1", "::127.0.0.1", "198.18.0.1", "192.0.0.8", "192.0.2.1",
		"198.252.206.1", // the relay's own
	} {
		if c.allowed(netip.MustParseAddr(a)) {
			t.Errorf("%s allowed", a)
		}
	}
	for _, a := range []string{"93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "100.128.0.1", "172.32.0.1", "::ffff:93.184.216.34"} {
		if !c.allowed(netip.MustParseAddr(a)) {
			t.Errorf("%s refused", a)
		}
	}
	c = New(Options{AllowTargets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if !c.allowed(netip.MustParseAddr("10.1.2.3")) || c.allowed(netip.MustParseAddr("192.168.1.1")) {
		t.Error("AllowTargets not applied to exactly its networks")
	}
}
