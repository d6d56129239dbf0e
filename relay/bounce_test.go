package relay_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// remoteText is what a hostile server puts in its refusals, hoping the
// relay copies it into a bounce: cleartext into a local mailbox.
const remoteText = "CLEARTEXT-CARRIED Meet me at the station at nine"

func selfSignedCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// refusingBackend refuses every recipient with a long, multi-line reply.
type refusingBackend struct{}

func (refusingBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return refusingSession{}, nil }

type refusingSession struct{}

func (refusingSession) AuthPlain(string, string) error       { return nil }
func (refusingSession) Mail(string, *smtp.MailOptions) error { return nil }
func (refusingSession) Data(io.Reader) error                 { return nil }
func (refusingSession) Reset()                               {}
func (refusingSession) Logout() error                        { return nil }
func (refusingSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		// RFC 2034: each line of the reply starts with the enhanced code.
		Message: "5.1.1 " + remoteText + "\n5.1.1 " + remoteText + " (second line)\n" + strings.Repeat("x", 400)}
}

// TestBounceCarriesNoRemoteText: when the recipient's server refuses, over
// SMTP or over /mxdeliv, the sender's bounce names the reply code and
// status, and none of the server's own text.
func TestBounceCarriesNoRemoteText(t *testing.T) {
	for _, via := range []string{"smtp", "mxdeliv"} {
		t.Run(via, func(t *testing.T) {
			p := newPeers(t, "", "")
			cfg := p.cfgA
			cfg.Federation.AllowPrivateTargets = []string{"127.0.0.3"}
			dns := &testDNS{mx: map[string]string{"_evil.test": "mx._evil.test"}, ip: map[string]string{"mx._evil.test": "127.0.0.3"}}
			a := relaytest.StartWith(t, cfg, relay.Options{Resolver: dns})

			cert := selfSignedCert(t, "mx._evil.test")
			if via == "smtp" {
				ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.3:%d", p.smtpPort))
				if err != nil {
					t.Fatal(err)
				}
				srv := smtp.NewServer(refusingBackend{})
				srv.Domain = "mx._evil.test"
				srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
				srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
				go srv.Serve(ln)
				t.Cleanup(func() { srv.Close() })
			} else {
				// Nothing on SMTP: the /mxdeliv refusal decides.
				ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.3:%d", p.httpsPort))
				if err != nil {
					t.Fatal(err)
				}
				srv := &http.Server{ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.Copy(io.Discard, r.Body)
					w.WriteHeader(http.StatusBadRequest)
					fmt.Fprintf(w, "550 5.7.1 %s\r\n%s\r\n<html>%s</html>\r\n", remoteText, remoteText, remoteText)
				})}
				go srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
				t.Cleanup(func() { srv.Close() })
			}

			alice, bob := "alicealic@[127.0.0.2]", "bobbobbob@_evil.test"
			login(t, a, alice).Close()
			if err := submit(t, a, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
				t.Fatal(err)
			}
			got := string(waitMessages(t, a, alice, 1, 30*time.Second)[0])
			if strings.Contains(got, "CLEARTEXT") || strings.Contains(got, "station") || strings.Contains(got, "xxxxxxxx") || strings.Contains(got, "_evil") && !strings.Contains(got, bob) {
				t.Fatalf("bounce carries the remote server's text:\n%s", got)
			}
			want := []string{"multipart/report", "Final-Recipient: rfc822; " + bob, "Status: 5.1.1", "Diagnostic-Code: smtp; 550 5.1.1"}
			if via == "mxdeliv" {
				want = []string{"multipart/report", "Final-Recipient: rfc822; " + bob, "Status: 5.7.1", "Diagnostic-Code: smtp; 550 5.7.1"}
			}
			for _, w := range want {
				if !strings.Contains(got, w) {
					t.Errorf("bounce lacks %q:\n%s", w, got)
				}
			}
			for _, line := range strings.Split(got, "\r\n") {
				if len(line) > 200 || strings.ContainsFunc(line, func(r rune) bool { return r < ' ' && r != '\t' || r > '~' }) {
					t.Errorf("bounce line not short printable ASCII: %q", line)
				}
			}
		})
	}
}
