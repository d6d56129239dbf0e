package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/accept"
	"github.com/chatrelay/chatrelay/internal/safeio"
	"github.com/chatrelay/chatrelay/relay/shadowsocks"
)

// ProxyKeysFile holds the Shadowsocks keys in the data directory.
const ProxyKeysFile = "proxy-keys.json"

// proxySaltsFile keeps the replay filter's salts across a restart.
const proxySaltsFile = "proxy-salts"

// proxyTargets are the listeners a proxied client may reach, by name.
// Port 25 (other servers), port 80 and the metrics endpoint are not among
// them: the proxy is a way to this relay's clients' ports only.
var proxyTargets = []string{"imaps", "imap", "submissions", "submission", "https"}

// proxyKey is one key as stored: the first of the file is current, the
// others are old ones valid until Expires.
type proxyKey struct {
	Method   string    `json:"method"`
	Password string    `json:"password"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires,omitzero"`
}

type proxyKeys struct {
	Keys []proxyKey `json:"keys"`
}

// proxy is the Shadowsocks listener's state in the relay.
type proxy struct {
	s    *Server
	path string
	ss   *shadowsocks.Server

	mu   sync.Mutex
	keys []proxyKey

	saving sync.Mutex // one save of the replay filter at a time

	// inject hands a decrypted stream to the relay's listener of that
	// name, beneath its connection limits and TLS, as if accepted there:
	// the client's own address counts for limits and login throttling.
	inject map[string]*injectListener
}

// setupProxy loads (or makes) the keys; Start opens the listener.
func (s *Server) setupProxy() error {
	if s.cfg.Proxy.Listen == "" {
		return nil
	}
	p := &proxy{s: s, path: filepath.Join(s.cfg.DataDir, ProxyKeysFile), inject: map[string]*injectListener{}}
	if err := p.load(); err != nil {
		return err
	}
	pm := s.metrics.Proxy()
	p.ss = shadowsocks.NewServer(shadowsocks.Options{
		Keys:             p.current,
		Route:            p.route,
		HandshakeTimeout: s.cfg.Proxy.HandshakeTimeout,
		ReplayWindow:     time.Duration(s.cfg.Proxy.ReplayWindowMinutes) * time.Minute,
		MaxConns:         s.cfg.Proxy.MaxConns,
		MaxConnsPerIP:    s.cfg.Proxy.MaxConnsPerIP,
		// Clients' clocks are real ones: SIP022 timestamps and the replay
		// window go by real time, not the relay's (test) clock.
		Refused: func(reason string) {
			pm.Refused(reason)
			s.log.Debug("proxy connection refused", "reason", reason)
		},
		Accepted: pm.Conn,
		Bytes:    pm.Bytes,
		Logger:   s.log,
	})
	s.proxy = p
	p.loadSalts()
	return nil
}

// loadSalts restores the replay filter saved at the last shutdown, unless
// it is older than the replay window (twice: what the filter keeps).
func (p *proxy) loadSalts() {
	path := filepath.Join(p.s.cfg.DataDir, proxySaltsFile)
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	window := 2 * time.Duration(p.s.cfg.Proxy.ReplayWindowMinutes) * time.Minute
	if fi, err := f.Stat(); err != nil || time.Since(fi.ModTime()) > window {
		return
	}
	if err := p.ss.LoadReplay(f); err != nil {
		p.s.log.Warn("proxy replay filter not restored", "err", err)
	}
}

// saveSalts keeps the replay filter for the next start.
func (p *proxy) saveSalts() {
	p.saving.Lock()
	defer p.saving.Unlock()
	path := filepath.Join(p.s.cfg.DataDir, proxySaltsFile)
	if err := safeio.WriteFrom(path, 0o600, p.ss.SaveReplay); err != nil {
		p.s.log.Warn("proxy replay filter not saved", "err", err)
	}
}

// load reads the key file, making a key when there is none for the
// configured method.
func (p *proxy) load() error {
	var f proxyKeys
	data, err := os.ReadFile(p.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("proxy keys: %w", err)
	default:
		if err := json.Unmarshal(data, &f); err != nil {
			return fmt.Errorf("proxy keys %s: %w", p.path, err)
		}
		for _, k := range f.Keys {
			if _, err := shadowsocks.ParseKey(k.Method, k.Password); err != nil {
				return fmt.Errorf("proxy keys %s: %w", p.path, err)
			}
		}
	}
	p.keys = f.Keys
	if len(p.keys) == 0 || p.keys[0].Method != p.s.cfg.Proxy.Method {
		// A new method needs a key of its kind; the old one has its grace.
		return p.rotate()
	}
	return nil
}

// rotate makes a new current key; the previous one stays valid for the
// grace period.
func (p *proxy) rotate() error {
	k, err := shadowsocks.NewKey(p.s.cfg.Proxy.Method)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.s.now()
	keys := []proxyKey{{Method: k.Method, Password: k.Password, Created: now}}
	grace := time.Duration(p.s.cfg.Proxy.RotateGraceHours) * time.Hour
	for i, old := range p.keys {
		if i == 0 {
			old.Expires = now.Add(grace)
		}
		if grace > 0 && old.Expires.After(now) {
			keys = append(keys, old)
		}
	}
	data, err := json.MarshalIndent(proxyKeys{Keys: keys}, "", "  ")
	if err != nil {
		return err
	}
	if err := safeio.WriteFile(p.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("proxy keys: %w", err)
	}
	p.keys = keys
	return nil
}

