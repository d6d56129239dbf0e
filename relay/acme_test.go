package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/acme/acmetest"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// Layer 5 of TESTING.md at the relay level: a whole relay in domain mode
// (localhost) with tls mode auto gets real certificates from Pebble running
// in this process, which validates against the relay's own listeners.

// acmeWait bounds every wait on the certificate manager; issuance takes
// about a second on a quiet machine.
const acmeWait = 60 * time.Second

type acmeChallenge int

const (
	viaTLSALPN01 acmeChallenge = iota // on the HTTPS (443) listener, by the ALPN mux
	viaHTTP01                         // on the HTTP (80) listener
)

// acmeRelay is a relay whose certificates come from an in-process CA.
type acmeRelay struct {
	*relaytest.Relay
	ca   *acmetest.CA
	self *x509.Certificate // the self-signed fallback
}

// reserveLoopbackAddr returns a 127.0.0.1 address with a port that was
// free a moment ago. The CA and certmagic must know the relay's challenge
// ports before the relay opens them, so those two cannot be port 0.
func reserveLoopbackAddr(t *testing.T) (string, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	return addr.String(), addr.Port
}

// startACMERelay starts a CA validating only the challenge given, pointed
// at the relay's listener for it, and a relay for localhost in tls mode
// auto that asks it for certificates. With caDown the CA is unreachable
// until SetUp(true).
func startACMERelay(t *testing.T, challenge acmeChallenge, caDown bool) *acmeRelay {
	t.Helper()
	cfg := relaytest.Config(t.TempDir())
	cfg.Domain = "localhost"
	cfg.TLS.Mode = "auto"
	var httpsPort, httpPort int
	cfg.Listen.HTTPS, httpsPort = reserveLoopbackAddr(t)
	cfg.Listen.HTTP, httpPort = reserveLoopbackAddr(t)

	level := slog.LevelInfo
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	ac := acme.Config{
		Mode:    acme.ModeAuto,
		Domain:  cfg.Domain,
		DataDir: cfg.DataDir,
		// Fast retries, so the test sees the CA come back soon.
		RetryMin: 20 * time.Millisecond,
		RetryMax: 200 * time.Millisecond,
		Logger:   slog.New(slog.NewTextHandler(acmetest.LogWriter(t), &slog.HandlerOptions{Level: level})),
	}
	var caOpts acmetest.Options
	switch challenge {
	case viaTLSALPN01:
		caOpts.TLSALPNPort, ac.AltTLSALPNPort, ac.DisableHTTPChallenge = httpsPort, httpsPort, true
	case viaHTTP01:
		caOpts.HTTPPort, ac.AltHTTPPort, ac.DisableTLSALPNChallenge = httpPort, httpPort, true
	}
	ca := acmetest.Start(t, caOpts)
	if caDown {
		ca.SetUp(false)
	}
	ac.CA, ac.CARoots = ca.DirURL, ca.Trust
	certs, err := acme.New(ac)
	if err != nil {
		t.Fatal(err)
	}
	self, err := certs.Certificate()
	if err != nil || !certs.SelfSigned() {
		t.Fatalf("before start: want the self-signed certificate, got %v, %v", self, err)
	}
	r := relaytest.StartWithCerts(t, cfg, relay.Options{}, certs)
	return &acmeRelay{Relay: r, ca: ca, self: self.Leaf}
}

// waitCerts waits until cond holds, re-checking at each change the
// manager reports.
func (r *acmeRelay) waitCerts(t *testing.T, what string, cond func(acme.Status) bool) {
	t.Helper()
	deadline := time.NewTimer(acmeWait)
	defer deadline.Stop()
	for {
		changed := r.Certs.Changed()
		if cond(r.Certs.Status()) {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; status %+v", acmeWait, what, r.Certs.Status())
		}
	}
}

func allIssued(st acme.Status) bool {
	return !st.SelfSigned && len(st.Waiting) == 0 && st.LastError == ""
}

// tlsEntry is one way into the relay over TLS: a listener, the ALPN
// protocol offered, and the first line the protocol behind it sends.
type tlsEntry struct {
	name, listener string
	alpn           []string
	greeting       string
}

var tlsEntries = []tlsEntry{
	{"imaps", "imaps", nil, "* OK"},
	{"submissions", "submissions", nil, "220 "},
	{"https alpn imap", "https", []string{acme.ALPNIMAP}, "* OK"},
	{"https alpn smtp", "https", []string{acme.ALPNSMTP}, "220 "},
	{"https alpn http/1.1", "https", []string{"http/1.1"}, "HTTP/1.1 200"},
	{"https no alpn", "https", nil, "HTTP/1.1 200"},
}

