// Package relay is the running chatmail relay: it wires the store, the
// policy and the certificates to the listeners (IMAP, submission, inbound
// SMTP, HTTPS) and drains them on shutdown.
package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/internal/accept"
	"github.com/chatrelay/chatrelay/internal/memtrim"
	"github.com/chatrelay/chatrelay/internal/rungroup"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/mailbox/imapext"
	"github.com/chatrelay/chatrelay/policy"
	"github.com/chatrelay/chatrelay/relay/courier"
	"github.com/chatrelay/chatrelay/relay/invite"
	"github.com/chatrelay/chatrelay/relay/iroh"
	"github.com/chatrelay/chatrelay/relay/metrics"
	"github.com/chatrelay/chatrelay/relay/push"
	"github.com/chatrelay/chatrelay/relay/router"
	"github.com/chatrelay/chatrelay/relay/turn"
)

// Certificates supplies the TLS configuration every listener uses.
type Certificates interface {
	TLSConfig() *tls.Config
	// SelfSigned is true while no publicly trusted certificate is served.
	SelfSigned() bool
	// HTTPChallengeHandler answers ACME HTTP-01 on port 80, passing
	// everything else to next.
	HTTPChallengeHandler(next http.Handler) http.Handler
}

// Server is one relay.
type Server struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	store *mailbox.Store
	certs Certificates
	auth  *authenticator
	rate  *policy.RateLimiter
	rules policy.AccountRules
	web   *web
	fed   *federation
	push  *push.Notifier
	// turn is the built-in TURN server, nil when off or external;
	// turnSecret its credential secret, turnHost the host METADATA names.
	turn       *turn.Server
	turnSecret []byte
	turnHost   string

	invites     *invite.Store
	metrics     *metrics.Metrics
	metricsEP   *metrics.Endpoint
	stopControl func()
	version     string
	recent      *metrics.RecentErrors
	// router takes accepted messages to their recipients; bg runs the
	// background work (queue, push, retention, trims) until Shutdown.
	router *router.Router
	bg     *rungroup.Group

	imap       *imapserver.Server // behind the imapext layer of every connection
	imapTLS    *imapext.Server    // implicit TLS (993, 443 by ALPN)
	imapPlain  *imapext.Server    // STARTTLS (143)
	submission *smtpService
	inbound    *smtpService
	https      *http.Server
	iroh       *iroh.Server // nil when iroh_relay is "off"
	httpSrv    *http.Server

	proxy *proxy // nil when off

	conns  connSet
	limits *connLimits
	// hsGate bounds the TLS handshakes computing at once (handshakegate.go).
	hsGate    *handshakeGate
	mu        sync.Mutex
	listeners map[string]net.Listener
	wg        sync.WaitGroup
}

// Options are the parts of a server that are not operator config.
type Options struct {
	Logger *slog.Logger
	// Now is the clock; tests move it. Defaults to time.Now.
	Now func() time.Time
	// Resolver replaces DNS for federation (tests); nil means the
	// resolver from the config.
	Resolver courier.Resolver
	// RootCAs replaces the system roots for verifying other relays (tests).
	RootCAs *x509.CertPool
	// PushClient posts push notifications; nil means a default client.
	PushClient *http.Client
	// Version is reported by status and metrics.
	Version string
	// RecentErrors keeps the last error log lines for status.
	RecentErrors *metrics.RecentErrors
	// ClientTimeoutCap, if positive, shortens every read and write
	// deadline of a client connection to at most this long, so that tests
	// of slow clients finish in seconds.
	ClientTimeoutCap time.Duration
}