// current returns the keys a client may use now, the current one first.
func (p *proxy) current() []shadowsocks.Key {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.s.now()
	var out []shadowsocks.Key
	for i, k := range p.keys {
		if i > 0 && !k.Expires.After(now) {
			continue
		}
		if pk, err := shadowsocks.ParseKey(k.Method, k.Password); err == nil {
			out = append(out, pk)
		}
	}
	return out
}

// url is the ss:// URL of the current key.
func (p *proxy) url() string {
	cfg := p.s.cfg
	host := cfg.Proxy.Host
	if host == "" {
		host = cfg.Hostname()
	}
	port := cfg.Proxy.Port
	if port == 0 {
		if a, ok := p.s.Addr("proxy").(*net.TCPAddr); ok {
			port = a.Port
		} else if _, ps, err := net.SplitHostPort(cfg.Proxy.Listen); err == nil {
			port, _ = strconv.Atoi(ps)
		}
	}
	keys := p.current()
	if len(keys) == 0 {
		return ""
	}
	return shadowsocks.URL(keys[0], host, port, cfg.MailDomain())
}

// route maps a requested target to one of the relay's listeners: the
// host must be this relay (its domain, its IP, an address of this
// machine; loopback and localhost only in dev mode) and the port that of
// an IMAP, submission or HTTPS listener. Anything else is refused.
func (p *proxy) route(t shadowsocks.Target) func(net.Conn) {
	if !p.ownHost(t.Host) {
		return nil
	}
	for _, name := range proxyTargets {
		a, ok := p.s.Addr(name).(*net.TCPAddr)
		if !ok || a.Port != int(t.Port) {
			continue
		}
		inj := p.inject[name]
		if inj == nil {
			return nil
		}
		return func(c net.Conn) {
			p.s.metrics.Proxy().Session(name)
			p.s.log.Debug("proxy connection", "listener", name)
			if !inj.inject(c) {
				c.Close()
			}
		}
	}
	return nil
}

func (p *proxy) ownHost(host string) bool {
	cfg := p.s.cfg
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "" {
		return false
	}
	if d := strings.ToLower(cfg.Domain); d != "" && d != "localhost" {
		switch host {
		case d, "www." + d, "mta-sts." + d, "autoconfig." + d:
			return true
		}
	}
	if h := strings.ToLower(cfg.Proxy.Host); h != "" && host == h {
		return true
	}
	if host == "localhost" {
		return cfg.Dev
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	if ip == nil {
		// No lookups: a name that is not ours is not ours.
		return false
	}
	if ip.IsLoopback() {
		return cfg.Dev
	}
	if cfg.IP != "" && ip.Equal(net.ParseIP(cfg.IP)) {
		return true
	}
	if ip.IsUnspecified() || ip.IsMulticast() {
		return false
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// ProxyURL is the ss:// URL of the proxy's current key; empty when the
// proxy is off.
func (s *Server) ProxyURL() string {
	if s.proxy == nil {
		return ""
	}
	return s.proxy.url()
}

// RotateProxyKey makes a new proxy key; the old one stays valid for
// proxy.rotate_grace_hours.
func (s *Server) RotateProxyKey() error {
	if s.proxy == nil {
		return errors.New("the proxy is off (set [proxy] listen)")
	}
	return s.proxy.rotate()
}

// startProxy opens the Shadowsocks listener.
func (s *Server) startProxy() error {
	if s.proxy == nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Proxy.Listen)
	if err != nil {
		return fmt.Errorf("listen proxy on %s: %w", s.cfg.Proxy.Listen, err)
	}
	s.mu.Lock()
	s.listeners["proxy"] = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.proxy.ss.Serve(ln); err != nil && !isClosed(err) {
			s.log.Error("listener stopped", "listener", "proxy", "err", err)
		}
	}()
	return nil
}

// saveSaltsLoop saves the replay filter every few minutes besides at
// shutdown, so that a crash opens replays of only the last few minutes.
func (s *Server) saveSaltsLoop(ctx context.Context) {
	if s.proxy == nil {
		return
	}
	t := time.NewTicker(5 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.proxy.saveSalts()
		}
	}
}

// injectListener is a listener that also accepts connections handed to
// it in the process (decrypted proxy streams).
type injectListener struct {
	net.Listener
	ch       chan net.Conn
	accepted chan acceptResult
	done     chan struct{}
	once     sync.Once
}

type acceptResult struct {
	c   net.Conn
	err error
}

func newInjectListener(ln net.Listener) *injectListener {
	l := &injectListener{Listener: ln, ch: make(chan net.Conn), accepted: make(chan acceptResult), done: make(chan struct{})}
	go l.pump()
	return l
}

func (l *injectListener) pump() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- acceptResult{c, err}:
		case <-l.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil && !accept.Temporary(err) {
			return
		}
	}
}

func (l *injectListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case r := <-l.accepted:
		return r.c, r.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *injectListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// inject hands c to whoever accepts; false when the listener is closed
// or nobody accepts within a while.
func (l *injectListener) inject(c net.Conn) bool {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	case <-t.C:
		return false
	}
}
