package shadowsocks

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/accept"
	"github.com/chatrelay/chatrelay/policy"
)

// Refusal reasons, for metrics. A refused connection looks the same to
// the peer whatever the reason (see drain), except over a connection cap.
const (
	RefusedAuth      = "auth"      // no key decrypts it, or malformed after decryption
	RefusedReplay    = "replay"    // a salt seen within the replay window
	RefusedTimestamp = "timestamp" // SIP022 timestamp off by more than 30 s
	RefusedTarget    = "target"    // Route refused the target
	RefusedTimeout   = "timeout"   // the first packet did not arrive in time
	RefusedPerIP     = "per_ip"    // connection cap per client address
	RefusedTotal     = "total"     // connection cap in total
)

// SIP022: "the timestamp ... MUST be within 30 seconds of the server's".
const maxClockSkew = 30 * time.Second

// SIP022: padding in the request header is at most 900 bytes.
const maxPadding = 900

// Options configure a Server.
type Options struct {
	// Keys returns the keys a client may use: the current one and those
	// still in their grace period. Called for every connection.
	Keys func() []Key
	// Route decides what a target is: a handler that takes the
	// decrypted connection over, or nil to refuse it. It must not block.
	Route func(t Target) func(net.Conn)
	// HandshakeTimeout bounds the wait for the first packet; refused
	// connections are read and discarded until this long after accept,
	// then closed. Default 60 s.
	HandshakeTimeout time.Duration
	// ReplayWindow is how long salts are remembered (at least; up to
	// twice). Default 1 h; never below 1 min (SIP022 needs 60 s).
	ReplayWindow time.Duration
	// MaxConns and MaxConnsPerIP cap connections not yet handed to a
	// route plus those handed over (IPv6 counted per /64); 0 is no cap.
	MaxConns, MaxConnsPerIP int
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// Refused is told the reason of every refused connection.
	Refused func(reason string)
	// Accepted is told of each connection accepted (before the handshake).
	Accepted func()
	// Bytes is told of bytes read from (in) and written to (out) clients
	// after the handshake.
	Bytes  func(in, out int)
	Logger *slog.Logger
}

// Server accepts Shadowsocks connections.
type Server struct {
	opts   Options
	replay *replayFilter

	// caps count connections in the handshake, in all and by address.
	caps *policy.Caps[string]

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	close bool
}

// NewServer makes a server; Serve runs it on a listener.
func NewServer(opts Options) *Server {
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 60 * time.Second
	}
	if opts.ReplayWindow <= 0 {
		opts.ReplayWindow = time.Hour
	}
	opts.ReplayWindow = max(opts.ReplayWindow, 2*maxClockSkew)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	for _, f := range []*func(string){&opts.Refused} {
		if *f == nil {
			*f = func(string) {}
		}
	}
	if opts.Accepted == nil {
		opts.Accepted = func() {}
	}
	if opts.Bytes == nil {
		opts.Bytes = func(int, int) {}
	}
	return &Server{opts: opts, replay: newReplayFilter(opts.ReplayWindow, opts.Now), caps: policy.NewCaps[string](opts.MaxConns, opts.MaxConnsPerIP), conns: map[net.Conn]struct{}{}}
}

// Serve accepts until ln is closed.
func (s *Server) Serve(ln net.Listener) error {
	var retry accept.Retry
	for {
		c, err := retry.Accept(ln)
		if err != nil {
			return err
		}
		s.opts.Accepted()
		key := ipKey(c.RemoteAddr())
		if reason := s.acquire(key, c); reason != "" {
			// Over a cap: closed at once, so a flood holds nothing.
			s.opts.Refused(reason)
			c.Close()
			continue
		}
		go func() {
			defer s.wg.Done()
			s.handle(c, key)
		}()
	}
}

// Close closes every connection in the handshake or handed over; the
// listener is the caller's to close.
func (s *Server) Close() {
	s.mu.Lock()
	s.close = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) acquire(key string, c net.Conn) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.close {
		return RefusedTotal
	}
	switch s.caps.Acquire(key) {
	case policy.TotalFull:
		return RefusedTotal
	case policy.KeyFull:
		return RefusedPerIP
	}
	s.conns[c] = struct{}{}
	// Under the lock that Close takes: no Add after Close's Wait began.
	s.wg.Add(1)
	return ""
}

func (s *Server) release(key string, c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	s.caps.Release(key)
}

