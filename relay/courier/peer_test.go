package courier

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// pki is a test certificate authority that the courier under test trusts.
type pki struct {
	pool *x509.CertPool
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "courier test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &pki{pool: pool, cert: cert, key: key}
}

// issue returns a certificate for names (host names or IPs), signed by the
// CA, or self-signed when p is nil.
func (p *pki) issue(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	parent, signer := tmpl, key
	if p != nil {
		parent, signer = p.cert, p.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// nextIP hands every peer of the test binary its own loopback address, so
// peers of one test can share port numbers and tests cannot collide.
var nextIP atomic.Int32

func freshIP() string {
	n := 10 + nextIP.Add(1)
	return fmt.Sprintf("127.0.%d.%d", n/250, n%250+1)
}

// httpReq is what a peer's /mxdeliv saw.
type httpReq struct {
	from          string
	to            []string
	body          string
	contentLength int64
	remoteIP      string
}

// smtpMsg is what a peer's SMTP server saw.
type smtpMsg struct {
	helo, from string
	to         []string
	body       string
	remoteIP   string
	tls        bool
}

// peer is a fake chatmail relay: /mxdeliv over HTTPS and SMTP with
// STARTTLS on one loopback address.
type peer struct {
	ip                  string
	httpsPort, smtpPort int

	mu         sync.Mutex
	httpStatus int
	httpReply  string
	rcptErr    func(rcpt string) error
	httpHits   int
	httpReqs   []httpReq
	smtpMails  int // MAIL commands seen
	smtpMsgs   []smtpMsg
}

type peerConfig struct {
	cert      tls.Certificate
	noHTTPS   bool // nothing listens on the HTTPS port
	noSMTP    bool // nothing listens on the SMTP port
	noTLSSMTP bool // SMTP without STARTTLS
	httpsPort int  // 0: any
	smtpPort  int  // 0: any
}

func startPeer(t *testing.T, cfg peerConfig) *peer {
	t.Helper()
	p := &peer{ip: freshIP(), httpStatus: 200, httpReply: "250 2.0.0 OK"}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cfg.cert}}

	listen := func(port int) net.Listener {
		ln, err := net.Listen("tcp", net.JoinHostPort(p.ip, strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	// Reserve both ports even when a service is off, so the port the
	// courier dials is certainly closed rather than someone else's.
	httpsLn, smtpLn := listen(cfg.httpsPort), listen(cfg.smtpPort)
	p.httpsPort = httpsLn.Addr().(*net.TCPAddr).Port
	p.smtpPort = smtpLn.Addr().(*net.TCPAddr).Port
	if cfg.noHTTPS {
		httpsLn.Close()
	} else {
		srv := &http.Server{Handler: http.HandlerFunc(p.serveHTTP), ErrorLog: log.New(io.Discard, "", 0)}
		go srv.Serve(tls.NewListener(httpsLn, tlsCfg))
		t.Cleanup(func() { srv.Close() })
	}
	if cfg.noSMTP {
		smtpLn.Close()
	} else {
		srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
			return &peerSession{p: p, conn: c}, nil
		}))
		srv.Domain = "peer.test"
		if !cfg.noTLSSMTP {
			srv.TLSConfig = tlsCfg
		}
		srv.ReadTimeout = 10 * time.Second
		srv.WriteTimeout = 10 * time.Second
		go srv.Serve(smtpLn)
		t.Cleanup(func() { srv.Close() })
	}
	return p
}

func (p *peer) setHTTP(status int, reply string) {
	p.mu.Lock()
	p.httpStatus, p.httpReply = status, reply
	p.mu.Unlock()
}

func (p *peer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.httpHits++
	status, reply := p.httpStatus, p.httpReply
	p.mu.Unlock()
	if r.Method != http.MethodPost || r.URL.Path != "/mxdeliv" {
		http.Error(w, "not here", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "read", http.StatusBadRequest)
		return
	}
	if status == http.StatusOK {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		p.mu.Lock()
		p.httpReqs = append(p.httpReqs, httpReq{
			from: r.Header.Get("X-Mail-From"), to: r.Header.Values("X-Mail-To"),
			body: string(body), contentLength: r.ContentLength, remoteIP: host,
		})
		p.mu.Unlock()
	}
	w.WriteHeader(status)
	io.WriteString(w, reply)
}

func (p *peer) stats() (httpHits, httpOK, smtpOK int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.httpHits, len(p.httpReqs), len(p.smtpMsgs)
}

type peerSession struct {
	p    *peer
	conn *smtp.Conn
	msg  smtpMsg
}

func (s *peerSession) Mail(from string, _ *smtp.MailOptions) error {
	s.p.mu.Lock()
	s.p.smtpMails++
	s.p.mu.Unlock()
	_, isTLS := s.conn.TLSConnectionState()
	host, _, _ := net.SplitHostPort(s.conn.Conn().RemoteAddr().String())
	s.msg = smtpMsg{helo: s.conn.Hostname(), from: from, remoteIP: host, tls: isTLS}
	return nil
}

func (s *peerSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.p.mu.Lock()
	f := s.p.rcptErr
	s.p.mu.Unlock()
	if f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	s.msg.to = append(s.msg.to, to)
	return nil
}

func (s *peerSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.body = string(b)
	s.p.mu.Lock()
	s.p.smtpMsgs = append(s.p.smtpMsgs, s.msg)
	s.p.mu.Unlock()
	return nil
}

func (s *peerSession) Reset()        {}
func (s *peerSession) Logout() error { return nil }

// resolver is a fake DNS that records what it was asked.
type resolver struct {
	mu      sync.Mutex
	mx      map[string][]*net.MX
	mxErr   map[string]error
	hosts   map[string][]string
	queries []string
}

func newResolver() *resolver {
	return &resolver{mx: map[string][]*net.MX{}, mxErr: map[string]error{}, hosts: map[string][]string{}}
}

func (r *resolver) addMX(domain string, pref uint16, host, ip string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mx[domain] = append(r.mx[domain], &net.MX{Host: host + ".", Pref: pref})
	if ip != "" {
		r.hosts[host] = []string{ip}
	}
}

func (r *resolver) LookupMX(_ context.Context, domain string) ([]*net.MX, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queries = append(r.queries, "MX "+domain)
	if err := r.mxErr[domain]; err != nil {
		return nil, err
	}
	if mx, ok := r.mx[domain]; ok {
		return mx, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: domain, IsNotFound: true}
}

func (r *resolver) LookupHost(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queries = append(r.queries, "A "+host)
	if a, ok := r.hosts[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *resolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (r *resolver) asked() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.queries...)
}

func rcptReply(code int, enh smtp.EnhancedCode, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

func itoa(i int) string { return strconv.Itoa(i) }
