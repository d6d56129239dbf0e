package iroh

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/chatrelay/chatrelay/policy"
)

// Paths served (iroh-relay 0.35 http.rs and server.rs).
const (
	RelayPath       = "/relay"
	legacyRelayPath = "/derp"
	PingPath        = "/ping"
	NoContentPath   = "/generate_204"

	upgradeNative    = "iroh derp http"
	upgradeWebSocket = "websocket"
	// The captive-portal probe: a challenge in the request is echoed in
	// the answer (iroh-relay server.rs serve_no_content_handler).
	challengeHeader = "X-Tailscale-Challenge"
	responseHeader  = "X-Tailscale-Response"
)

// Options are the server's limits. Zero fields take the defaults of
// DefaultOptions.
type Options struct {
	// MaxClients bounds connected clients in all.
	MaxClients int
	// MaxClientsPerIP bounds connected clients from one address.
	MaxClientsPerIP int
	// BytesPerSecond bounds the packet bytes one client may send; a
	// client sending faster is read more slowly. Negative: no limit.
	BytesPerSecond int
	// IdleTimeout closes a client that sends nothing (not even the Pong
	// to our Ping) for this long.
	IdleTimeout time.Duration
	// PingInterval is how often the server pings each client.
	PingInterval time.Duration
	// HandshakeTimeout bounds the wait for the ClientInfo frame.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds each frame written to a client.
	WriteTimeout time.Duration
	// QueueDepth is the packets waiting for one client; more are dropped,
	// as UDP would (iroh's PER_CLIENT_SEND_QUEUE_DEPTH).
	QueueDepth int
	// Metrics receives the counters; nil counts nothing.
	Metrics *Metrics
	// Logger gets connection errors at debug level; nil discards.
	Logger *slog.Logger
}

// DefaultOptions are the limits the relay starts with.
func DefaultOptions() Options {
	return Options{
		MaxClients:       2000,
		MaxClientsPerIP:  20,
		BytesPerSecond:   1 << 20,
		IdleTimeout:      60 * time.Second,
		PingInterval:     15 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		WriteTimeout:     10 * time.Second,
		QueueDepth:       512,
	}
}

// Server is the iroh relay: an http.Handler for /relay, /ping and
// /generate_204.
type Server struct {
	opts Options
	m    *Metrics
	log  *slog.Logger

	// caps count admitted connections, handshake or not, in all and by
	// address.
	caps *policy.Caps[string]

	mu      sync.Mutex
	closed  bool
	clients map[NodeKey]*client
	// sentTo and sentBy record who sent to whom, so that when a node
	// leaves, those that sent to it get NodeGone.
	sentTo map[NodeKey]map[NodeKey]struct{}
	sentBy map[NodeKey]map[NodeKey]struct{}
	conns  map[transport]struct{}
	wg     sync.WaitGroup
}

// New returns a relay with opts' limits.
func New(opts Options) *Server {
	d := DefaultOptions()
	if opts.MaxClients <= 0 {
		opts.MaxClients = d.MaxClients
	}
	if opts.MaxClientsPerIP <= 0 {
		opts.MaxClientsPerIP = d.MaxClientsPerIP
	}
	if opts.BytesPerSecond == 0 {
		opts.BytesPerSecond = d.BytesPerSecond
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = d.IdleTimeout
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = d.PingInterval
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = d.HandshakeTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = d.WriteTimeout
	}
	if opts.QueueDepth <= 0 {
		opts.QueueDepth = d.QueueDepth
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		opts: opts, m: opts.Metrics, log: log,
		caps:    policy.NewCaps[string](opts.MaxClients, opts.MaxClientsPerIP),
		clients: map[NodeKey]*client{},
		sentTo:  map[NodeKey]map[NodeKey]struct{}{},
		sentBy:  map[NodeKey]map[NodeKey]struct{}{},
		conns:   map[transport]struct{}{},
	}
}

// ServeHTTP answers the relay's paths; anything else is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case RelayPath, legacyRelayPath:
		s.serveRelay(w, r)
	case PingPath:
		// Latency probe of iroh's net_report; browsers too.
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.WriteHeader(http.StatusOK)
	case NoContentPath:
		if c := r.Header.Get(challengeHeader); c != "" && len(c) < 64 && challengeOK(c) {
			w.Header().Set(responseHeader, "response "+c)
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

func challengeOK(c string) bool {
	for _, b := range []byte(c) {
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '.' || b == '-' || b == '_') {
			return false
		}
	}
	return true
}

