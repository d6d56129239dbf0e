package acme

import (
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http/httptest"
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

// testCA is a Pebble ACME server inside the test process. It validates
// for real: its VA resolves names through a loopback DNS server that maps
// localhost and *.localhost to 127.0.0.1, and connects to the HTTP-01 and
// TLS-ALPN-01 ports the test gives it.
type testCA struct {
	DirURL  string         // ACME directory
	Trust   *x509.CertPool // for talking to the directory (Config.CARoots)
	Roots   *x509.CertPool // Pebble's root: verifies the certificates it issues
	gate    *gateListener
	srv     *httptest.Server
	Issuing string // Pebble's intermediate subject, to recognise its certificates
}

// SetUp makes the CA reachable (true) or drop every connection (false).
func (c *testCA) SetUp(up bool) { c.gate.up.Store(up) }

func startTestCA(t *testing.T, httpPort, tlsPort int) *testCA {
	t.Helper()
	// No random sleeps before validation, and no simulated bad nonces:
	// the test waits on results, so randomness only adds run time.
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")

	logger := log.New(io.Discard, "", 0)
	if testing.Verbose() {
		w := &testLogWriter{t: t}
		t.Cleanup(w.stop)
		logger = log.New(w, "pebble ", 0)
	}
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "test profile"},
	})
	validator := va.New(logger, httpPort, tlsPort, false, startTestDNS(t), store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gate := &gateListener{Listener: ln}
	gate.up.Store(true)
	srv := httptest.NewUnstartedServer(front.Handler())
	srv.Listener.Close()
	srv.Listener = gate
	srv.StartTLS()
	t.Cleanup(srv.Close)

	trust := x509.NewCertPool()
	trust.AddCert(srv.Certificate())
	roots := x509.NewCertPool()
	roots.AddCert(authority.GetRootCert(0).Cert)
	return &testCA{
		DirURL:  srv.URL + wfe.DirectoryPath,
		Trust:   trust,
		Roots:   roots,
		gate:    gate,
		srv:     srv,
		Issuing: authority.GetIntermediateCert(0).Cert.Subject.String(),
	}
}

// gateListener plays a CA behind a firewall: while down it accepts and
// drops every connection, so clients fail fast instead of timing out.
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

// startTestDNS serves A records for localhost and *.localhost on loopback
// TCP (Pebble's custom resolver speaks TCP) and returns its address.
func startTestDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
			if q.Qtype == dns.TypeA && (name == "localhost" || strings.HasSuffix(name, ".localhost")) {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

// testLogWriter sends Pebble's log to the test log while the test runs and
// drops it after (Pebble's goroutines outlive the test).
type testLogWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
