package turn

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/chatrelay/chatrelay/policy"
)

// clientKey is how caps are counted: per client address, IPv6 per /64
// (one subscriber's prefix). TURN REST user names are expiry times that
// everyone who asked in the same second shares, so they cannot name a
// user; the address the allocation is for can.
func clientKey(addr net.Addr) netip.Addr {
	var ip net.IP
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip = a.IP
	default:
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(ip)
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// clients counts per client address: live allocations and open TCP
// connections (each against a cap per client, allocations also in all),
// and each client's share of bandwidth, kept while it holds either.
type clients struct {
	mu          sync.Mutex
	allocs, tcp *policy.Caps[netip.Addr]
	bw          map[netip.Addr]*rate.Limiter
	bytesPerSec int
	burst       int
}

func newClients(bytesPerSec, maxAllocs, allocsPerClient, tcpPerClient int) *clients {
	c := &clients{
		allocs:      policy.NewCaps[netip.Addr](maxAllocs, allocsPerClient),
		tcp:         policy.NewCaps[netip.Addr](0, tcpPerClient),
		bw:          map[netip.Addr]*rate.Limiter{},
		bytesPerSec: bytesPerSec,
	}
	// A second's worth, and at least a few full-size datagrams.
	c.burst = max(bytesPerSec, 16*1600)
	return c
}

// forget drops k's bandwidth share once it holds nothing. c.mu is held.
func (c *clients) forget(k netip.Addr) {
	if c.allocs.Held(k) == 0 && c.tcp.Held(k) == 0 {
		delete(c.bw, k)
	}
}

// mayAllocate is true if k is under both allocation caps.
func (c *clients) mayAllocate(k netip.Addr) bool { return c.allocs.Fits(k) }

// allocated counts an allocation of k and returns its bandwidth limiter
// (nil: no cap).
func (c *clients) allocated(k netip.Addr) *rate.Limiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.allocs.Add(k)
	if c.bytesPerSec <= 0 {
		return nil
	}
	bw := c.bw[k]
	if bw == nil {
		bw = rate.NewLimiter(rate.Limit(c.bytesPerSec), c.burst)
		c.bw[k] = bw
	}
	return bw
}

func (c *clients) deallocated(k netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.allocs.Release(k)
	c.forget(k)
}

func (c *clients) tcpOpen(k netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tcp.Acquire(k) == policy.NotFull
}

func (c *clients) tcpClosed(k netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tcp.Release(k)
	c.forget(k)
}

// relayConn is an allocation's relay socket. It counts the bytes relayed,
// drops datagrams past the client's bandwidth (as a congested link would,
// which the media stack adapts to), and refuses to send where the peer
// policy forbids (see peerPolicy.send).
type relayConn struct {
	net.PacketConn
	s  *Server
	bw atomic.Pointer[rate.Limiter]
}

func (c *relayConn) over(n int) bool {
	bw := c.bw.Load()
	if bw == nil || bw.AllowN(time.Now(), n) {
		return false
	}
	c.s.stats.droppedPackets.Add(1)
	return true
}

func (c *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := c.PacketConn.ReadFrom(p)
		if err != nil {
			return n, from, err
		}
		if c.over(n) {
			continue
		}
		c.s.stats.bytesIn.Add(uint64(n))
		return n, from, nil
	}
}

func (c *relayConn) WriteTo(p []byte, to net.Addr) (int, error) {
	if !c.s.peers.send(to) {
		c.s.stats.refusedPeer.Add(1)
		// Silently, as a datagram lost on the way would be.
		return len(p), nil
	}
	if c.over(len(p)) {
		return len(p), nil
	}
	n, err := c.PacketConn.WriteTo(p, to)
	c.s.stats.bytesOut.Add(uint64(n))
	return n, err
}

// tcpListener caps TURN-over-TCP connections per client address and gives
// each an idle deadline, so that a silent connection does not hold its
// goroutine for ever.
type tcpListener struct {
	net.Listener
	s *Server
}

func (l *tcpListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		k := clientKey(c.RemoteAddr())
		if !l.s.clients.tcpOpen(k) {
			l.s.stats.refusedQuota.Add(1)
			c.Close()
			continue
		}
		return &idleConn{Conn: c, idle: l.s.opts.TCPIdle, done: func() { l.s.clients.tcpClosed(k) }}, nil
	}
}

type idleConn struct {
	net.Conn
	idle time.Duration
	once sync.Once
	done func()
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (c *idleConn) Close() error {
	c.once.Do(c.done)
	return c.Conn.Close()
}
