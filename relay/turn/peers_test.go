package turn

import (
	"net"
	"net/netip"
	"testing"
)

// The host's own public address is a peer only on relay ports (another
// allocation of this server), never on its services; allowed prefixes
// win over every rule. A pure decision: nothing is sent.
func TestPeerPolicySend(t *testing.T) {
	own := netip.MustParseAddr("192.0.2.1")
	p := &peerPolicy{own: map[netip.Addr]bool{own: true}, minPort: 49152, maxPort: 65535}
	allowLo := &peerPolicy{allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, own: p.own, minPort: 49152, maxPort: 65535}
	cases := []struct {
		p    *peerPolicy
		addr string
		port int
		want bool
	}{
		{p, "192.0.2.1", 50000, true},
		{p, "192.0.2.1", 49152, true},
		{p, "192.0.2.1", 25, false},
		{p, "192.0.2.1", 3478, false},
		{p, "192.0.2.1", 993, false},
		{p, "::ffff:192.0.2.1", 993, false},
		{p, "203.0.113.5", 25, true},
		{p, "127.0.0.1", 50000, false},
		{p, "10.0.0.1", 50000, false},
		{p, "fe80::1", 50000, false},
		{allowLo, "127.0.0.1", 25, true},
		{allowLo, "10.0.0.1", 25, false},
	}
	for _, c := range cases {
		if got := c.p.send(&net.UDPAddr{IP: net.ParseIP(c.addr), Port: c.port}); got != c.want {
			t.Errorf("send to %s:%d (allow %v) = %v, want %v", c.addr, c.port, c.p.allow, got, c.want)
		}
	}
	if !p.permit(net.ParseIP("192.0.2.1")) || p.permit(net.ParseIP("127.0.0.1")) || !allowLo.permit(net.ParseIP("127.0.0.1")) {
		t.Error("permit")
	}
}
