// Package turn is the relay's own TURN server (RFC 5766/8656, SPEC
// section 12) for Delta Chat calls, built on github.com/pion/turn/v4: UDP
// and TCP on one port, relay sockets from a port range, TURN REST
// credentials under the relay's secret, a peer policy that keeps
// allocations away from the host's own networks, and caps per client
// address on allocations, TCP connections and bandwidth.
//
// Allocations relay UDP (RFC 6062 TCP relaying is not offered: pion's
// server relays UDP whatever transport is asked for, which is what WebRTC
// uses). Relay sockets are IPv4; clients may reach the server over IPv6.
package turn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/logging"
	pion "github.com/pion/turn/v4"
)

// Options configure a Server.
type Options struct {
	// UDP and TCP are the listen addresses (":3478"); an empty one is off.
	// When both ask for port 0 on one host, TCP takes UDP's port, so that
	// one port serves both, as the METADATA entry can name only one.
	UDP, TCP string
	// RelayIP is the IPv4 address put in XOR-RELAYED-ADDRESS: where peers
	// reach relay sockets (the public address, also behind 1:1 NAT).
	RelayIP net.IP
	// RelayBind is the address relay sockets bind to; empty: all IPv4.
	RelayBind string
	// MinPort, MaxPort bound the relay sockets' ports.
	MinPort, MaxPort int
	// Secret is the REST credential secret.
	Secret []byte
	// MaxTTL is the longest credential lifetime the relay hands out;
	// user names expiring later are refused. 0: no such check.
	MaxTTL time.Duration
	// Realm is the STUN realm, the relay's host name.
	Realm string
	// AllowPeers are peer prefixes let through despite the default
	// policy (say loopback, for a relay on one machine).
	AllowPeers []netip.Prefix
	// MaxAllocations caps live allocations in all; MaxAllocationsPerClient
	// per client address (IPv6 per /64). 0: no cap.
	MaxAllocations, MaxAllocationsPerClient int
	// BandwidthPerClient caps the bytes per second relayed for one client
	// address, both ways together over all its allocations; past it
	// datagrams are dropped. 0: no cap.
	BandwidthPerClient int
	// TCPConnsPerClient caps TURN-over-TCP connections per client
	// address; 0: no cap.
	TCPConnsPerClient int
	// TCPIdle closes a TCP connection with nothing read for this long;
	// 0 means 15 minutes (allocations are refreshed every few minutes).
	TCPIdle time.Duration
	// Now is the clock credentials are checked against.
	Now    func() time.Time
	Logger *slog.Logger
}

// Server is a running TURN server.
type Server struct {
	opts    Options
	pion    *pion.Server
	udp     net.PacketConn
	tcp     net.Listener
	peers   *peerPolicy
	clients *clients
	stats   counters

	mu    sync.Mutex
	relay map[int]*relayConn // by relay port, while open

	closeOnce sync.Once
	closeErr  error
}

type counters struct {
	allocations                            atomic.Uint64
	bytesIn, bytesOut                      atomic.Uint64
	refusedAuth, refusedPeer, refusedQuota atomic.Uint64
	droppedPackets                         atomic.Uint64
}

// Stats is what the server did since it started.
type Stats struct {
	// Allocations live now, and made in all.
	Allocations      int    `json:"allocations"`
	AllocationsTotal uint64 `json:"allocations_total"`
	// BytesIn arrived at relay sockets from peers; BytesOut were sent
	// from them to peers.
	BytesIn  uint64 `json:"bytes_in"`
	BytesOut uint64 `json:"bytes_out"`
	// Refusals: expired, forged or malformed credentials; peers the
	// policy forbids (permissions and datagrams); allocations or TCP
	// connections over a cap.
	RefusedAuth  uint64 `json:"refused_auth"`
	RefusedPeer  uint64 `json:"refused_peer"`
	RefusedQuota uint64 `json:"refused_quota"`
	// DroppedPackets went over a client's bandwidth cap.
	DroppedPackets uint64 `json:"dropped_packets"`
}