// New opens the store and builds the protocol servers; Start opens the
// listeners.
func New(cfg Config, certs Certificates, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	store, err := mailbox.Open(cfg.DataDir, mailbox.Options{QuotaBytes: cfg.QuotaBytes, Now: opts.Now, Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       opts.Logger,
		now:       opts.Now,
		store:     store,
		certs:     certs,
		rate:      policy.NewRateLimiter(cfg.SendRatePerMinute, cfg.SendRateBurst),
		rules:     policy.AccountRules{MinNameLen: cfg.MinNameLen, MaxNameLen: cfg.MaxNameLen, MinPasswordLen: cfg.MinPasswordLen},
		listeners: map[string]net.Listener{},
		limits:    newConnLimits(cfg.Limits, opts.ClientTimeoutCap),
		hsGate:    newHandshakeGate(0),
		bg:        rungroup.New(),
	}
	s.auth = newAuthenticator(s)
	if err := s.setupFederation(opts); err != nil {
		store.Close()
		return nil, err
	}
	s.push, err = push.Open(push.Options{
		DB:        store.DB(),
		URL:       cfg.NotifyURL,
		Client:    opts.PushClient,
		DropToken: store.DropPushToken,
		Now:       opts.Now,
		Logger:    opts.Logger,
	})
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("push notifications: %w", err)
	}
	s.web = newWeb(s)
	s.version, s.recent = opts.Version, opts.RecentErrors
	if s.recent == nil {
		s.recent = metrics.NewRecentErrors(50)
	}
	if s.invites, err = invite.Open(store.DB(), opts.Now); err != nil {
		store.Close()
		return nil, fmt.Errorf("invites: %w", err)
	}
	s.SetInviteChecker(s.invites)
	if cfg.TURN.BuiltIn() {
		if s.turnSecret, err = turn.LoadOrCreateSecret(filepath.Join(cfg.DataDir, turn.SecretFile)); err != nil {
			store.Close()
			return nil, err
		}
	}
	s.metrics = metrics.New(metrics.Options{Accounts: store.CountAccounts, Queue: s.Queue().Stats, Now: opts.Now, Version: opts.Version, Hibernated: s.HibernatedIMAP})
	s.metrics.Register(s.hsGate.collectors()...)
	s.router = router.New(router.Options{
		Store: store, Queue: s.fed.queue, Push: s.push, Metrics: s.metrics, Logger: s.log,
		Quota: cfg.QuotaBytes, Lifecycle: cfg.Lifecycle(), Background: s.bg.Go,
	})
	if err := s.setupProxy(); err != nil {
		store.Close()
		return nil, err
	}
	if cfg.IrohRelay != IrohRelayOff {
		s.iroh = iroh.New(iroh.Options{
			MaxClients:      cfg.Iroh.MaxClients,
			MaxClientsPerIP: cfg.Iroh.MaxClientsPerIP,
			BytesPerSecond:  cfg.Iroh.BytesPerSecond,
			IdleTimeout:     time.Duration(cfg.Iroh.IdleTimeoutSeconds) * time.Second,
			Metrics:         iroh.NewMetrics(s.metrics.Registry()),
			Logger:          s.log,
		})
	}
	s.buildIMAP()
	s.buildSMTP()
	s.https = &http.Server{
		Handler:           s.limits.provedByRequest(s.httpsHandler()),
		ConnContext:       withConn,
		ConnState:         s.limits.httpConnState,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       5 * time.Minute,
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          stdLogger(s.log, "https"),
		TLSConfig:         certs.TLSConfig(),
	}
	return s, nil
}

// Store is the server's message store.
func (s *Server) Store() *mailbox.Store { return s.store }

// Config returns the server's configuration.
func (s *Server) Config() Config { return s.cfg }

func imapCaps() imap.CapSet {
	return imap.CapSet{
		imap.CapIMAP4rev1: {}, imap.CapIdle: {}, imap.CapUIDPlus: {}, imap.CapMove: {},
		imap.CapNamespace: {}, imap.CapUnselect: {}, imap.CapLiteralPlus: {},
		imap.CapSASLIR: {}, imap.CapEnable: {}, imap.CapAppendLimit: {},
	}
}

