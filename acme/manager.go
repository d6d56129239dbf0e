// Package acme provides the certificates of the relay: ACME (Let's Encrypt
// by default) through certmagic with a self-signed fallback, long-lived
// self-signed certificates for IP mode and "_" domains, operator-managed
// certificate files, the one tls.Config every listener uses, and the ALPN
// routing of port 443 (see Mux).
package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// Mode says where the served certificate comes from.
type Mode string

const (
	// ModeAuto obtains and renews certificates over ACME and serves a
	// self-signed one until the first real certificate exists.
	ModeAuto Mode = "auto"
	// ModeSelfSigned serves a long-lived self-signed certificate.
	ModeSelfSigned Mode = "selfsigned"
	// ModeFiles serves CertFile/KeyFile and reloads them when they change.
	ModeFiles Mode = "files"
)

// ALPN protocol names the relay's listeners speak.
const (
	// ALPNIMAP is what Delta Chat core offers on every IMAP port except
	// 993, and what selects IMAP on port 443.
	ALPNIMAP = "imap"
	// ALPNSMTP is what core offers on every SMTP port except 465, and what
	// selects submission on port 443.
	ALPNSMTP = "smtp"
	// ALPNACME is the TLS-ALPN-01 challenge protocol (RFC 8737 section 6.2).
	ALPNACME = "acme-tls/1"
)

// LetsEncrypt is the default ACME directory.
const LetsEncrypt = certmagic.LetsEncryptProductionCA

const (
	defaultRetryMin = time.Minute
	// defaultRetryMax keeps a blocked relay asking at least hourly, so it
	// gets its certificate soon after the CA becomes reachable, while
	// staying far below Let's Encrypt's failed-validation limit.
	defaultRetryMax = time.Hour
)

// Config configures a Manager.
type Config struct {
	// Mode is "auto" (the default when empty), "selfsigned" or "files".
	// In IP mode and for domains starting with "_", "auto" means
	// "selfsigned": no public CA issues for those.
	Mode Mode
	// Domain is the relay's mail domain, e.g. "example.org"; empty in IP
	// mode.
	Domain string
	// IP is the relay's address in IP mode, e.g. "127.0.0.2"; it becomes
	// an IP SAN of the self-signed certificate.
	IP string
	// DataDir is the relay's data directory; certificates live under
	// DataDir/tls (ACME state in DataDir/tls/acme, the self-signed pair in
	// DataDir/tls/selfsigned.{crt,key}). Required in "auto" mode; without
	// it the self-signed certificate lives in memory only.
	DataDir string
	// CA is the ACME directory URL; default Let's Encrypt production.
	CA string
	// CARoots, when set, is the only trust used to talk to the CA (tests
	// point it at Pebble's).
	CARoots *x509.CertPool
	// Email is the ACME account contact; may be empty.
	Email string
	// CertFile and KeyFile are the PEM files of mode "files".
	CertFile, KeyFile string
	// ReloadInterval is how often, at most, a handshake checks CertFile and
	// KeyFile for changes; default 5s.
	ReloadInterval time.Duration
	// ExtraNames are names besides Domain on the certificate. Nil means
	// mta-sts.D and www.D in "auto" mode and none otherwise; an empty,
	// non-nil slice means none.
	ExtraNames []string
	// AltHTTPPort and AltTLSALPNPort are the ports where the CA reaches the
	// relay for HTTP-01 and TLS-ALPN-01 when they are not 80 and 443
	// (behind a port forward, or in tests).
	AltHTTPPort, AltTLSALPNPort int
	// DisableHTTPChallenge and DisableTLSALPNChallenge turn a challenge
	// type off, e.g. when port 80 is not reachable from outside.
	DisableHTTPChallenge, DisableTLSALPNChallenge bool
	// RetryMin and RetryMax bound the exponential backoff between attempts
	// to obtain a certificate; defaults 1 minute and 1 hour.
	RetryMin, RetryMax time.Duration
	// Logger receives the Manager's and certmagic's logs; default
	// slog.Default().
	Logger *slog.Logger
	// Now returns the current time for session ticket key rotation;
	// default time.Now (tests move it).
	Now func() time.Time
}

