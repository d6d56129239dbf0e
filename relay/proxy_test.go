package relay_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html"
	"image/png"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/relay/relaytest"
	"github.com/chatrelay/chatrelay/relay/shadowsocks"
)

const proxyTimeout = 2 * time.Second

func startProxyRelay(t *testing.T, edit func(*relay.Config)) *relaytest.Relay {
	return relaytest.Start(t, func(c *relay.Config) {
		c.Proxy.Listen = "127.0.0.1:0"
		c.Proxy.HandshakeTimeout = proxyTimeout
		if edit != nil {
			edit(c)
		}
	})
}

// proxyDial opens a stream to target through the relay's proxy with the
// key of url.
func proxyDial(t *testing.T, r *relaytest.Relay, url string, host string, port int) net.Conn {
	t.Helper()
	k, phost, pport, err := shadowsocks.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	if phost != "localhost" || strconv.Itoa(pport) != portOf(t, r.AddrOf("proxy")) {
		t.Fatalf("URL %s does not name the proxy listener %s", url, r.AddrOf("proxy"))
	}
	c, err := net.Dial("tcp", r.AddrOf("proxy"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(60 * time.Second))
	sc, err := shadowsocks.Client(c, k, shadowsocks.Target{Host: host, Port: uint16(port)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func portOf(t *testing.T, addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func portNum(t *testing.T, addr string) int {
	n, _ := strconv.Atoi(portOf(t, addr))
	return n
}

func TestProxyReachesIMAPSubmissionAndHTTPS(t *testing.T) {
	r := startProxyRelay(t, nil)
	url := r.ProxyURL()
	if !strings.HasPrefix(url, "ss://2022-blake3-aes-256-gcm:") {
		t.Fatalf("URL %q: want the default 2022 method", url)
	}
	tlsConf := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}

	// IMAP over implicit TLS, with a login: the session is a real one.
	imapConn := tls.Client(proxyDial(t, r, url, "localhost", portNum(t, r.AddrOf("imaps"))), tlsConf)
	c := imapclient.New(imapConn, nil)
	defer c.Close()
	if err := c.Login("alicealic@localhost", password).Wait(); err != nil {
		t.Fatalf("IMAP login through the proxy: %v", err)
	}
	if ok, _ := r.Store().AccountExists("alicealic@localhost"); !ok {
		t.Fatal("no account made by the proxied login")
	}

	// Submission over implicit TLS: the greeting.
	sub := tls.Client(proxyDial(t, r, url, "127.0.0.1", portNum(t, r.AddrOf("submissions"))), tlsConf)
	line, err := bufio.NewReader(sub).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "220 ") {
		t.Fatalf("submission greeting through the proxy: %q %v", line, err)
	}

	// STARTTLS IMAP (plain greeting first).
	plain := proxyDial(t, r, url, "localhost", portNum(t, r.AddrOf("imap")))
	// The server speaks first: the client sends its header with no payload.
	plain.(shadowsocks.HeaderSender).SendHeader()
	line, err = bufio.NewReader(plain).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "* OK") {
		t.Fatalf("IMAP greeting through the proxy: %q %v", line, err)
	}

	// HTTPS: the web page.
	web := tls.Client(proxyDial(t, r, url, "localhost", portNum(t, r.AddrOf("https"))), &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	io.WriteString(web, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	line, err = bufio.NewReader(web).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("HTTPS through the proxy: %q %v", line, err)
	}

	page := scrape(t, r)
	for _, want := range []string{
		`chatrelay_proxy_sessions_total{target="imaps"} 1`,
		`chatrelay_proxy_sessions_total{target="submissions"} 1`,
		`chatrelay_proxy_sessions_total{target="imap"} 1`,
		`chatrelay_proxy_sessions_total{target="https"} 1`,
		`chatrelay_proxy_connections_total 4`,
	} {
		if metricLine(page, want) == "" {
			t.Errorf("metrics lack %q", want)
		}
	}
	if l := metricLine(page, `chatrelay_proxy_bytes_total{dir="in"}`); l == "" || strings.HasSuffix(l, " 0") {
		t.Errorf("no proxied bytes counted: %q", l)
	}
}

// Targets outside the relay's client listeners are dropped without a
// byte: another loopback port, an external address, the metrics port,
// port 25, a foreign name.
func TestProxyRefusesOtherTargets(t *testing.T) {
	r := startProxyRelay(t, nil)
	url := r.ProxyURL()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	imaps := portNum(t, r.AddrOf("imaps"))
	targets := []struct {
		name string
		host string
		port int
	}{
		{"another loopback port", "127.0.0.1", portNum(t, other.Addr().String())},
		{"an external address", "192.0.2.1", imaps},
		{"an external name", "example.org", imaps},
		{"the metrics port", "127.0.0.1", portNum(t, r.MetricsAddr().String())},
		{"inbound SMTP", "localhost", portNum(t, r.AddrOf("smtp"))},
		{"the proxy itself", "127.0.0.1", portNum(t, r.AddrOf("proxy"))},
	}
	for i, tc := range targets {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := proxyDial(t, r, url, tc.host, tc.port)
			c.Write([]byte("EHLO x\r\n"))
			b := make([]byte, 16)
			n, err := c.Read(b)
			if n != 0 || err == nil {
				t.Fatalf("got %d bytes %q, err %v: want silence and a close", n, b[:n], err)
			}
			if time.Since(start) < proxyTimeout/2 {
				t.Fatalf("closed after %v: a refusal must wait out the handshake timeout", time.Since(start))
			}
			want := `chatrelay_proxy_refusals_total{reason="target"} ` + strconv.Itoa(i+1)
			if metricLine(scrape(t, r), want) == "" {
				t.Fatalf("metrics lack %q", want)
			}
		})
	}
	// Nothing reached the other listener.
	other.(*net.TCPListener).SetDeadline(time.Now())
	if c, err := other.Accept(); err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		c.Close()
		t.Fatal("the proxy connected to another loopback port")
	}
	if l := metricLine(scrape(t, r), `chatrelay_proxy_sessions_total`); l != "" {
		t.Fatalf("a refused target made a session: %q", l)
	}
}