func (s *Server) buildIMAP() {
	opts := &mailbox.IMAPOptions{
		Authenticate: func(conn net.Conn, user, pass string) (*mailbox.Account, error) {
			return s.auth.login(conn.LocalAddr(), conn.RemoteAddr(), user, pass, "imap")
		},
		CheckAppend: func(acc *mailbox.Account, r io.Reader, w io.Writer) error {
			if reply := policy.Append(acc.Addr, r, w); reply != nil {
				return reply
			}
			return nil
		},
		MaxMessageSize: s.cfg.MaxMessageSize,
		OnIdle:         func() func() { return s.metrics.Idle() },
	}
	opts.OnLogin = func(conn net.Conn, acc *mailbox.Account) {
		imapext.UserSetter(conn).SetUser(acc.Addr)
		s.limits.proved(conn.LocalAddr(), conn.RemoteAddr())
	}
	newSession := func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
		if kept := mailbox.ResumeIMAPSession(c); kept != nil {
			// Back from hibernation: authenticated, the greeting hidden.
			return kept, &imapserver.GreetingData{PreAuth: true}, nil
		}
		return s.store.NewIMAPSession(c, opts), nil, nil
	}
	hibernate := s.cfg.IMAPHibernateAfter
	switch {
	case hibernate == 0:
		hibernate = 10 * time.Second
	case hibernate < 0:
		hibernate = 0
	}
	// The imapext layer in front enforces TLS before authentication, so
	// imapserver itself may allow it on the in-memory connection.
	s.imap = imapserver.New(&imapserver.Options{NewSession: newSession, Caps: imapCaps(), Logger: stdLogger(s.log, "imap"), InsecureAuth: true})
	ext := func(implicit bool) *imapext.Server {
		o := imapext.Options{
			Server:      s.imap,
			Handler:     metadata{s},
			ImplicitTLS: implicit,
			ExtraCaps:   []string{"METADATA", "QUOTA", "QUOTA=RES-STORAGE", "ID", "COMPRESS=DEFLATE", "XCHATMAIL", "XDELTAPUSH"},
			ID:          map[string]string{"name": "chatrelay"},
			Logger:      s.log,
			// Sessions tell the layer of mailbox changes (mailbox/hub.go),
			// so IDLE costs no goroutine of imapserver's.
			IdleNotify: true,
			OnIdle:     func() func() { return s.metrics.Idle() },
			// An idle connection lets imapserver's go, keeping its session.
			HibernateAfter: hibernate,
		}
		if !implicit {
			o.TLSConfig = s.clientTLS()
		}
		return imapext.New(o)
	}
	s.imapTLS, s.imapPlain = ext(true), ext(false)
}

// HibernatedIMAP returns how many IMAP connections are hibernated now.
func (s *Server) HibernatedIMAP() int64 {
	return s.imapTLS.Hibernated() + s.imapPlain.Hibernated()
}

// serveIMAP accepts IMAP connections and runs each through the imapext
// layer.
func (s *Server) serveIMAP(layer *imapext.Server) func(net.Listener) error {
	return func(ln net.Listener) error {
		retry := accept.Retry{OnPause: func(err error, pause time.Duration) {
			s.log.Warn("imap accept", "err", err, "retry_in", pause)
		}}
		for {
			conn, err := retry.Accept(ln)
			if err != nil {
				return err
			}
			if !s.conns.add(conn) {
				conn.Close()
				continue
			}
			s.wg.Add(1)
			ended := s.metrics.IMAPConn()
			// A hibernated connection holds no goroutine (imapext away.go):
			// what ends it runs in done.
			go layer.ServeAsync(conn, func(err error) {
				if err != nil && !isClosed(err) {
					s.log.Debug("imap connection ended", "err", err)
				}
				ended()
				s.conns.remove(conn)
				s.wg.Done()
			})
		}
	}
}

// httpsHandler serves the web site and, for other relays, /mxdeliv and
// our DKIM key.
func (s *Server) httpsHandler() http.Handler {
	site := s.web.handler()
	mux := http.NewServeMux()
	mux.HandleFunc("/mxdeliv", s.handleMXDeliv)
	mux.HandleFunc(dkimKeyPath, s.handleDKIMKey)
	if s.iroh != nil {
		// webxdc realtime (SPEC section 12): the paths of iroh-relay.
		for _, p := range []string{iroh.RelayPath, "/derp", iroh.PingPath, iroh.NoContentPath} {
			mux.Handle(p, s.iroh)
		}
	}
	mux.Handle("/", site)
	return mux
}