func (s *Server) serveRelay(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		s.m.refused("bad_upgrade")
		http.Error(w, "iroh relay: use GET with Upgrade: iroh derp http or websocket", http.StatusMethodNotAllowed)
		return
	}
	up := r.Header.Get("Upgrade")
	native := up == upgradeNative
	if !native && !strings.EqualFold(up, upgradeWebSocket) || r.ProtoMajor != 1 {
		s.m.refused("bad_upgrade")
		http.Error(w, "iroh relay: expected Upgrade: iroh derp http or websocket over HTTP/1.1", http.StatusBadRequest)
		return
	}
	ip := r.RemoteAddr
	if h, _, err := net.SplitHostPort(ip); err == nil {
		ip = h
	}
	if reason := s.admit(ip); reason != "" {
		s.m.refused(reason)
		w.Header().Set("Retry-After", "60")
		http.Error(w, "iroh relay: too many connections", http.StatusServiceUnavailable)
		return
	}
	defer s.release(ip)
	// The web server's read and write timeouts must not cut a relay
	// connection; its own deadlines follow.
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})

	var t transport
	proto := "relay"
	if native {
		conn, brw, err := rc.Hijack()
		if err != nil {
			s.log.Debug("iroh relay: hijack", "err", err)
			return
		}
		conn.SetDeadline(time.Now().Add(s.opts.WriteTimeout))
		// Core's client checks only the status (iroh-relay 0.35
		// client/tls.rs).
		if _, err := conn.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + upgradeNative + "\r\nConnection: Upgrade\r\n\r\n")); err != nil {
			conn.Close()
			return
		}
		conn.SetDeadline(time.Time{})
		t = &streamTransport{conn: conn, r: brw.Reader}
	} else {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
			// Browsers connect from the pages of any origin, as to
			// iroh's own relays; nothing here rides on cookies.
			InsecureSkipVerify: true,
			CompressionMode:    websocket.CompressionDisabled,
		})
		if err != nil {
			// Accept has answered with the reason.
			s.m.refused("bad_upgrade")
			return
		}
		t = &wsTransport{c: c}
		proto = "websocket"
	}
	if !s.track(t) {
		t.close(false, "")
		return
	}
	defer s.untrack(t)
	s.serveClient(t, proto)
}

// admit takes a connection slot for ip, or says why not.
func (s *Server) admit(ip string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "shutdown"
	}
	switch s.caps.Acquire(ip) {
	case policy.TotalFull:
		return "busy"
	case policy.KeyFull:
		return "busy_ip"
	}
	return ""
}

func (s *Server) release(ip string) { s.caps.Release(ip) }

func (s *Server) track(t transport) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[t] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(t transport) {
	s.mu.Lock()
	delete(s.conns, t)
	s.mu.Unlock()
	s.wg.Done()
}

// Close ends every relay connection and refuses new ones.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for t := range s.conns {
		t.close(false, "")
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Nodes is the number of connected nodes.
func (s *Server) Nodes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

type outFrame struct {
	typ  byte
	key  NodeKey
	data []byte
}

type client struct {
	key   NodeKey
	t     transport
	queue chan outFrame
	done  chan struct{}
	once  sync.Once
}

func (c *client) close(protocol bool, reason string) {
	c.once.Do(func() {
		close(c.done)
		c.t.close(protocol, reason)
	})
}

// enqueue hands f to c's writer, or drops it when c is behind.
func (c *client) enqueue(f outFrame) bool {
	select {
	case c.queue <- f:
		return true
	default:
		return false
	}
}

func (s *Server) serveClient(t transport, proto string) {
	typ, p, err := t.read(time.Now().Add(s.opts.HandshakeTimeout), maxClientInfo)
	if err != nil {
		s.m.refused("handshake")
		t.close(errors.Is(err, ErrFrame), "client info expected")
		return
	}
	if typ != FrameClientInfo {
		s.m.refused("handshake")
		t.close(true, "client info expected")
		return
	}
	ci, err := ParseClientInfo(p)
	if err != nil {
		s.m.refused("handshake")
		t.close(true, "bad client info")
		return
	}
	if ci.Version != ProtocolVersion {
		s.m.refused("version")
		t.write(time.Now().Add(s.opts.WriteTimeout), FrameHealth, []byte("unsupported protocol version"))
		t.close(true, "unsupported protocol version")
		return
	}
	c := &client{key: ci.Key, t: t, queue: make(chan outFrame, s.opts.QueueDepth), done: make(chan struct{})}
	s.register(c, proto)
	defer s.unregister(c)
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); s.writeLoop(c) }()
	s.readLoop(c)
	c.close(false, "")
	<-writerDone
}