// Status describes the certificate being served, for `chatrelay status`
// and the web page.
type Status struct {
	Mode        Mode
	Names       []string // DNS names and IP addresses the relay serves
	Issuer      string   // issuer of the served certificate for Names[0]
	NotAfter    time.Time
	SelfSigned  bool
	Waiting     []string  // in "auto", names still served self-signed for want of an ACME certificate
	LastError   string    // why no real certificate is served, or why the last renewal failed
	LastAttempt time.Time // last attempt to obtain a certificate over ACME
	NextAttempt time.Time // zero when no retry is scheduled
}

// Manager owns the relay's certificates. It is safe for concurrent use.
type Manager struct {
	mode  Mode
	names []string // DNS names, Domain first
	ips   []net.IP
	log   *slog.Logger
	cfg   Config

	self  *tls.Certificate // self-signed: the fallback in "auto", the cert in "selfsigned"
	files *fileCert

	tickets *ticketKeys

	// ACME, only in "auto".
	magic     *certmagic.Config
	cache     *certmagic.Cache
	issuer    *certmagic.ACMEIssuer
	stopCache sync.Once

	mu          sync.Mutex
	started     bool
	nameErr     map[string]string // per name: why it has no ACME certificate
	lastAttempt time.Time
	nextAttempt time.Time
	changed     chan struct{}
}

// New checks cfg and makes or loads the certificate to serve right away,
// so listeners can start before any ACME traffic: the self-signed one, the
// operator's files, or an ACME certificate already in DataDir.
func New(cfg Config) (*Manager, error) {
	m := &Manager{cfg: cfg, log: cfg.Logger, changed: make(chan struct{}), nameErr: map[string]string{}}
	if m.log == nil {
		m.log = slog.Default()
	}
	m.log = m.log.With("component", "tls")

	m.mode = cfg.Mode
	if m.mode == "" {
		m.mode = ModeAuto
	}
	switch m.mode {
	case ModeAuto, ModeSelfSigned, ModeFiles:
	default:
		return nil, fmt.Errorf("tls: unknown mode %q (want %q, %q or %q)", cfg.Mode, ModeAuto, ModeSelfSigned, ModeFiles)
	}

	domain := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(cfg.Domain), "."))
	if cfg.IP != "" {
		ip := net.ParseIP(cfg.IP)
		if ip == nil {
			return nil, fmt.Errorf("tls: IP %q is not an IP address", cfg.IP)
		}
		m.ips = []net.IP{ip}
	}
	if domain == "" && len(m.ips) == 0 && m.mode != ModeFiles {
		return nil, errors.New("tls: need a Domain or an IP")
	}
	// No public CA issues for a bare IP here, nor for "_" names (they are
	// not valid host names); Delta Chat accepts a self-signed certificate
	// for a "_" host by checking the name only.
	if m.mode == ModeAuto && (domain == "" || strings.HasPrefix(domain, "_")) {
		m.mode = ModeSelfSigned
	}
	// Nor does Let's Encrypt issue for localhost or internal names (a dev
	// run); asking would only fill the log with retries.
	if m.mode == ModeAuto && (cfg.CA == "" || cfg.CA == LetsEncrypt) && !certmagic.SubjectQualifiesForPublicCert(domain) {
		m.log.Info("domain cannot get a public certificate; serving self-signed", "domain", domain)
		m.mode = ModeSelfSigned
	}

	extra := cfg.ExtraNames
	if extra == nil && m.mode == ModeAuto {
		extra = []string{"mta-sts." + domain, "www." + domain}
	}
	if domain != "" {
		m.names = append(m.names, domain)
	}
	for _, n := range extra {
		n = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(n), "."))
		if n != "" && !slices.Contains(m.names, n) {
			m.names = append(m.names, n)
		}
	}

	tlsDir := ""
	if cfg.DataDir != "" {
		tlsDir = filepath.Join(cfg.DataDir, "tls")
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	m.tickets = newTicketKeys(tlsDir, now, m.log)

	var err error
	switch m.mode {
	case ModeFiles:
		m.files, err = newFileCert(cfg.CertFile, cfg.KeyFile, cfg.ReloadInterval, m.log, m.notify)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		return m, nil
	case ModeAuto:
		if tlsDir == "" {
			return nil, errors.New("tls: mode auto needs a DataDir to keep its ACME account and certificates")
		}
	}

	m.self, err = loadOrCreateSelfSigned(tlsDir, m.names, m.ips, m.log)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	if m.mode == ModeAuto {
		m.setupACME(filepath.Join(tlsDir, "acme"))
		m.loadStored()
	}
	return m, nil
}

