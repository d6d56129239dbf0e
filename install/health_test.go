package install

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// imapServer greets every TLS connection with greeting.
func imapServer(t *testing.T, greeting string) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(greeting))
			c.Close()
		}
	}()
	return l.Addr().String()
}

func TestWaitIMAPSeesGreeting(t *testing.T) {
	addr := imapServer(t, "* OK [CAPABILITY IMAP4rev1] chatrelay ready\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitIMAP(ctx, addr, "example.org", 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

func TestWaitIMAPGivesUp(t *testing.T) {
	bad := imapServer(t, "220 this is SMTP\r\n")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for _, tc := range []struct{ addr, want string }{
		{bad, "unexpected greeting"},
		{closed, "no IMAP greeting on " + closed},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := WaitIMAP(ctx, tc.addr, "example.org", 50*time.Millisecond)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.addr, err, tc.want)
		}
	}
}

func TestIMAPSAddrFollowsConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ config, want string }{
		{"", "127.0.0.1:993"},
		{"[listen]\nimaps = \":1993\"\n", "127.0.0.1:1993"},
		{"[listen]\nimaps = \"[::]:993\"\n", "127.0.0.1:993"},
		{"[listen]\nimaps = \"192.0.2.1:993\"\n", "192.0.2.1:993"},
	} {
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte("domain = \"example.org\"\n"+tc.config), 0o600)
		if got := imapsAddr(p); got != tc.want {
			t.Errorf("%q: %s, want %s", tc.config, got, tc.want)
		}
	}
}