func (s *Server) readLoop(c *client) {
	var lim *rate.Limiter
	if bps := s.opts.BytesPerSecond; bps > 0 {
		lim = rate.NewLimiter(rate.Limit(bps), max(bps, MaxPacketSize))
	}
	for {
		typ, p, err := c.t.read(time.Now().Add(s.opts.IdleTimeout), KeyLen+MaxPacketSize)
		if err != nil {
			switch {
			case errors.Is(err, ErrFrame) || websocket.CloseStatus(err) == websocket.StatusMessageTooBig:
				s.m.refused("malformed")
				c.close(true, "malformed frame")
			case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
				s.m.refused("idle")
			}
			return
		}
		f, err := ParseClientFrame(typ, p)
		if err != nil {
			s.m.refused("malformed")
			s.log.Debug("iroh relay: closing client", "err", err)
			c.close(true, "malformed frame")
			return
		}
		switch f.Type {
		case FrameSendPacket:
			if lim != nil {
				if d := lim.ReserveN(time.Now(), len(f.Packet)).Delay(); d > 0 {
					s.m.rateLimited()
					tm := time.NewTimer(d)
					select {
					case <-tm.C:
					case <-c.done:
						tm.Stop()
						return
					}
				}
			}
			s.forward(c.key, f.Dst, f.Packet)
		case FramePing:
			c.enqueue(outFrame{typ: FramePong, data: f.Packet})
		}
	}
}

func (s *Server) writeLoop(c *client) {
	ping := time.NewTicker(s.opts.PingInterval)
	defer ping.Stop()
	for {
		var err error
		select {
		case <-c.done:
			return
		case f := <-c.queue:
			deadline := time.Now().Add(s.opts.WriteTimeout)
			switch f.typ {
			case FrameRecvPacket:
				if err = c.t.write(deadline, FrameRecvPacket, f.key[:], f.data); err == nil {
					s.m.forwarded(len(f.data))
				}
			case FrameNodeGone:
				err = c.t.write(deadline, FrameNodeGone, f.key[:])
			default:
				err = c.t.write(deadline, f.typ, f.data)
			}
		case <-ping.C:
			var data [8]byte
			rand.Read(data[:])
			err = c.t.write(time.Now().Add(s.opts.WriteTimeout), FramePing, data[:])
		}
		if err != nil {
			c.close(false, "")
			return
		}
	}
}

func (s *Server) register(c *client, proto string) {
	s.mu.Lock()
	old := s.clients[c.key]
	s.clients[c.key] = c
	// Counted under the lock, so that the gauge follows the map.
	s.m.accepted(proto, old != nil)
	s.mu.Unlock()
	if old != nil {
		// A node that reconnects replaces its old connection, as in
		// iroh's server.
		old.close(false, "")
	}
}

func (s *Server) unregister(c *client) {
	s.mu.Lock()
	if s.clients[c.key] != c {
		s.mu.Unlock()
		return
	}
	delete(s.clients, c.key)
	for src := range s.sentBy[c.key] {
		if sc := s.clients[src]; sc != nil {
			sc.enqueue(outFrame{typ: FrameNodeGone, key: c.key})
		}
		delete(s.sentTo[src], c.key)
	}
	delete(s.sentBy, c.key)
	for dst := range s.sentTo[c.key] {
		delete(s.sentBy[dst], c.key)
	}
	delete(s.sentTo, c.key)
	s.m.left()
	s.mu.Unlock()
}

// forward queues packet for dst; a packet for a node that is not here, or
// is behind, is dropped as UDP would be.
func (s *Server) forward(src, dst NodeKey, packet []byte) {
	s.mu.Lock()
	dc := s.clients[dst]
	if dc != nil {
		if s.sentBy[dst] == nil {
			s.sentBy[dst] = map[NodeKey]struct{}{}
		}
		s.sentBy[dst][src] = struct{}{}
		if s.sentTo[src] == nil {
			s.sentTo[src] = map[NodeKey]struct{}{}
		}
		s.sentTo[src][dst] = struct{}{}
	}
	s.mu.Unlock()
	if dc == nil {
		s.m.dropped("no_peer")
		return
	}
	if !dc.enqueue(outFrame{typ: FrameRecvPacket, key: src, data: packet}) {
		s.m.dropped("queue_full")
	}
}