// greet handshakes with one entry and reads the protocol's first line (for
// HTTPS, the status line of GET /; nothing for an empty greeting). The
// handshake error is returned as is.
func (r *acmeRelay) greet(t *testing.T, e tlsEntry, conf *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	conf = conf.Clone()
	conf.NextProtos = e.alpn
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: conf}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", r.AddrOf(e.listener))
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	cs := tc.ConnectionState()
	if len(e.alpn) > 0 && cs.NegotiatedProtocol != e.alpn[0] {
		t.Errorf("%s: negotiated %q", e.name, cs.NegotiatedProtocol)
	}
	if e.greeting == "" {
		return cs, nil
	}
	if strings.HasPrefix(e.greeting, "HTTP/") {
		io.WriteString(tc, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	}
	line, err := bufio.NewReader(tc).ReadString('\n')
	if !strings.HasPrefix(line, e.greeting) {
		t.Errorf("%s: first line %q (%v), want %q...", e.name, line, err, e.greeting)
	}
	return cs, nil
}

// strictTLS verifies the relay as a client that trusts only the CA's root
// would: Delta Chat without "accept invalid certificates".
func (r *acmeRelay) strictTLS() *tls.Config {
	return &tls.Config{ServerName: "localhost", RootCAs: r.ca.Roots}
}