// Listen binds the listeners and starts serving.
func Listen(opts Options) (*Server, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.TCPIdle <= 0 {
		opts.TCPIdle = 15 * time.Minute
	}
	if opts.UDP == "" && opts.TCP == "" {
		return nil, errors.New("turn: no listen address")
	}
	if len(opts.Secret) == 0 {
		return nil, errors.New("turn: no secret")
	}
	ip4 := opts.RelayIP.To4()
	if ip4 == nil {
		return nil, fmt.Errorf("turn: relay address %v is not an IPv4 address", opts.RelayIP)
	}
	opts.RelayIP = ip4
	if opts.MinPort < 1 || opts.MaxPort > 65535 || opts.MinPort > opts.MaxPort {
		return nil, fmt.Errorf("turn: relay port range %d-%d is not within 1-65535", opts.MinPort, opts.MaxPort)
	}
	s := &Server{
		opts:    opts,
		clients: newClients(opts.BandwidthPerClient, opts.MaxAllocations, opts.MaxAllocationsPerClient, opts.TCPConnsPerClient),
		relay:   map[int]*relayConn{},
		peers: &peerPolicy{
			allow: opts.AllowPeers, own: ownAddrs(opts.RelayIP),
			minPort: opts.MinPort, maxPort: opts.MaxPort,
		},
	}
	if err := s.listen(); err != nil {
		return nil, err
	}
	gen := &relayAddrs{s: s}
	cfg := pion.ServerConfig{
		Realm:         opts.Realm,
		AuthHandler:   s.auth,
		QuotaHandler:  s.quota,
		LoggerFactory: logFactory{opts.Logger},
		EventHandler: pion.EventHandler{
			OnAuth: func(_, _ net.Addr, _, _, _ string, _ string, ok bool) {
				if !ok {
					s.stats.refusedAuth.Add(1)
				}
			},
			OnAllocationCreated: s.created,
			OnAllocationDeleted: s.deleted,
		},
	}
	if s.udp != nil {
		cfg.PacketConnConfigs = []pion.PacketConnConfig{{PacketConn: s.udp, RelayAddressGenerator: gen, PermissionHandler: s.permit}}
	}
	if s.tcp != nil {
		cfg.ListenerConfigs = []pion.ListenerConfig{{Listener: &tcpListener{Listener: s.tcp, s: s}, RelayAddressGenerator: gen, PermissionHandler: s.permit}}
	}
	srv, err := pion.NewServer(cfg)
	if err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("turn: %w", err)
	}
	s.pion = srv
	return s, nil
}

// listen binds UDP and TCP; on port 0 for both, on one port.
func (s *Server) listen() error {
	same := false
	if s.opts.UDP != "" && s.opts.TCP != "" {
		uh, up, err1 := net.SplitHostPort(s.opts.UDP)
		th, tp, err2 := net.SplitHostPort(s.opts.TCP)
		same = err1 == nil && err2 == nil && uh == th && up == "0" && tp == "0"
	}
	for try := 0; ; try++ {
		if s.opts.UDP != "" {
			c, err := net.ListenPacket("udp", s.opts.UDP)
			if err != nil {
				return fmt.Errorf("listen turn (udp) on %s: %w", s.opts.UDP, err)
			}
			s.udp = c
		}
		if s.opts.TCP != "" {
			addr := s.opts.TCP
			if same {
				host, _, _ := net.SplitHostPort(addr)
				addr = net.JoinHostPort(host, strconv.Itoa(s.udp.LocalAddr().(*net.UDPAddr).Port))
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				s.closeListeners()
				if same && try < 20 && errors.Is(err, syscall.EADDRINUSE) {
					continue
				}
				return fmt.Errorf("listen turn (tcp) on %s: %w", addr, err)
			}
			s.tcp = ln
		}
		return nil
	}
}

func (s *Server) closeListeners() {
	if s.udp != nil {
		s.udp.Close()
		s.udp = nil
	}
	if s.tcp != nil {
		s.tcp.Close()
		s.tcp = nil
	}
}

// UDPAddr and TCPAddr are the bound listen addresses, or nil.
func (s *Server) UDPAddr() net.Addr {
	if s.udp == nil {
		return nil
	}
	return s.udp.LocalAddr()
}

func (s *Server) TCPAddr() net.Addr {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Addr()
}

// RelayIP is the address relayed addresses name.
func (s *Server) RelayIP() net.IP { return s.opts.RelayIP }

// Port is the port clients reach the server on (UDP's, else TCP's).
func (s *Server) Port() int {
	if s.udp != nil {
		return s.udp.LocalAddr().(*net.UDPAddr).Port
	}
	return s.tcp.Addr().(*net.TCPAddr).Port
}

// Close stops serving and ends every allocation; later calls do nothing.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.pion.Close() })
	return s.closeErr
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	live := s.clients.allocs.Len()
	return Stats{
		Allocations:      live,
		AllocationsTotal: s.stats.allocations.Load(),
		BytesIn:          s.stats.bytesIn.Load(),
		BytesOut:         s.stats.bytesOut.Load(),
		RefusedAuth:      s.stats.refusedAuth.Load(),
		RefusedPeer:      s.stats.refusedPeer.Load(),
		RefusedQuota:     s.stats.refusedQuota.Load(),
		DroppedPackets:   s.stats.droppedPackets.Load(),
	}
}