// setupACME wires certmagic: its own cache (not the package default, so
// two Managers in one process stay apart), file storage under DataDir, and
// one ACME issuer.
func (m *Manager) setupACME(storageDir string) {
	zl := newZapLogger(m.log)
	var magic *certmagic.Config
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           zl,
	})
	magic = certmagic.New(m.cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: storageDir},
		Logger:  zl,
		// Let's Encrypt stopped OCSP in 2025, and a relay behind a
		// censoring firewall would only hang on responders it cannot reach.
		OCSP:              certmagic.OCSPConfig{DisableStapling: true},
		DefaultServerName: m.names[0],
		// SPEC section 8: renewals keep the key, so that Delta Chat, which
		// pins the SPKI of a host it verified, keeps connecting through a
		// CA outage that outlasts the certificate.
		ReusePrivateKeys: true,
		OnEvent:          m.onEvent,
		ShouldEmitFunc: func(event string) bool {
			return event == "cert_failed" || event == "cert_obtained" || event == "cached_managed_cert"
		},
	})
	ca := m.cfg.CA
	if ca == "" {
		ca = LetsEncrypt
	}
	tmpl := certmagic.ACMEIssuer{
		CA:                      ca,
		Email:                   m.cfg.Email,
		Agreed:                  true, // running the relay in auto mode is the operator's agreement
		TrustedRoots:            m.cfg.CARoots,
		AltHTTPPort:             m.cfg.AltHTTPPort,
		AltTLSALPNPort:          m.cfg.AltTLSALPNPort,
		DisableHTTPChallenge:    m.cfg.DisableHTTPChallenge,
		DisableTLSALPNChallenge: m.cfg.DisableTLSALPNChallenge,
		Logger:                  zl,
	}
	if ca != LetsEncrypt {
		// certmagic retries a failed renewal against TestCA (LE staging by
		// default); for any other CA that would be a stranger's server.
		tmpl.TestCA = ca
	}
	m.issuer = certmagic.NewACMEIssuer(magic, tmpl)
	magic.Issuers = []certmagic.Issuer{quietIssuer{m.issuer}}
	m.magic = magic
}

// quietIssuer keeps certmagic from ever prompting on stdin for an email
// address: ObtainCertSync is "interactive" in certmagic's sense, but the
// relay is a daemon.
type quietIssuer struct{ *certmagic.ACMEIssuer }

func (q quietIssuer) PreCheck(ctx context.Context, names []string, _ bool) error {
	return q.ACMEIssuer.PreCheck(ctx, names, false)
}

// loadStored puts certificates already in storage into the cache, so a
// restart serves the real certificate at once, with no CA in reach.
func (m *Manager) loadStored() {
	for _, name := range m.names {
		if _, err := m.magic.CacheManagedCertificate(context.Background(), name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("load stored certificate", "name", name, "err", err)
		}
	}
}

