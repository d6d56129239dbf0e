package relay_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/chatrelay/chatrelay/relay/relaytest"
)

func httpsClient() *http.Client {
	return &http.Client{
		Transport:     &http.Transport{TLSClientConfig: relaytest.ClientTLS()},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func TestNewAccountByPOST(t *testing.T) {
	r := relaytest.Start(t, nil)
	base := "https://" + r.AddrOf("https")
	resp, err := httpsClient().Post(base+"/new", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var acc struct{ Email, Password, DCLogin_URL string }
	if err := json.NewDecoder(resp.Body).Decode(&acc); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	name, domain, _ := strings.Cut(acc.Email, "@")
	if len(name) != 9 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789") != "" || domain != "localhost" {
		t.Fatalf("bad address %q", acc.Email)
	}
	if len(acc.Password) < 20 {
		t.Fatalf("short password %q", acc.Password)
	}
	// Self-signed relay: the dclogin code carries the credentials and
	// accept-invalid-certificates.
	u, err := url.Parse(acc.DCLogin_URL)
	if err != nil || u.Scheme != "dclogin" || u.Query().Get("p") != acc.Password || u.Query().Get("ic") != "3" {
		t.Fatalf("dclogin_url %q", acc.DCLogin_URL)
	}
	// The account works.
	c := dialIMAP(t, r, nil)
	if err := c.Login(acc.Email, acc.Password).Wait(); err != nil {
		t.Fatalf("login with /new account: %v", err)
	}

	get, err := httpsClient().Get(base + "/new")
	if err != nil {
		t.Fatal(err)
	}
	get.Body.Close()
	if loc := get.Header.Get("Location"); get.StatusCode != http.StatusFound || loc != "dcaccount:"+base+"/new" {
		t.Fatalf("GET /new: %d %q", get.StatusCode, loc)
	}
}

func TestNewAccountRateLimitedPerIP(t *testing.T) {
	r := relaytest.Start(t, nil)
	base := "https://" + r.AddrOf("https")
	codes := map[int]int{}
	for range 8 {
		resp, err := httpsClient().Post(base+"/new", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes[resp.StatusCode]++
	}
	if codes[200] != 5 || codes[429] != 3 {
		t.Fatalf("status counts %v, want 5 created then 429", codes)
	}
}

func TestClosedRegistration(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.Registration = "closed" })
	c := dialIMAP(t, r, nil)
	if err := c.Login("abcdefghi@localhost", password).Wait(); err == nil {
		t.Fatal("first login created an account with registration closed")
	}
	resp, err := httpsClient().Post("https://"+r.AddrOf("https")+"/new", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("/new with registration closed: %d", resp.StatusCode)
	}
}

// Port 443 carries IMAP, submission and the web site, told apart by ALPN.
func TestALPNRoutingOnHTTPSPort(t *testing.T) {
	r := relaytest.Start(t, nil)
	addr := r.AddrOf("https")
	greeting := func(proto string) string {
		conf := relaytest.ClientTLS()
		if proto != "" {
			conf.NextProtos = []string{proto}
		}
		c, err := tls.Dial("tcp", addr, conf)
		if err != nil {
			t.Fatalf("ALPN %q: %v", proto, err)
		}
		defer c.Close()
		if proto == "http/1.1" || proto == "" {
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	if g := greeting("imap"); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("ALPN imap got %q", g)
	}
	if g := greeting("smtp"); !strings.HasPrefix(g, "220 ") {
		t.Fatalf("ALPN smtp got %q", g)
	}
	if g := greeting("http/1.1"); !strings.HasPrefix(g, "HTTP/1.1 200") {
		t.Fatalf("ALPN http/1.1 got %q", g)
	}
	if g := greeting(""); !strings.HasPrefix(g, "HTTP/1.1 200") {
		t.Fatalf("no ALPN got %q", g)
	}
	// A real IMAP login through the 443 listener.
	conf := relaytest.ClientTLS()
	conf.NextProtos = []string{"imap"}
	c, err := imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: conf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("abcdefghi@localhost", password).Wait(); err != nil {
		t.Fatalf("login over 443: %v", err)
	}
}