// A probe without the key gets silence, and a rotated key keeps working
// through its grace period; the keys survive a restart.
func TestProxyRotateAndProbe(t *testing.T) {
	dir := t.TempDir()
	cfg := relaytest.Config(dir)
	cfg.Proxy.Listen = "127.0.0.1:0"
	cfg.Proxy.HandshakeTimeout = proxyTimeout
	r := relaytest.StartConfig(t, cfg)
	oldURL := r.ProxyURL()
	imaps := portNum(t, r.AddrOf("imaps"))

	probe, err := net.Dial("tcp", r.AddrOf("proxy"))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	probe.SetDeadline(time.Now().Add(60 * time.Second))
	probe.Write([]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + strings.Repeat("A", 100)))
	if n, err := probe.Read(make([]byte, 10)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("probe: %d bytes, %v", n, err)
	}

	if err := r.RotateProxyKey(); err != nil {
		t.Fatal(err)
	}
	newURL := r.ProxyURL()
	if newURL == oldURL {
		t.Fatal("rotate kept the URL")
	}
	greet := func(url string) {
		t.Helper()
		c := tls.Client(proxyDial(t, r, url, "localhost", imaps), &tls.Config{InsecureSkipVerify: true})
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "* OK") {
			t.Fatalf("greeting: %q %v", line, err)
		}
	}
	greet(oldURL)
	greet(newURL)
	var f struct {
		Keys []struct {
			Expires time.Time `json:"expires"`
		} `json:"keys"`
	}
	data, _ := os.ReadFile(filepath.Join(dir, relay.ProxyKeysFile))
	if err := json.Unmarshal(data, &f); err != nil || len(f.Keys) != 2 || !f.Keys[0].Expires.IsZero() || f.Keys[1].Expires.IsZero() {
		t.Fatalf("key file: %s", data)
	}
	if page := scrape(t, r); metricLine(page, `chatrelay_proxy_refusals_total{reason="auth"} 1`) == "" {
		t.Errorf("probe not counted as auth refusal")
	}

	// Past the grace period the old key is refused.
	r.Clock.Advance(73 * time.Hour)
	c := proxyDial(t, r, oldURL, "localhost", imaps)
	c.Write([]byte("x"))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatal("old key still works after the grace period")
	}
	r.Stop()

	// A restart keeps the current key.
	r2 := relaytest.StartConfig(t, cfg)
	if got := r2.ProxyURL(); strings.Split(got, "@")[0] != strings.Split(newURL, "@")[0] {
		t.Fatalf("restart changed the key: %s vs %s", got, newURL)
	}
}