// onEvent follows certmagic's own work, including renewals it does in the
// background long after Start, so Status stays true.
func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	switch event {
	case "cert_failed":
		name, _ := data["identifier"].(string)
		msg := fmt.Sprint(data["error"])
		m.log.Warn("certificate request failed", "name", name, "renewal", data["renewal"], "err", msg)
		m.setNameErr(name, fmt.Sprintf("%s: %s", name, msg))
	case "cert_obtained":
		name, _ := data["identifier"].(string)
		m.log.Info("certificate obtained", "name", name, "renewal", data["renewal"], "issuer", data["issuer"])
		m.setNameErr(name, "")
	case "cached_managed_cert":
		m.notify()
	}
	return nil
}

// Start begins obtaining certificates in "auto" mode and returns at once.
// Until a real certificate exists the self-signed one is served; attempts
// repeat with capped exponential backoff, and a certificate that arrives is
// served from the next handshake on. Cancelling ctx stops the attempts and
// certmagic's renewals. In other modes Start does nothing.
func (m *Manager) Start(ctx context.Context) error {
	if m.mode != ModeAuto {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return errors.New("tls: manager already started")
	}
	m.started = true
	go m.run(ctx)
	return nil
}

func (m *Manager) run(ctx context.Context) {
	defer m.Close()
	retryMin, retryMax := m.cfg.RetryMin, m.cfg.RetryMax
	if retryMin <= 0 {
		retryMin = defaultRetryMin
	}
	if retryMax < retryMin {
		retryMax = max(defaultRetryMax, retryMin)
	}
	delay := retryMin
	for ctx.Err() == nil {
		failed := m.manage(ctx)
		if ctx.Err() != nil {
			return
		}
		if failed == 0 {
			m.mu.Lock()
			m.nextAttempt = time.Time{}
			m.mu.Unlock()
			m.notify()
			m.log.Info("serving ACME certificates", "names", m.names)
			break
		}
		// Jitter so relays that lost the CA together do not return to it
		// in lockstep.
		wait := delay/2 + rand.N(delay/2+1)
		m.mu.Lock()
		m.nextAttempt = time.Now().Add(wait)
		m.mu.Unlock()
		m.notify()
		m.log.Warn("no ACME certificate yet for some names; serving self-signed for them",
			"err", m.Status().LastError, "retry_in", wait.Round(time.Second))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(delay*2, retryMax)
	}
	// certmagic's cache maintenance renews from here on.
	<-ctx.Done()
}

// manage asks certmagic for each name on its own, so one name whose DNS is
// not there yet (say www.D) does not keep the others from their
// certificates, and returns how many failed. A name already managed costs
// nothing.
func (m *Manager) manage(ctx context.Context) (failed int) {
	m.mu.Lock()
	m.lastAttempt = time.Now()
	m.mu.Unlock()
	for _, name := range m.names {
		err := m.magic.ManageSync(ctx, []string{name})
		if err != nil {
			failed++
			m.setNameErr(name, err.Error())
		} else {
			m.setNameErr(name, "")
		}
	}
	return failed
}

func (m *Manager) setNameErr(name, msg string) {
	m.mu.Lock()
	if msg == "" {
		delete(m.nameErr, name)
	} else {
		m.nameErr[name] = msg
	}
	m.mu.Unlock()
	m.notify()
}

// Close stops certmagic's background maintenance. Cancelling the context
// given to Start does the same; Close is for a Manager never started.
func (m *Manager) Close() error {
	if m.cache != nil {
		m.stopCache.Do(m.cache.Stop)
	}
	return nil
}

// Changed returns a channel closed at the next change of the served
// certificate or of Status, for waiting on a certificate without polling.
func (m *Manager) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