// checkServedByCA checks that every TLS entry of the relay serves a
// certificate for localhost issued by the CA, verified against its root.
func (r *acmeRelay) checkServedByCA(t *testing.T) {
	t.Helper()
	for _, e := range tlsEntries {
		cs, err := r.greet(t, e, r.strictTLS())
		if err != nil {
			t.Errorf("%s: verifying client: %v", e.name, err)
			continue
		}
		leaf := cs.PeerCertificates[0]
		if got := leaf.Issuer.String(); got != r.ca.Issuing {
			t.Errorf("%s: issuer %q, want Pebble's intermediate %q", e.name, got, r.ca.Issuing)
		}
		if err := leaf.VerifyHostname("localhost"); err != nil {
			t.Errorf("%s: %v", e.name, err)
		}
		chain := cs.VerifiedChains[0]
		if len(chain) != 3 || !chain[1].Equal(r.ca.Intermediate) || !chain[2].Equal(r.ca.Root) {
			t.Errorf("%s: verified chain does not run leaf, intermediate, root of the CA", e.name)
		}
	}
	// The other names of the certificate set (mta-sts.D for the MTA-STS
	// policy, www.D) are served on HTTPS too.
	for _, name := range []string{"mta-sts.localhost", "www.localhost"} {
		conf := r.strictTLS()
		conf.ServerName = name
		cs, err := r.greet(t, tlsEntry{name: name, listener: "https"}, conf)
		if err == nil {
			if got := cs.PeerCertificates[0].Issuer.String(); got != r.ca.Issuing {
				t.Errorf("%s: issuer %q", name, got)
			}
		} else {
			t.Errorf("%s: verifying client: %v", name, err)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+r.AddrOf("https")+"/.well-known/mta-sts.txt", nil)
	req.Host = "mta-sts.localhost"
	conf := r.strictTLS()
	conf.ServerName = "mta-sts.localhost"
	resp, err := r.httpsClient(conf).Do(req)
	if err != nil {
		t.Errorf("MTA-STS policy over verified TLS: %v", err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("mode: enforce")) {
		t.Errorf("MTA-STS policy: %d %q", resp.StatusCode, body)
	}
}

// httpsClient talks to the relay's HTTPS listener with conf; the URL
// names its address, conf its server name.
func (r *acmeRelay) httpsClient(conf *tls.Config) *http.Client {
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type newAccountJSON struct {
	Email      string `json:"email"`
	Password   string `json:"password"`
	DCLoginURL string `json:"dclogin_url"`
}

// newAccount POSTs /new over HTTPS with conf.
func (r *acmeRelay) newAccount(t *testing.T, conf *tls.Config) newAccountJSON {
	t.Helper()
	resp, err := r.httpsClient(conf).Post("https://"+r.AddrOf("https")+"/new", "", nil)
	if err != nil {
		t.Fatalf("POST /new: %v", err)
	}
	defer resp.Body.Close()
	var acc newAccountJSON
	if err := json.NewDecoder(resp.Body).Decode(&acc); err != nil || resp.StatusCode != http.StatusOK || acc.Email == "" || acc.Password == "" {
		t.Fatalf("POST /new: %d %+v %v", resp.StatusCode, acc, err)
	}
	return acc
}

// useAccount logs in over IMAPS and IMAP STARTTLS and authenticates on
// submissions and submission STARTTLS, all
// verifying the certificate against the CA, as a user's client would.
func (r *acmeRelay) useAccount(t *testing.T, acc newAccountJSON) {
	t.Helper()
	c, err := imapclient.DialTLS(r.AddrOf("imaps"), &imapclient.Options{TLSConfig: r.strictTLS()})
	if err != nil {
		t.Fatalf("IMAPS with a verifying client: %v", err)
	}
	defer c.Close()
	if err := c.Login(acc.Email, acc.Password).Wait(); err != nil {
		t.Fatalf("IMAP login: %v", err)
	}
	s, err := smtp.DialTLS(r.AddrOf("submissions"), r.strictTLS())
	if err != nil {
		t.Fatalf("submissions with a verifying client: %v", err)
	}
	defer s.Close()
	if err := s.Auth(sasl.NewPlainClient("", acc.Email, acc.Password)); err != nil {
		t.Fatalf("SMTP AUTH: %v", err)
	}
	// The STARTTLS ports serve the same certificate.
	c2, err := imapclient.DialStartTLS(r.AddrOf("imap"), &imapclient.Options{TLSConfig: r.strictTLS()})
	if err != nil {
		t.Fatalf("IMAP STARTTLS with a verifying client: %v", err)
	}
	defer c2.Close()
	if err := c2.Login(acc.Email, acc.Password).Wait(); err != nil {
		t.Fatalf("IMAP login after STARTTLS: %v", err)
	}
	s2, err := smtp.DialStartTLS(r.AddrOf("submission"), r.strictTLS())
	if err != nil {
		t.Fatalf("submission STARTTLS with a verifying client: %v", err)
	}
	defer s2.Close()
	if err := s2.Auth(sasl.NewPlainClient("", acc.Email, acc.Password)); err != nil {
		t.Fatalf("SMTP AUTH after STARTTLS: %v", err)
	}
}

func TestACMERelayGetsCertificate(t *testing.T) {
	for _, tc := range []struct {
		name      string
		challenge acmeChallenge
	}{
		{"TLS-ALPN-01 on the HTTPS listener", viaTLSALPN01},
		{"HTTP-01 on the HTTP listener", viaHTTP01},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startACMERelay(t, tc.challenge, false)
			r.waitCerts(t, "certificates for localhost, mta-sts.localhost and www.localhost", allIssued)
			r.checkServedByCA(t)
			st := r.Certs.Status()
			if st.Issuer != r.ca.Issuing || st.NotAfter.Before(time.Now()) || st.Mode != acme.ModeAuto {
				t.Errorf("status %+v", st)
			}
			acc := r.newAccount(t, r.strictTLS())
			if acc.DCLoginURL != "" {
				t.Errorf("/new with a real certificate offers dclogin_url %q", acc.DCLoginURL)
			}
			r.useAccount(t, acc)
		})
	}
}

func TestACMERelaySelfSignedUntilCAComesUp(t *testing.T) {
	r := startACMERelay(t, viaTLSALPN01, true)
	r.waitCerts(t, "a failed attempt recorded", func(st acme.Status) bool {
		return !st.LastAttempt.IsZero() && !st.NextAttempt.IsZero() && st.LastError != "no certificate obtained yet"
	})
	if st := r.Certs.Status(); !st.SelfSigned || st.LastError == "" || len(st.Waiting) == 0 {
		t.Fatalf("CA down: status %+v", st)
	}
	t.Logf("while the CA is down: %s", r.Certs.Status().LastError)

	// A verifying client refuses every listener; one that accepts any
	// certificate gets the relay's self-signed one, and the protocols work.
	insecure := &tls.Config{ServerName: "localhost", InsecureSkipVerify: true}
	for _, e := range tlsEntries {
		if _, err := r.greet(t, e, r.strictTLS()); err == nil || !isUnknownAuthority(err) {
			t.Errorf("CA down: %s: verifying client: %v, want unknown authority", e.name, err)
		}
		cs, err := r.greet(t, e, insecure)
		if err != nil {
			t.Errorf("CA down: %s: %v", e.name, err)
			continue
		}
		if !cs.PeerCertificates[0].Equal(r.self) {
			t.Errorf("CA down: %s: served %q, want the self-signed certificate", e.name, cs.PeerCertificates[0].Issuer)
		}
	}
	// Signed by its own key (CheckSignatureFrom would want a CA).
	if err := r.self.CheckSignature(r.self.SignatureAlgorithm, r.self.RawTBSCertificate, r.self.Signature); err != nil || !bytes.Equal(r.self.RawIssuer, r.self.RawSubject) {
		t.Errorf("fallback certificate is not self-signed: %v", err)
	}
	// The web side tells Delta Chat to accept the certificate.
	acc := r.newAccount(t, insecure)
	if !strings.HasPrefix(acc.DCLoginURL, "dclogin:") || !strings.Contains(acc.DCLoginURL, "ic=3") {
		t.Errorf("CA down: /new dclogin_url %q, want a dclogin: code with ic=3", acc.DCLoginURL)
	}

	// The CA comes back: the real certificate is served with no restart.
	r.ca.SetUp(true)
	r.waitCerts(t, "the real certificates", allIssued)
	r.checkServedByCA(t)
	acc = r.newAccount(t, r.strictTLS())
	if acc.DCLoginURL != "" {
		t.Errorf("CA up: /new still offers dclogin_url %q", acc.DCLoginURL)
	}
	r.useAccount(t, acc)
}

func isUnknownAuthority(err error) bool {
	var ua x509.UnknownAuthorityError
	return errors.As(err, &ua) || strings.Contains(err.Error(), "unknown authority")
}