// auth returns the long-term key of a REST user name (RFC 8489 section
// 9.2: MD5 of user:realm:password); pion checks the request's
// MESSAGE-INTEGRITY with it, so a forged password fails there.
func (s *Server) auth(user, realm string, _ net.Addr) ([]byte, bool) {
	if err := checkUser(user, s.opts.Now(), s.opts.MaxTTL); err != nil {
		s.stats.refusedAuth.Add(1)
		return nil, false
	}
	return pion.GenerateAuthKey(user, realm, password64(s.opts.Secret, user)), true
}

// quota answers 486 (Allocation Quota Reached) past a cap. Two Allocate
// requests of one client served at once (over separate TCP connections)
// may both pass; TCPConnsPerClient bounds by how much.
func (s *Server) quota(_, _ string, src net.Addr) bool {
	if s.clients.mayAllocate(clientKey(src)) {
		return true
	}
	s.stats.refusedQuota.Add(1)
	return false
}

func (s *Server) permit(_ net.Addr, peer net.IP) bool {
	if s.peers.permit(peer) {
		return true
	}
	s.stats.refusedPeer.Add(1)
	return false
}

func (s *Server) created(src, _ net.Addr, _, _, _ string, relayAddr net.Addr, _ int) {
	s.stats.allocations.Add(1)
	bw := s.clients.allocated(clientKey(src))
	if ua, ok := relayAddr.(*net.UDPAddr); ok {
		s.mu.Lock()
		rc := s.relay[ua.Port]
		s.mu.Unlock()
		if rc != nil && bw != nil {
			rc.bw.Store(bw)
		}
	}
}

func (s *Server) deleted(src, _ net.Addr, _, _, _ string) {
	s.clients.deallocated(clientKey(src))
}

// relayAddrs makes relay sockets: a random free port of the range on
// RelayBind, announced as RelayIP.
type relayAddrs struct{ s *Server }

func (g *relayAddrs) Validate() error { return nil }

func (g *relayAddrs) AllocatePacketConn(network string, requested int) (net.PacketConn, net.Addr, error) {
	o := g.s.opts
	bind := o.RelayBind
	if bind == "" {
		bind = "0.0.0.0"
	}
	try := func(port int) (net.PacketConn, net.Addr, error) {
		c, err := net.ListenPacket("udp4", net.JoinHostPort(bind, strconv.Itoa(port)))
		if err != nil {
			return nil, nil, err
		}
		rc := &relayConn{PacketConn: c, s: g.s}
		g.s.mu.Lock()
		g.s.relay[port] = rc
		g.s.mu.Unlock()
		return &closingRelay{rc, port}, &net.UDPAddr{IP: o.RelayIP, Port: port}, nil
	}
	if requested != 0 {
		if requested < o.MinPort || requested > o.MaxPort {
			return nil, nil, fmt.Errorf("port %d outside the relay range", requested)
		}
		return try(requested)
	}
	n := o.MaxPort - o.MinPort + 1
	for range min(64, 2*n) {
		if c, a, err := try(o.MinPort + rand.IntN(n)); err == nil {
			return c, a, nil
		}
	}
	return nil, nil, errors.New("no free relay port")
}

func (g *relayAddrs) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errors.New("TCP relaying is not offered")
}

// closingRelay forgets its port when closed.
type closingRelay struct {
	*relayConn
	port int
}

func (c *closingRelay) Close() error {
	c.s.mu.Lock()
	if c.s.relay[c.port] == c.relayConn {
		delete(c.s.relay, c.port)
	}
	c.s.mu.Unlock()
	return c.relayConn.Close()
}

// logFactory hands pion's logs to slog at debug level: they name client
// addresses, which the relay logs only when asked to (SPEC section 11).
type logFactory struct{ l *slog.Logger }

func (f logFactory) NewLogger(scope string) logging.LeveledLogger {
	return pionLog{f.l.With("part", "turn", "scope", scope)}
}

type pionLog struct{ l *slog.Logger }

func (p pionLog) logf(f string, a ...any) {
	// pion logs every relayed datagram at debug: format only when wanted.
	if p.l.Enabled(context.Background(), slog.LevelDebug) {
		p.l.Debug(fmt.Sprintf(f, a...))
	}
}

func (p pionLog) Trace(string)              {}
func (p pionLog) Tracef(string, ...any)     {}
func (p pionLog) Debug(m string)            { p.logf("%s", m) }
func (p pionLog) Debugf(f string, a ...any) { p.logf(f, a...) }
func (p pionLog) Info(m string)             { p.logf("%s", m) }
func (p pionLog) Infof(f string, a ...any)  { p.logf(f, a...) }
func (p pionLog) Warn(m string)             { p.logf("%s", m) }
func (p pionLog) Warnf(f string, a ...any)  { p.logf(f, a...) }
func (p pionLog) Error(m string)            { p.logf("%s", m) }
func (p pionLog) Errorf(f string, a ...any) { p.logf(f, a...) }
