package courier

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// A mail domain names its hosts itself (MX, A/AAAA records, an address
// literal), so whoever controls a domain could otherwise point the
// courier at the relay's own network: its loopback services, the LAN
// behind it, or the relay itself. The courier connects only to public
// unicast addresses, unless Options.AllowTargets lists the network. The
// check is made on the address actually dialled, after resolution, so a
// name that resolves differently later (DNS rebinding) gains nothing.

// nonPublic lists the IPv4 and IPv6 ranges that are not public unicast
// beyond what netip.Addr's predicates catch (RFC 6890 and its updates).
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT, RFC 6598
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking, RFC 2544
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and broadcast
	netip.MustParsePrefix("fec0::/10"),       // site-local, RFC 3879
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64, RFC 8215
	netip.MustParsePrefix("100::/64"),        // discard-only, RFC 6666
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
}

// isPublic reports whether ip is a public unicast address: not loopback,
// private (RFC 1918, ULA fc00::/7), link-local, CGNAT, unspecified,
// multicast or otherwise reserved.
func isPublic(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() ||
		ip.IsLinkLocalUnicast() || ip.IsMulticast() || !ip.IsGlobalUnicast() {
		return false
	}
	// IPv4-compatible ::a.b.c.d (deprecated) reaches the IPv4 address.
	if ip.Is6() && ip.As16()[0] == 0 && netip.PrefixFrom(ip, 96).Masked().Addr() == netip.IPv6Unspecified() {
		return false
	}
	return !slices.ContainsFunc(nonPublic, func(p netip.Prefix) bool { return p.Contains(ip) })
}

// refusedTargetError is an address the courier will not connect to.
type refusedTargetError struct {
	host string
	ip   netip.Addr
}

func (e refusedTargetError) Error() string {
	return fmt.Sprintf("%s (%s) is not a public address or is this relay's own; not connecting (federation.allow_private_targets)", e.host, e.ip)
}

// allowed reports whether the courier may connect to ip.
func (c *Courier) allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	if slices.ContainsFunc(c.opts.AllowTargets, func(p netip.Prefix) bool { return p.Contains(ip) }) {
		return true
	}
	return isPublic(ip) && !slices.Contains(c.own, ip)
}

// InterfaceAddrs returns the addresses of the machine's interfaces.
func InterfaceAddrs() []netip.Addr {
	var out []netip.Addr
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}