func (s *Server) handle(c net.Conn, key string) {
	deadline := time.Now().Add(s.opts.HandshakeTimeout)
	c.SetReadDeadline(deadline)
	r, k, salt, target, reason := s.handshake(c)
	var route func(net.Conn)
	if reason == "" {
		if route = s.opts.Route(target); route == nil {
			reason = RefusedTarget
		}
	}
	if reason != "" {
		s.opts.Refused(reason)
		drain(c)
		s.release(key, c)
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	conn := &Conn{Conn: c, r: r, w: s.responseWriter(c, k, salt), bytes: s.opts.Bytes}
	conn.onClose = func() { s.release(key, c) }
	route(conn)
}

// drain reads and discards until the deadline set at accept (or until the
// peer closes), so that a probe learns nothing from when or how the
// connection ends: no answer, no reset, the same wait for every reason.
func drain(c net.Conn) {
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// handshake reads and checks the request header: salt, then the length
// chunk (SIP004) or the fixed-length header (SIP022) under each key, then
// the target address.
func (s *Server) handshake(c io.Reader) (*reader, Key, []byte, Target, string) {
	// The longer of the two first reads: salt + sealed SIP022 fixed header
	// (type, timestamp, length). A SIP004 stream always has as many bytes:
	// salt, sealed length, and a sealed first chunk holding the address.
	const fixed2022 = 1 + 8 + 2
	first := make([]byte, saltSize+fixed2022+tagSize)
	if _, err := io.ReadFull(c, first); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, Key{}, nil, Target{}, RefusedAuth
		}
		return nil, Key{}, nil, Target{}, RefusedTimeout
	}
	salt := first[:saltSize]
	for _, k := range s.opts.Keys() {
		aead, err := k.sessionAEAD(salt)
		if err != nil {
			continue
		}
		r := newReader(c, aead, k.maxChunk())
		var sealed []byte
		if k.is2022() {
			sealed = append([]byte(nil), first[saltSize:]...)
		} else {
			sealed = append([]byte(nil), first[saltSize:saltSize+2+tagSize]...)
			r.r = io.MultiReader(bytesReader(first[saltSize+2+tagSize:]), c)
		}
		pt, err := r.open(sealed)
		if err != nil {
			continue
		}
		// This key it is. The salt counts as seen only now: data that
		// no key opens must not fill the filter.
		if !s.replay.add(salt) {
			return nil, Key{}, nil, Target{}, RefusedReplay
		}
		var body []byte
		if k.is2022() {
			if pt[0] != 0 { // request stream
				return nil, Key{}, nil, Target{}, RefusedAuth
			}
			ts := time.Unix(int64(binary.BigEndian.Uint64(pt[1:9])), 0)
			if d := s.opts.Now().Sub(ts); d > maxClockSkew || d < -maxClockSkew {
				return nil, Key{}, nil, Target{}, RefusedTimestamp
			}
			n := int(binary.BigEndian.Uint16(pt[9:11]))
			if n == 0 {
				return nil, Key{}, nil, Target{}, RefusedAuth
			}
			if body, err = r.readSealed(n, false); err != nil {
				return nil, Key{}, nil, Target{}, reasonOf(err)
			}
		} else {
			n := int(binary.BigEndian.Uint16(pt))
			if n > maxChunk2017 {
				return nil, Key{}, nil, Target{}, RefusedAuth
			}
			if body, err = r.readSealed(n, false); err != nil {
				return nil, Key{}, nil, Target{}, reasonOf(err)
			}
		}
		body = append([]byte(nil), body...)
		target, rest, err := parseTarget(body)
		if err != nil {
			return nil, Key{}, nil, Target{}, RefusedAuth
		}
		if k.is2022() {
			if len(rest) < 2 {
				return nil, Key{}, nil, Target{}, RefusedAuth
			}
			pad := int(binary.BigEndian.Uint16(rest))
			if pad > maxPadding || len(rest) < 2+pad {
				return nil, Key{}, nil, Target{}, RefusedAuth
			}
			rest = rest[2+pad:]
		}
		r.pending = rest
		return r, k, append([]byte(nil), salt...), target, ""
	}
	return nil, Key{}, nil, Target{}, RefusedAuth
}

func reasonOf(err error) string {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, errAuth) {
		return RefusedAuth
	}
	return RefusedTimeout
}

// responseWriter starts the server's stream: a fresh salt and, for
// SIP022, the response header (type 1, timestamp, the request's salt, the
// first chunk's length).
func (s *Server) responseWriter(c net.Conn, k Key, reqSalt []byte) *writer {
	salt := make([]byte, saltSize)
	rand.Read(salt)
	// Our own salts too: a response sent back at us is a replay.
	s.replay.add(salt)
	aead, _ := k.sessionAEAD(salt)
	w := &writer{w: c, aead: aead, maxChunk: k.maxChunk(), prefix: salt}
	if k.is2022() {
		reqSalt = append([]byte(nil), reqSalt...)
		w.header = func(n int) []byte {
			h := make([]byte, 0, 1+8+saltSize+2)
			h = append(h, 1)
			h = binary.BigEndian.AppendUint64(h, uint64(s.opts.Now().Unix()))
			h = append(h, reqSalt...)
			return binary.BigEndian.AppendUint16(h, uint16(n))
		}
	}
	return w
}

// Conn is a client's decrypted stream, handed to a route. Its RemoteAddr
// is the client's address.
type Conn struct {
	net.Conn
	r       *reader
	w       *writer
	wmu     sync.Mutex
	bytes   func(in, out int)
	once    sync.Once
	onClose func()
}

func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.bytes(n, 0)
	}
	if errors.Is(err, errAuth) || errors.Is(err, io.ErrUnexpectedEOF) {
		// A tampered or cut stream ends the connection like any error.
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, err := c.w.Write(p)
	if n > 0 {
		c.bytes(0, n)
	}
	return n, err
}

// Close closes the client's connection.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

// ipKey is what the per-address cap counts: the IP, or an IPv6 /64.
func ipKey(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if v4 := ta.IP.To4(); v4 != nil {
		return v4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

type sliceReader struct{ b []byte }

func bytesReader(b []byte) io.Reader { return &sliceReader{b: append([]byte(nil), b...)} }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
