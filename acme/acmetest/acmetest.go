// Package acmetest runs an ACME certificate authority (Pebble,
// github.com/letsencrypt/pebble/v2) inside the test process, for tests
// that obtain real certificates for localhost over TLS-ALPN-01 and
// HTTP-01 without leaving loopback.
//
// The CA validates for real: its validation authority resolves localhost
// and *.localhost through a DNS server of its own on loopback, and
// connects to the HTTP-01 and TLS-ALPN-01 ports the test names. Its
// directory is served over HTTPS with a certificate of its own (Trust);
// the certificates it issues chain to a different root (Roots).
//
// The package does not import the relay's acme package, so that package's
// own tests can use it too.
package acmetest

import (
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Options configure a CA.
type Options struct {
	// HTTPPort and TLSALPNPort are the ports the CA connects to, on the
	// address its DNS gives the name being validated, for HTTP-01 and
	// TLS-ALPN-01. 0 means a port where nothing answers (1), so that
	// challenge type always fails.
	HTTPPort, TLSALPNPort int
	// Addr is the IPv4 address the CA's DNS gives localhost and every
	// *.localhost name; default 127.0.0.1. It must be a loopback address.
	Addr net.IP
}

// CA is a running Pebble. Its fields are read-only.
type CA struct {
	// DirURL is the ACME directory (acme.Config.CA).
	DirURL string
	// Trust verifies the directory's HTTPS server (acme.Config.CARoots).
	Trust *x509.CertPool
	// Roots holds Pebble's root: it verifies the certificates the CA
	// issues, as a strict client would.
	Roots *x509.CertPool
	// Root and Intermediate are Pebble's CA certificates; issued
	// certificates are signed by Intermediate.
	Root, Intermediate *x509.Certificate
	// Issuing is Intermediate's subject, to recognise a certificate from
	// this CA by its issuer.
	Issuing string

	gate *gateListener
}

// SetUp makes the CA reachable (true, the state after Start) or not
// (false): while down, every connection to the directory is accepted and
// dropped at once, like a CA behind a firewall that resets, so clients
// fail fast instead of waiting for a timeout.
func (c *CA) SetUp(up bool) { c.gate.up.Store(up) }

// Up reports whether the CA is reachable.
func (c *CA) Up() bool { return c.gate.up.Load() }

// envMu serialises the construction of Pebble's parts, which read their
// settings from the environment, so that CAs can start in parallel tests
// (testing.T.Setenv would forbid t.Parallel).
var envMu sync.Mutex

// pebbleEnv turns off Pebble's random sleeps before validation and its
// simulated bad nonces: tests wait on results, so randomness only adds
// run time.
var pebbleEnv = map[string]string{
	"PEBBLE_VA_NOSLEEP":      "1",
	"PEBBLE_VA_ALWAYS_VALID": "0",
	"PEBBLE_WFE_NONCEREJECT": "0",
}

// Start runs a CA until the test ends. It is reachable at once.
func Start(tb testing.TB, opts Options) *CA {
	tb.Helper()
	httpPort, tlsPort := opts.HTTPPort, opts.TLSALPNPort
	if httpPort == 0 {
		httpPort = 1
	}
	if tlsPort == 0 {
		tlsPort = 1
	}
	addr := opts.Addr
	if addr == nil {
		addr = net.IPv4(127, 0, 0, 1)
	}
	if addr.To4() == nil || !addr.IsLoopback() {
		tb.Fatalf("acmetest: Addr %v is not an IPv4 loopback address", addr)
	}

	logger := log.New(io.Discard, "", 0)
	if testing.Verbose() {
		logger = log.New(LogWriter(tb), "pebble ", 0)
	}
	dnsAddr := startDNS(tb, addr)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	gate := &gateListener{Listener: ln}
	gate.up.Store(true)

	store := db.NewMemoryStore()
	envMu.Lock()
	restore := setEnv(pebbleEnv)
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "test profile"},
	})
	validator := va.New(logger, httpPort, tlsPort, false, dnsAddr, store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	restore()
	envMu.Unlock()

	srv := httptest.NewUnstartedServer(front.Handler())
	srv.Listener.Close()
	srv.Listener = gate
	srv.StartTLS()
	tb.Cleanup(srv.Close)

	root := authority.GetRootCert(0).Cert
	inter := authority.GetIntermediateCert(0).Cert
	trust := x509.NewCertPool()
	trust.AddCert(srv.Certificate())
	roots := x509.NewCertPool()
	roots.AddCert(root)
	return &CA{
		DirURL:       srv.URL + wfe.DirectoryPath,
		Trust:        trust,
		Roots:        roots,
		Root:         root,
		Intermediate: inter,
		Issuing:      inter.Subject.String(),
		gate:         gate,
	}
}

// setEnv sets vars and returns a function that puts back what was there.
func setEnv(vars map[string]string) (restore func()) {
	type old struct {
		v  string
		ok bool
	}
	prev := map[string]old{}
	for k, v := range vars {
		pv, ok := os.LookupEnv(k)
		prev[k] = old{pv, ok}
		os.Setenv(k, v)
	}
	return func() {
		for k, o := range prev {
			if o.ok {
				os.Setenv(k, o.v)
			} else {
				os.Unsetenv(k)
			}
		}
	}
}

// gateListener plays a CA behind a firewall: while down it accepts and
// drops every connection.
type gateListener struct {
	net.Listener
	up atomic.Bool
}

func (g *gateListener) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil || g.up.Load() {
			return c, err
		}
		c.Close()
	}
}

// startDNS serves A records mapping localhost and *.localhost to addr on
// loopback TCP (Pebble's custom resolver speaks TCP) and returns its
// address. Other names and types get an empty answer.
func startDNS(tb testing.TB, addr net.IP) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
			if q.Qtype == dns.TypeA && (name == "localhost" || strings.HasSuffix(name, ".localhost")) {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   addr,
				})
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	tb.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

// LogWriter returns a writer that sends each write to tb.Log while the test
// runs and drops it after the test ends: Pebble's and certmagic's
// goroutines outlive the test, and testing panics on a Log after the end.
func LogWriter(tb testing.TB) io.Writer {
	w := &logWriter{tb: tb}
	tb.Cleanup(w.stop)
	return w
}

type logWriter struct {
	tb   testing.TB
	mu   sync.Mutex
	done bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *logWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
