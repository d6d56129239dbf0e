package turn

import (
	"net"
	"net/netip"
)

// peerPolicy decides which peers an allocation may talk to (SPEC section
// 12): by default none in loopback, private, shared (CGNAT), link-local,
// multicast or unspecified space, so that the relay cannot be used to
// reach the host's own services or its networks. Allowed prefixes
// (configured; loopback in dev mode and tests) override that.
//
// The relay's own public addresses are the exception that calls need:
// when both parties of a call use relay candidates of this server, each
// allocation's peer is the other's relay address, on this host. So the
// own addresses get a permission, and packets to them are let through
// only to ports of the relay range (checked for every packet, see
// relayConn.WriteTo), never to the host's other services.
type peerPolicy struct {
	allow []netip.Prefix
	own   map[netip.Addr]bool
	// minPort, maxPort is the relay range.
	minPort, maxPort int
}

// cgnat is RFC 6598 shared address space.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// blocked is true for addresses in no-go space by default.
func blocked(a netip.Addr) bool {
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() ||
		cgnat.Contains(a) || (a.Is4() && (a.As4()[0] == 0 || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})))
}

func (p *peerPolicy) allowed(a netip.Addr) bool {
	for _, pre := range p.allow {
		if pre.Contains(a) {
			return true
		}
	}
	return false
}

// permit answers a CreatePermission or ChannelBind for peer ip.
func (p *peerPolicy) permit(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	a = a.Unmap()
	if p.allowed(a) {
		return true
	}
	return !blocked(a)
}

// send is true if a packet may go to addr: a permitted peer, and if it
// is one of the host's own addresses, a port of the relay range.
func (p *peerPolicy) send(addr net.Addr) bool {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return false
	}
	a, ok := netip.AddrFromSlice(ua.IP)
	if !ok {
		return false
	}
	a = a.Unmap()
	if p.allowed(a) {
		return true
	}
	if blocked(a) {
		return false
	}
	if p.own[a] {
		return ua.Port >= p.minPort && ua.Port <= p.maxPort
	}
	return true
}

// ownAddrs are the addresses of the host's interfaces, plus extra (the
// announced relay address, which behind 1:1 NAT is not on an interface).
func ownAddrs(extra ...net.IP) map[netip.Addr]bool {
	own := map[netip.Addr]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok {
				if a, ok := netip.AddrFromSlice(n.IP); ok {
					own[a.Unmap()] = true
				}
			}
		}
	}
	for _, ip := range extra {
		if a, ok := netip.AddrFromSlice(ip); ok {
			own[a.Unmap()] = true
		}
	}
	return own
}