// The web page shows the ss:// URL and its QR code as proxy.publish says:
// always ("page"), to holders of a valid invite ("invite"; the page may
// spend the invite only after checking it), or never ("none").
func TestProxyOnWebPage(t *testing.T) {
	cases := []struct {
		publish, registration, query string
		shown                        bool
	}{
		{"page", "open", "", true},
		{"none", "open", "", false},
		{"invite", "open", "", false},
		{"invite", "open", "?token=bad", false},
		{"invite", "open", "?token=VALID", true},
		{"invite", "invite", "?token=VALID", true},
	}
	for _, tc := range cases {
		t.Run(tc.publish+"/"+tc.registration+tc.query, func(t *testing.T) {
			r := startProxyRelay(t, func(c *relay.Config) {
				c.Proxy.Publish = tc.publish
				c.Registration = tc.registration
			})
			query := tc.query
			if strings.Contains(query, "VALID") {
				var inv control.Invite
				if err := control.Call(t.Context(), relay.ControlSocketPath(r.Dir), control.CmdInviteCreate, control.InviteArgs{Uses: 1}, &inv, nil); err != nil {
					t.Fatal(err)
				}
				query = strings.Replace(query, "VALID", inv.Token, 1)
			}
			resp, body := fetch(t, r, "/"+query)
			doc := checkHTMLPage(t, resp, body)
			url := r.ProxyURL()
			if got := strings.Contains(body, html.EscapeString(url)); got != tc.shown {
				t.Fatalf("page shows the proxy URL: %v, want %v", got, tc.shown)
			}
			if !tc.shown {
				return
			}
			// The QR code on the page decodes to the URL.
			var found bool
			for _, img := range findAll(doc, "img") {
				if attr(img, "alt") == url {
					if got := qrOfSrc(t, attr(img, "src")); got != url {
						t.Fatalf("proxy QR code reads %q, want %q", got, url)
					}
					found = true
				}
			}
			if !found {
				t.Fatal("no QR code for the proxy URL")
			}
		})
	}
}

func qrOfSrc(t *testing.T, src string) string {
	t.Helper()
	b64, ok := strings.CutPrefix(src, "data:image/png;base64,")
	if !ok {
		t.Fatalf("QR src %.40q", src)
	}
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return decodeQR(t, img)
}

type recordingConn struct {
	net.Conn
	sent bytes.Buffer
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.sent.Write(p)
	return c.Conn.Write(p)
}

// A recorded session replayed after a restart is refused: the replay
// filter is saved at shutdown (SIP004 has no timestamps to fall back on).
func TestProxyReplayAcrossRestart(t *testing.T) {
	cfg := relaytest.Config(t.TempDir())
	cfg.Proxy.Listen = "127.0.0.1:0"
	cfg.Proxy.Method = shadowsocks.Chacha20
	cfg.Proxy.HandshakeTimeout = proxyTimeout
	r := relaytest.StartConfig(t, cfg)
	k, _, _, err := shadowsocks.ParseURL(r.ProxyURL())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", r.AddrOf("proxy"))
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(60 * time.Second))
	rec := &recordingConn{Conn: raw}
	c, _ := shadowsocks.Client(rec, k, shadowsocks.Target{Host: "localhost", Port: uint16(portNum(t, r.AddrOf("imaps")))}, nil)
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if line, err := bufio.NewReader(tc).ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		t.Fatalf("greeting: %q %v", line, err)
	}
	raw.Close()
	r.Stop()
	// The proxy listener's port changes with the restart; the key does not.
	r2 := relaytest.StartConfig(t, cfg)
	replay, err := net.Dial("tcp", r2.AddrOf("proxy"))
	if err != nil {
		t.Fatal(err)
	}
	defer replay.Close()
	replay.SetDeadline(time.Now().Add(60 * time.Second))
	replay.Write(rec.sent.Bytes())
	if n, err := replay.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("replayed session answered: %d bytes, %v", n, err)
	}
	if metricLine(scrape(t, r2), `chatrelay_proxy_refusals_total{reason="replay"} 1`) == "" {
		t.Fatal("replay after restart not refused as a replay")
	}
}