// Start opens every configured listener and serves in the background.
func (s *Server) Start() error {
	tlsConf := s.clientTLS()
	type entry struct {
		name, addr string
		tls        bool
		serve      func(net.Listener) error
	}
	entries := []entry{
		{"imaps", s.cfg.Listen.IMAPS, true, s.serveIMAP(s.imapTLS)},
		{"imap", s.cfg.Listen.IMAP, false, s.serveIMAP(s.imapPlain)},
		{"submissions", s.cfg.Listen.Submissions, true, s.submission.Serve},
		{"submission", s.cfg.Listen.Submission, false, s.submission.Serve},
		{"smtp", s.cfg.Listen.SMTP, false, s.inbound.Serve},
		{"https", s.cfg.Listen.HTTPS, false, s.serveHTTPS},
		{"http", s.cfg.Listen.HTTP, false, s.serveHTTP},
	}
	// TURN first: METADATA answers name it once IMAP serves.
	if err := s.startTURN(); err != nil {
		return err
	}
	for _, e := range entries {
		if e.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", e.addr)
		if err != nil {
			s.closeListeners()
			return &ListenError{Name: e.name, Addr: e.addr, Err: err}
		}
		if s.proxy != nil && slices.Contains(proxyTargets, e.name) {
			inj := newInjectListener(ln)
			s.proxy.inject[e.name] = inj
			ln = inj
		}
		// Counted below TLS, so that a handshake already holds a slot.
		ln = s.limitListener(e.name, ln)
		if e.name == "imaps" || e.name == "imap" || e.name == "https" {
			if err := checkIMAPConns(e.name, ln); err != nil {
				ln.Close()
				s.closeListeners()
				return err
			}
		}
		if e.tls {
			ln = tls.NewListener(ln, tlsConf)
		}
		s.mu.Lock()
		s.listeners[e.name] = ln
		s.mu.Unlock()
		s.wg.Add(1)
		go func(e entry, ln net.Listener) {
			defer s.wg.Done()
			if err := e.serve(ln); err != nil && !isClosed(err) {
				s.log.Error("listener stopped", "listener", e.name, "err", err)
			}
		}(e, ln)
	}
	if err := s.startProxy(); err != nil {
		s.closeListeners()
		return err
	}
	stop, err := s.ServeControl(ControlSocketPath(s.cfg.DataDir), AdminOptions{Queue: s.Queue(), Invites: s.invites, RecentErrors: s.recent, Version: s.version})
	if err != nil {
		s.closeListeners()
		return fmt.Errorf("control socket: %w", err)
	}
	s.stopControl = stop
	if s.cfg.MetricsListen != "" {
		// Mail matters more than metrics: a busy metrics port is logged,
		// not fatal.
		if s.metricsEP, err = s.metrics.Serve(s.cfg.MetricsListen, s.cfg.MetricsAllowPublic); err != nil {
			s.log.Error("metrics endpoint not started", "err", err)
		}
	}
	// Each returns when Shutdown stops the group.
	s.bg.Go("outbound queue", func(ctx context.Context) error { s.fed.queue.Run(ctx); return nil })
	s.bg.Go("push notifications", func(ctx context.Context) error { s.push.Run(ctx); return nil })
	s.bg.Go("retention", func(ctx context.Context) error { s.expireLoop(ctx); return nil })
	s.bg.Go("memory trim", func(ctx context.Context) error { memtrim.Run(ctx, 5*time.Second); return nil })
	s.bg.Go("proxy salts", func(ctx context.Context) error { s.saveSaltsLoop(ctx); return nil })
	return nil
}

// clientTLS is the TLS config of the ports clients use (465, 587 after
// STARTTLS, 993, 143 after STARTTLS, 443): TLS 1.3 only, as the reference
// relay (SPEC section 5). Port 25 keeps TLS 1.2 for other mail servers.
func (s *Server) clientTLS() *tls.Config {
	c := s.certs.TLSConfig()
	c.MinVersion = tls.VersionTLS13
	return s.hsGate.wrap(c)
}

// serverTLS is the TLS config of port 25 (TLS 1.2 allowed).
func (s *Server) serverTLS() *tls.Config { return s.hsGate.wrap(s.certs.TLSConfig()) }

