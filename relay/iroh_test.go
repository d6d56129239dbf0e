package relay_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/iroh"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// irohClient joins the relay's iroh relay on the HTTPS listener (port 443
// in production) as core's native client does, through TLS and the ALPN
// mux.
func irohClient(t *testing.T, r *relaytest.Relay) *iroh.Client {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", r.AddrOf("https"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	c, err := iroh.Handshake(conn, "localhost", priv, iroh.ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func metricsText(t *testing.T, r *relaytest.Relay) string {
	t.Helper()
	resp, err := http.Get("http://" + r.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestIrohRelayOnHTTPSListener: two iroh nodes exchange packets through
// the relay's HTTPS listener, and the relay's metrics count them.
func TestIrohRelayOnHTTPSListener(t *testing.T) {
	r := relaytest.Start(t, nil)
	a, b := irohClient(t, r), irohClient(t, r)
	// Both are connected once the metrics count them.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(metricsText(t, r), "chatrelay_iroh_nodes 2"); {
		if time.Now().After(deadline) {
			t.Fatal("the relay never counted two nodes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.Send(b.Key, []byte("realtime")); err != nil {
		t.Fatal(err)
	}
	src, p, err := b.Recv(time.Now().Add(30 * time.Second))
	if err != nil || src != a.Key || string(p) != "realtime" {
		t.Fatalf("b got %q from %x: %v", p, src[:4], err)
	}
	m := metricsText(t, r)
	for _, want := range []string{"chatrelay_iroh_packets_forwarded_total 1", "chatrelay_iroh_nodes 2", `chatrelay_iroh_accepts_total{proto="relay"} 2`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// The probes iroh's net_report uses.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: relaytest.ClientTLS()}, Timeout: 30 * time.Second}
	resp, err := hc.Get("https://" + r.AddrOf("https") + "/generate_204")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("/generate_204: %s", resp.Status)
	}
}

func irohMetadata(t *testing.T, r *relaytest.Relay) string {
	t.Helper()
	c := login(t, r, "abcdefghi@"+r.Cfg.MailDomain())
	data, err := c.GetMetadata("", []string{"/shared/vendor/deltachat/irohrelay"}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if v := data.Entries["/shared/vendor/deltachat/irohrelay"]; v != nil {
		return string(*v)
	}
	return "<nil>"
}

// TestIrohRelayMetadata: which iroh relay Delta Chat is told to use.
func TestIrohRelayMetadata(t *testing.T) {
	t.Run("self-signed: not announced, still served", func(t *testing.T) {
		r := relaytest.Start(t, nil)
		if got := irohMetadata(t, r); got != "<nil>" {
			t.Errorf("irohrelay %q, want NIL: core's iroh rejects a self-signed relay", got)
		}
		irohClient(t, r)
	})
	t.Run("operator's certificate: our own, with the port", func(t *testing.T) {
		dir := t.TempDir()
		certPEM, keyPEM, err := acme.SelfSignedCert([]string{"localhost"}, nil, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cf, kf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		os.WriteFile(cf, certPEM, 0o600)
		os.WriteFile(kf, keyPEM, 0o600)
		cfg := relaytest.Config(t.TempDir())
		cfg.TLS = relay.TLSConfig{Mode: "files", CertFile: cf, KeyFile: kf}
		certs, err := acme.New(acme.Config{Mode: acme.ModeFiles, CertFile: cf, KeyFile: kf, Domain: cfg.Domain, DataDir: cfg.DataDir})
		if err != nil {
			t.Fatal(err)
		}
		r := relaytest.StartWithCerts(t, cfg, relay.Options{}, certs)
		_, port, _ := net.SplitHostPort(r.AddrOf("https"))
		if got, want := irohMetadata(t, r), "https://localhost:"+port+"/"; got != want {
			t.Errorf("irohrelay %q, want %q", got, want)
		}
	})
	t.Run("external", func(t *testing.T) {
		r := relaytest.Start(t, func(c *relaytest.Cfg) { c.IrohRelay = "https://iroh.example.org/" })
		if got := irohMetadata(t, r); got != "https://iroh.example.org/" {
			t.Errorf("irohrelay %q", got)
		}
	})
	t.Run("off: neither announced nor served", func(t *testing.T) {
		r := relaytest.Start(t, func(c *relaytest.Cfg) { c.IrohRelay = relay.IrohRelayOff })
		if got := irohMetadata(t, r); got != "<nil>" {
			t.Errorf("irohrelay %q", got)
		}
		conn, err := tls.Dial("tcp", r.AddrOf("https"), relaytest.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		if _, err := iroh.Handshake(conn, "localhost", priv, iroh.ProtocolVersion); err == nil || !strings.Contains(err.Error(), "404") {
			t.Errorf("handshake with the relay off: %v, want 404", err)
		}
	})
}

func TestIrohRelayConfigRejectsBadURL(t *testing.T) {
	for _, v := range []string{"iroh.example.org", "ftp://x/", "https://"} {
		cfg := relay.DevDefault()
		cfg.IrohRelay = v
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "iroh_relay") {
			t.Errorf("iroh_relay %q: %v", v, err)
		}
	}
}

// TestTLSHandshakeFailuresCounted: a client that refuses the relay's
// certificate (as core's iroh refuses a self-signed one) shows in the
// metrics, by the alert it sent.
func TestTLSHandshakeFailuresCounted(t *testing.T) {
	r := relaytest.Start(t, nil)
	// The system's roots do not include the relay's self-signed
	// certificate: Go's client refuses it with a bad_certificate alert.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", r.AddrOf("https"), &tls.Config{ServerName: "localhost"})
	if err == nil {
		conn.Close()
		t.Fatal("the self-signed certificate was trusted")
	}
	want := `chatrelay_tls_handshake_failures_total{reason="bad_certificate"} 1`
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(metricsText(t, r), want); {
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q", want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