func (m *Manager) notify() {
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// TLSConfig returns a new tls.Config for a listener. Every listener gets
// the same protocols: Go fails a handshake whose client offers ALPN values
// none of which the server lists, and Delta Chat offers "imap" and "smtp"
// on non-standard ports, so all listeners list them.
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// TLS 1.2 only: forward-secret AEAD suites. TLS 1.3 suites are not
		// configurable and all fine.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		// Server preference order decides when a client offers several.
		NextProtos:     []string{"h2", "http/1.1", ALPNIMAP, ALPNSMTP, ALPNACME},
		GetCertificate: m.getCertificate,
		WrapSession:    m.tickets.wrap,
		UnwrapSession:  m.tickets.unwrap,
	}
}

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	// RFC 8737 section 3: a validation handshake offers acme-tls/1 alone;
	// certmagic answers it with the challenge certificate.
	if m.magic != nil && len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == ALPNACME {
		return m.magic.GetCertificate(hello)
	}
	return m.serving(hello.ServerName), nil
}

// serving returns the certificate for a server name: the ACME one when it
// exists and is valid, the operator's files, or the self-signed one. A
// name that is not ours (or none, or an IP) gets Domain's certificate.
func (m *Manager) serving(serverName string) *tls.Certificate {
	switch m.mode {
	case ModeFiles:
		return m.files.get()
	case ModeAuto:
		name := strings.ToLower(strings.TrimSuffix(serverName, "."))
		if !slices.Contains(m.names, name) {
			name = m.names[0]
		}
		now := time.Now()
		var best *certmagic.Certificate
		for _, c := range m.cache.AllMatchingCertificates(name) {
			if c.Leaf == nil || now.After(c.Leaf.NotAfter) {
				continue
			}
			if best == nil || c.Leaf.NotAfter.After(best.Leaf.NotAfter) {
				best = &c
			}
		}
		if best != nil {
			return &best.Certificate
		}
	}
	return m.self
}

// Certificate returns the certificate currently served for Domain (or the
// IP in IP mode).
func (m *Manager) Certificate() (*tls.Certificate, error) {
	name := ""
	if len(m.names) > 0 {
		name = m.names[0]
	}
	c := m.serving(name)
	if c == nil {
		return nil, errors.New("tls: no certificate")
	}
	return c, nil
}

// SelfSigned reports whether the certificate served for Domain (or the IP)
// is self-signed; the web page then shows a dclogin: QR code that tells
// Delta Chat to accept it.
func (m *Manager) SelfSigned() bool {
	if m.mode == ModeFiles {
		return false
	}
	c, err := m.Certificate()
	return err == nil && sameCert(c, m.self)
}

// HTTPChallengeHandler answers ACME HTTP-01 requests on port 80 and hands
// everything else to next.
func (m *Manager) HTTPChallengeHandler(next http.Handler) http.Handler {
	if m.issuer == nil {
		return next
	}
	return m.issuer.HTTPChallengeHandler(next)
}

// Status describes what is served now.
func (m *Manager) Status() Status {
	st := Status{Mode: m.mode, Names: slices.Clone(m.names), SelfSigned: m.SelfSigned()}
	for _, ip := range m.ips {
		st.Names = append(st.Names, ip.String())
	}
	if m.mode == ModeFiles && len(st.Names) == 0 {
		if c := m.files.get(); c.Leaf != nil {
			st.Names = slices.Clone(c.Leaf.DNSNames)
		}
	}
	if m.mode == ModeAuto {
		for _, n := range m.names {
			if m.serving(n) == m.self {
				st.Waiting = append(st.Waiting, n)
			}
		}
	}
	if c, err := m.Certificate(); err == nil && c.Leaf != nil {
		st.Issuer = c.Leaf.Issuer.String()
		st.NotAfter = c.Leaf.NotAfter
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []string
	for _, n := range m.names {
		if e := m.nameErr[n]; e != "" {
			errs = append(errs, e)
		}
	}
	st.LastError = strings.Join(errs, "; ")
	st.LastAttempt, st.NextAttempt = m.lastAttempt, m.nextAttempt
	if st.SelfSigned && st.LastError == "" && m.mode == ModeAuto {
		st.LastError = "no certificate obtained yet"
	}
	return st
}