// serveHTTPS runs the 443 listener: each TLS connection goes by its ALPN
// protocol to IMAP ("imap"), submission ("smtp") or the web site.
func (s *Server) serveHTTPS(ln net.Listener) error {
	mux := acme.NewMux(ln, s.clientTLS())
	mux.OnHandshakeError = s.metrics.TLSHandshakeFailed
	if s.limits.proveWithin > 0 {
		// A handshake is part of proving oneself.
		mux.HandshakeTimeout = s.limits.proveWithin
	}
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.serveIMAP(s.imapTLS)(mux.IMAP()) }()
	go func() { defer s.wg.Done(); s.submission.Serve(mux.SMTP()) }()
	go func() { defer s.wg.Done(); s.https.Serve(mux.HTTPS()) }()
	err := mux.Serve()
	mux.Close()
	return err
}

// serveHTTP runs port 80: ACME HTTP-01 challenges, otherwise a redirect to
// HTTPS.
func (s *Server) serveHTTP(ln net.Listener) error {
	redirect := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusMovedPermanently)
	})
	srv := &http.Server{
		Handler:           s.limits.provedByRequest(s.certs.HTTPChallengeHandler(redirect)),
		ConnContext:       withConn,
		ConnState:         s.limits.httpConnState,
		ReadHeaderTimeout: 10 * time.Second,
		// Without it an idle keep-alive connection is never closed.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    stdLogger(s.log, "http"),
	}
	s.mu.Lock()
	s.httpSrv = srv
	s.mu.Unlock()
	return srv.Serve(ln)
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) || errors.Is(err, smtp.ErrServerClosed)
}

// Addr returns the bound address of a listener ("imaps", "imap",
// "submissions", "submission", "smtp", "https"), or nil.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ln := s.listeners[name]; ln != nil {
		return ln.Addr()
	}
	return nil
}

// MetricsAddr is the metrics endpoint's bound address, or nil.
func (s *Server) MetricsAddr() net.Addr {
	if s.metricsEP == nil {
		return nil
	}
	return s.metricsEP.Addr()
}

// Listeners returns the bound address of every listener by name.
func (s *Server) Listeners() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for n, ln := range s.listeners {
		out[n] = ln.Addr().String()
	}
	return out
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ln := range s.listeners {
		ln.Close()
	}
	if s.turn != nil {
		// Ends its allocations too.
		s.turn.Close()
	}
}

// Shutdown stops accepting, lets in-flight work finish until ctx ends, then
// closes everything and the store.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	s.https.Shutdown(ctx)
	s.mu.Lock()
	if s.httpSrv != nil {
		s.httpSrv.Shutdown(ctx)
	}
	s.mu.Unlock()
	if s.iroh != nil {
		// Relay connections are hijacked: the HTTPS server's Shutdown
		// does not see them.
		s.iroh.Close()
	}
	s.submission.Shutdown(ctx)
	s.inbound.Shutdown(ctx)
	s.imapTLS.Close()
	s.imapPlain.Close()
	s.imap.Close()
	s.conns.closeAll()
	if s.proxy != nil {
		s.proxy.ss.Close()
		s.proxy.saveSalts()
	}
	if err := s.bg.Stop(); err != nil {
		s.log.Error("background work", "err", err)
	}
	s.fed.courier.Close()
	if s.stopControl != nil {
		s.stopControl()
	}
	if s.metricsEP != nil {
		s.metricsEP.Close()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return s.store.Close()
}

// startTURN runs the built-in TURN server (SPEC section 12), when the
// config asks for it. Ports that cannot be bound are an error, like any
// listener's; an unknown relay address only turns TURN off, so that mail
// still runs on a host whose address is not yet known.
func (s *Server) startTURN() error {
	tc := s.cfg.TURN
	if !tc.BuiltIn() {
		return nil
	}
	relayIP := s.turnRelayIP()
	if relayIP == nil {
		s.log.Error("turn not started: no IPv4 address for relay ports; set turn.relay_ip")
		return nil
	}
	var allow []netip.Prefix
	for _, p := range tc.AllowPeers {
		allow = append(allow, netip.MustParsePrefix(p)) // checked by Validate
	}
	srv, err := turn.Listen(turn.Options{
		UDP: tc.ListenUDP, TCP: tc.ListenTCP,
		RelayIP: relayIP, RelayBind: tc.RelayBind,
		MinPort: tc.MinPort, MaxPort: tc.MaxPort,
		Secret:                  s.turnSecret,
		MaxTTL:                  time.Duration(tc.TTLHours) * time.Hour,
		Realm:                   s.cfg.Hostname(),
		AllowPeers:              allow,
		MaxAllocations:          tc.MaxAllocations,
		MaxAllocationsPerClient: tc.MaxAllocationsPerIP,
		BandwidthPerClient:      tc.BandwidthPerIP,
		TCPConnsPerClient:       tc.TCPPerIP,
		Now:                     s.now,
		Logger:                  s.log,
	})
	if err != nil {
		return fmt.Errorf("%w (another process has the port? set turn.listen_udp and turn.listen_tcp, or --listen-turn)", err)
	}
	// The METADATA entry is host:port:user:password, split at colons:
	// an IPv6 literal cannot be named there (SPEC section 2).
	host := s.cfg.Hostname()
	if s.cfg.Dev {
		// Dev mode's domain (localhost) may resolve to ::1 first, where
		// the server does not listen: name the address it does.
		listen := tc.ListenUDP
		if listen == "" {
			listen = tc.ListenTCP
		}
		if h, _, err := net.SplitHostPort(listen); err == nil && net.ParseIP(h) != nil && !net.ParseIP(h).IsUnspecified() {
			host = h
		}
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		s.log.Error("turn runs, but is not announced: METADATA cannot name an IPv6 address; give the relay a domain", "ip", host)
		host = ""
	}
	s.turn, s.turnHost = srv, host
	s.metrics.Register(srv.Collectors()...)
	return nil
}

// turnRelayIP is the IPv4 address put in relayed addresses: the
// configured one, the relay's IP, its domain's A record, or the host's
// first public IPv4 address.
func (s *Server) turnRelayIP() net.IP {
	if ip := net.ParseIP(s.cfg.TURN.RelayIP); ip != nil {
		return ip.To4()
	}
	if ip := net.ParseIP(s.cfg.IP); ip != nil && ip.To4() != nil {
		return ip.To4()
	}
	if s.cfg.Domain != "" && s.fed != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := s.fed.resolver.LookupHost(ctx, s.cfg.Domain)
		cancel()
		for _, a := range addrs {
			if ip := net.ParseIP(a); ip != nil && ip.To4() != nil && !ip.IsLoopback() {
				return ip.To4()
			}
		}
		if err != nil {
			s.log.Warn("turn: resolve own domain for the relay address", "err", err)
		}
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() && !n.IP.IsPrivate() {
			return n.IP.To4()
		}
	}
	return nil
}

// TURN is the built-in TURN server, or nil.
func (s *Server) TURN() *turn.Server { return s.turn }

func stdLogger(l *slog.Logger, part string) *log.Logger {
	return log.New(slogWriter{l, part}, "", 0)
}

// expireLoop applies the retention rules hourly. The first pass waits a
// few minutes, so that a restart (or a restart loop) does not begin by
// walking the whole store.
func (s *Server) expireLoop(ctx context.Context) {
	first := time.NewTimer(5 * time.Minute)
	defer first.Stop()
	select {
	case <-ctx.Done():
		return
	case <-first.C:
	}
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		st, err := s.store.Expire(s.cfg.Lifecycle())
		if err != nil {
			s.log.Error("expire", "err", err)
		} else if st.Messages > 0 || st.Accounts > 0 {
			s.log.Info("expired", "messages", st.Messages, "bytes", st.Bytes, "accounts", st.Accounts)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// connSet tracks open client connections so shutdown can close them.
type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

func (c *connSet) add(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if c.m == nil {
		c.m = map[net.Conn]struct{}{}
	}
	c.m[conn] = struct{}{}
	return true
}

func (c *connSet) remove(conn net.Conn) {
	c.mu.Lock()
	delete(c.m, conn)
	c.mu.Unlock()
}

func (c *connSet) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for conn := range c.m {
		conn.Close()
	}
}

// slogWriter adapts the standard logger some libraries want to slog.
type slogWriter struct {
	log  *slog.Logger
	part string
}

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Debug(string(trimNL(p)), "part", w.part)
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
