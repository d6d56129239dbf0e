package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"image"
	"image/png"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/makiuchi-d/gozxing"
	gozxingqr "github.com/makiuchi-d/gozxing/qrcode"
	"golang.org/x/net/html"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/relay"
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

// fetch GETs path from the relay's HTTPS listener with extra headers
// ("Host" sets the Host header) and returns the response and its body.
func fetch(t *testing.T, r *relaytest.Relay, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	return fetchURL(t, "https://"+r.AddrOf("https")+path, hdr...)
}

func fetchURL(t *testing.T, u string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := httpsClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// trustedCerts is the test relay's self-signed certificate passed off as
// publicly trusted, for the pages a relay with a real certificate shows.
type trustedCerts struct{ *acme.Manager }

func (trustedCerts) SelfSigned() bool { return false }

// startTrusted runs a test relay that believes its certificate is
// publicly trusted.
func startTrusted(t *testing.T, edit func(*relaytest.Cfg)) *relaytest.Relay {
	t.Helper()
	cfg := relaytest.Config(t.TempDir())
	if edit != nil {
		edit(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	certs, err := acme.New(acme.Config{Mode: acme.ModeSelfSigned, Domain: cfg.Domain, DataDir: cfg.DataDir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(cfg, trustedCerts{certs}, relay.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		certs.Close()
	})
	return &relaytest.Relay{Server: srv, Cfg: cfg, Dir: cfg.DataDir}
}

const wantCSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// checkHTMLPage asserts what every page shares: HTML, the strict CSP, and
// nothing loaded from anywhere: no scripts, no style sheets, every image
// inline, links only to this site and to the Delta Chat web site.
func checkHTMLPage(t *testing.T, resp *http.Response, body string) *html.Node {
	t.Helper()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: status %d", resp.Request.URL.Path, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("%s: Content-Type %q", resp.Request.URL.Path, ct)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); csp != wantCSP {
		t.Errorf("%s: CSP %q", resp.Request.URL.Path, csp)
	}
	doc, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(findAll(doc, "meta", "name", "viewport")) != 1 {
		t.Errorf("%s: no viewport meta", resp.Request.URL.Path)
	}
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode {
			continue
		}
		switch n.Data {
		case "script", "link", "iframe", "object", "embed", "base":
			t.Errorf("%s: <%s> element", resp.Request.URL.Path, n.Data)
		case "style":
			if css := n.FirstChild; css != nil && (strings.Contains(css.Data, "url(") || strings.Contains(css.Data, "@import")) {
				t.Errorf("%s: style sheet loads something", resp.Request.URL.Path)
			}
		}
		for _, a := range n.Attr {
			switch {
			case strings.HasPrefix(a.Key, "on"), a.Key == "style" && strings.Contains(a.Val, "url("):
				t.Errorf("%s: <%s %s=%q>", resp.Request.URL.Path, n.Data, a.Key, a.Val)
			case a.Key == "src" || a.Key == "srcset" || a.Key == "poster" || a.Key == "action":
				if !strings.HasPrefix(a.Val, "data:") {
					t.Errorf("%s: <%s %s=%q> loads from elsewhere", resp.Request.URL.Path, n.Data, a.Key, a.Val)
				}
			case a.Key == "href":
				u, err := url.Parse(a.Val)
				if err != nil {
					t.Errorf("%s: bad href %q", resp.Request.URL.Path, a.Val)
					continue
				}
				switch strings.ToLower(u.Scheme) {
				case "", "mailto", "dcaccount", "dclogin":
					if u.Host != "" {
						t.Errorf("%s: href %q names a host", resp.Request.URL.Path, a.Val)
					}
				case "https":
					if u.Host != "delta.chat" {
						t.Errorf("%s: link to %q", resp.Request.URL.Path, a.Val)
					}
				default:
					t.Errorf("%s: href %q", resp.Request.URL.Path, a.Val)
				}
			}
		}
	}
	return doc
}

// findAll returns the elements named tag, with attribute key=val if key
// is given.
func findAll(doc *html.Node, tag string, kv ...string) []*html.Node {
	var out []*html.Node
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode || n.Data != tag {
			continue
		}
		if len(kv) == 2 && attr(n, kv[0]) != kv[1] {
			continue
		}
		out = append(out, n)
	}
	return out
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}

// decodeQR reads the one QR code in img.
func decodeQR(t *testing.T, img image.Image) string {
	t.Helper()
	// A QR code alone in its image (the page's PNG) is read as such: the
	// decoder's finder-pattern search misjudges about 1 in 100 random
	// codes of this size (it reports a dimension no QR version has). A
	// screenshot needs the search.
	var errs []error
	for _, hint := range []gozxing.DecodeHintType{gozxing.DecodeHintType_PURE_BARCODE, gozxing.DecodeHintType_TRY_HARDER} {
		bmp, err := gozxing.NewBinaryBitmapFromImage(img)
		if err != nil {
			t.Fatal(err)
		}
		res, err := gozxingqr.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]any{hint: true})
		if err == nil {
			return res.GetText()
		}
		errs = append(errs, err)
	}
	t.Fatalf("decode QR: %v", errs)
	return ""
}

// joinCode returns what the join section of / offers: the QR image
// decoded, the link and the copyable text, which must all agree.
func joinCode(t *testing.T, doc *html.Node) string {
	t.Helper()
	imgs := findAll(doc, "img")
	if len(imgs) != 1 {
		t.Fatalf("%d images on /", len(imgs))
	}
	src := attr(imgs[0], "src")
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
	code := decodeQR(t, img)
	links := findAll(doc, "a", "class", "join")
	if len(links) != 1 || attr(links[0], "href") != code {
		t.Errorf("join link does not carry the QR's code %q", code)
	}
	areas := findAll(doc, "textarea")
	if len(areas) != 1 || text(areas[0]) != code {
		t.Errorf("copyable text is not the QR's code %q", code)
	}
	return code
}

// A self-signed relay's page offers a dclogin code for a fresh account
// that accepts the certificate, and the account works at first login.
func TestWebIndexSelfSignedShowsDCLogin(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.AdminContact = "admin@localhost"; c.OperatorName = "Test Org" })
	resp, body := fetch(t, r, "/")
	doc := checkHTMLPage(t, resp, body)
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q: a page with credentials must not be cached", cc)
	}
	for _, want := range []string{"Largest message: 30 MiB", "Storage per address: 500 MiB", "after 20 days", "up to 1000", "admin@localhost", "Test Org", "self-signed"} {
		if !strings.Contains(body, want) {
			t.Errorf("/ lacks %q", want)
		}
	}
	code := joinCode(t, doc)
	checkDCLogin(t, r, code)
	// Another visitor gets another account.
	_, body2 := fetch(t, r, "/")
	doc2, _ := html.Parse(strings.NewReader(body2))
	if joinCode(t, doc2) == code {
		t.Error("two page views offered the same account")
	}
}

// checkDCLogin asserts code is a dclogin: code for this relay and logs in
// with it.
func checkDCLogin(t *testing.T, r *relaytest.Relay, code string) {
	t.Helper()
	u, err := url.Parse(code)
	if err != nil || u.Scheme != "dclogin" {
		t.Fatalf("join code %q is not dclogin:", code)
	}
	addr, q := u.Opaque, u.Query()
	_, imapsPort, _ := strings.Cut(r.AddrOf("imaps"), ":")
	_, smtpsPort, _ := strings.Cut(r.AddrOf("submissions"), ":")
	if !strings.HasSuffix(addr, "@localhost") || q.Get("ic") != "3" || q.Get("ih") != "127.0.0.1" ||
		q.Get("ip") != imapsPort || q.Get("is") != "ssl" || q.Get("sp") != smtpsPort || q.Get("ss") != "ssl" {
		t.Fatalf("join code %q", code)
	}
	c := dialIMAP(t, r, nil)
	if err := c.Login(addr, q.Get("p")).Wait(); err != nil {
		t.Fatalf("login with the page's account: %v", err)
	}
}

// With a publicly trusted certificate the page shows DCACCOUNT:https://D/new.
func TestWebIndexTrustedShowsDCACCOUNT(t *testing.T) {
	r := startTrusted(t, nil)
	resp, body := fetch(t, r, "/")
	doc := checkHTMLPage(t, resp, body)
	if code, want := joinCode(t, doc), "DCACCOUNT:https://"+r.AddrOf("https")+"/new"; code != want {
		t.Fatalf("join code %q, want %q", code, want)
	}
	if strings.Contains(body, "self-signed") {
		t.Error("trusted relay's page talks of a self-signed certificate")
	}
}

func TestWebIndexRegistrationModes(t *testing.T) {
	for _, tc := range []struct {
		mode, query, want string
		trusted           bool
		code              string // prefix; "" means no join code
	}{
		{mode: "closed", want: "takes no new accounts"},
		{mode: "invite", want: "need an invite"},
		{mode: "invite", query: "?token=tok-1", trusted: true, code: "DCACCOUNT:https://"},
		{mode: "invite", query: "?token=tok-1", code: "dclogin:"},
		{mode: "invite", query: "?token=bad", want: "not valid"},
	} {
		post := !tc.trusted && strings.Contains(tc.query, "token=")
		t.Run(tc.mode+tc.query, func(t *testing.T) {
			edit := func(c *relaytest.Cfg) { c.Registration = tc.mode }
			var r *relaytest.Relay
			if tc.trusted {
				r = startTrusted(t, edit)
			} else {
				r = relaytest.Start(t, edit)
			}
			inv := &fakeInvites{valid: map[string]int{"tok-1": 1}}
			r.SetInviteChecker(inv)
			resp, body := fetch(t, r, "/"+tc.query)
			doc := checkHTMLPage(t, resp, body)
			if post {
				// A GET (a link preview, a prefetch) spends nothing: the
				// page offers a button that POSTs back to itself.
				forms := findAll(doc, "form", "method", "post")
				if len(forms) != 1 || len(findAll(forms[0], "button")) != 1 || strings.Contains(body, "dclogin:") {
					t.Fatalf("invite page offers no button, or a code already:\n%s", body)
				}
				if inv.used != 0 {
					t.Fatal("GET spent the invite")
				}
				resp, body = postURL(t, "https://"+r.AddrOf("https")+"/"+tc.query)
				doc = checkHTMLPage(t, resp, body)
				if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
					t.Errorf("Cache-Control %q on a page with credentials", cc)
				}
			}
			if tc.code == "" {
				if len(findAll(doc, "img")) != 0 || strings.Contains(body, "dclogin:") {
					t.Fatal("page offers a join code")
				}
				if !strings.Contains(body, tc.want) {
					t.Fatalf("page lacks %q", tc.want)
				}
				return
			}
			code := joinCode(t, doc)
			if !strings.HasPrefix(code, tc.code) {
				t.Fatalf("join code %q", code)
			}
			if tc.trusted {
				if want := "DCACCOUNT:https://" + r.AddrOf("https") + "/new?token=tok-1"; code != want {
					t.Fatalf("join code %q, want %q", code, want)
				}
				if inv.used != 0 {
					t.Fatal("page spent the invite; /new should")
				}
				return
			}
			checkDCLogin(t, r, code)
			if inv.used != 1 {
				t.Fatalf("button spent %d invites, want 1", inv.used)
			}
		})
	}
}

// postURL submits an empty form, as the invite page's button does.
func postURL(t *testing.T, u string) (*http.Response, string) {
	t.Helper()
	resp, err := httpsClient().Post(u, "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// fakeInvites accepts tokens with uses left.
type fakeInvites struct {
	valid map[string]int
	used  int
}

func (f *fakeInvites) UseInvite(token string) error {
	if f.valid[token] <= 0 {
		return errors.New("unknown invite")
	}
	f.valid[token]--
	f.used++
	return nil
}

func TestNewWithInvite(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.Registration = "invite" })
	base := "https://" + r.AddrOf("https")
	post := func(query string) (int, map[string]string) {
		t.Helper()
		resp, err := httpsClient().Post(base+"/new"+query, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatalf("/new%s: status %d, body not JSON: %v", query, resp.StatusCode, err)
		}
		return resp.StatusCode, m
	}
	// No checker wired: invites cannot be checked, nothing is made.
	if code, m := post("?token=good"); code != 403 || m["reason"] == "" {
		t.Fatalf("no invite checker: %d %v", code, m)
	}
	inv := &fakeInvites{valid: map[string]int{"good": 1}}
	r.SetInviteChecker(inv)
	if code, m := post(""); code != 403 || !strings.Contains(m["reason"], "invite") {
		t.Fatalf("no token: %d %v", code, m)
	}
	if code, m := post("?token=bad"); code != 403 || m["reason"] == "" {
		t.Fatalf("bad token: %d %v", code, m)
	}
	code, m := post("?token=good")
	if code != 200 || m["email"] == "" || m["password"] == "" {
		t.Fatalf("good token: %d %v", code, m)
	}
	if c := dialIMAP(t, r, nil); c.Login(m["email"], m["password"]).Wait() != nil {
		t.Fatal("invited account cannot log in")
	}
	if code, _ := post("?token=good"); code != 403 {
		t.Fatalf("used-up token: %d", code)
	}
	// A browser is sent to Delta Chat with the token kept.
	resp, _ := fetch(t, r, "/new?token=a%26b")
	if loc := resp.Header.Get("Location"); loc != "dcaccount:"+base+"/new?token=a%26b" {
		t.Fatalf("GET /new?token: Location %q", loc)
	}
}

// A relay in open mode makes accounts without looking at a token.
func TestNewOpenIgnoresToken(t *testing.T) {
	r := relaytest.Start(t, nil)
	inv := &fakeInvites{}
	r.SetInviteChecker(inv)
	resp, err := httpsClient().Post("https://"+r.AddrOf("https")+"/new?token=x", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || inv.used != 0 {
		t.Fatalf("status %d, invites used %d", resp.StatusCode, inv.used)
	}
}

func TestWebPageTranslations(t *testing.T) {
	r := relaytest.Start(t, nil)
	for _, tc := range []struct {
		path, accept, lang, want string
	}{
		{"/", "", "en", "Largest message"},
		{"/", "de-DE,de;q=0.9,en;q=0.8", "de", "Größte Nachricht"},
		{"/", "ru", "ru", "Самое большое сообщение"},
		{"/", "fr-FR, de;q=0.5", "de", "Mitmachen"},
		{"/", "fr-FR", "en", "Join"},
		{"/", "en-GB,de;q=0.8", "en", "Join"},
		{"/", "fa-IR,fa;q=0.9,en;q=0.5", "fa", "بزرگ‌ترین پیام"},
		{"/", "zh-CN,zh;q=0.9", "zh-Hans", "单条消息最大"},
		// The switcher's choice beats Accept-Language.
		{"/?lang=fa", "de", "fa", "پیوستن"},
		{"/?lang=zh-Hans", "ru", "zh-Hans", "加入"},
		{"/?lang=xx", "de", "de", "Mitmachen"},
		// Pages not (yet) translated stay whole in English.
		{"/privacy", "de", "en", "Privacy policy"},
		{"/info", "ru", "en", "Details"},
	} {
		resp, body := fetch(t, r, tc.path, "Accept-Language", tc.accept)
		doc := checkHTMLPage(t, resp, body)
		if got := attr(findAll(doc, "html")[0], "lang"); got != tc.lang {
			t.Errorf("%s Accept-Language %q: lang %q, want %q", tc.path, tc.accept, got, tc.lang)
		}
		if !strings.Contains(body, tc.want) {
			t.Errorf("%s Accept-Language %q: no %q", tc.path, tc.accept, tc.want)
		}
		if resp.Header.Get("Content-Language") != tc.lang || !strings.Contains(resp.Header.Get("Vary"), "Accept-Language") {
			t.Errorf("%s: Content-Language %q Vary %q", tc.path, resp.Header.Get("Content-Language"), resp.Header.Get("Vary"))
		}
		wantDir := "ltr"
		if tc.lang == "fa" {
			wantDir = "rtl"
		}
		if got := attr(findAll(doc, "html")[0], "dir"); got != wantDir {
			t.Errorf("%s %q: dir %q, want %q", tc.path, tc.accept, got, wantDir)
		}
	}
}

// The page names every language it speaks, in that language, each a link
// to the same page in it; an invite token stays in the links, and the
// chosen language stays on the page's own links.
func TestWebLanguageSwitcher(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.Registration = "invite" })
	resp, body := fetch(t, r, "/?token=tok-1&lang=fa")
	doc := checkHTMLPage(t, resp, body)
	navs := findAll(doc, "nav", "class", "langs")
	if len(navs) != 1 {
		t.Fatalf("%d language switchers, want 1", len(navs))
	}
	got := map[string]string{}
	for _, a := range findAll(navs[0], "a") {
		u, err := url.Parse(attr(a, "href"))
		if err != nil || u.Query().Get("token") != "tok-1" || u.Query().Get("lang") != attr(a, "hreflang") {
			t.Errorf("switcher link %q", attr(a, "href"))
		}
		got[attr(a, "hreflang")] = text(a)
	}
	for lang, name := range map[string]string{"en": "English", "de": "Deutsch", "ru": "Русский", "fa": "فارسی", "zh-Hans": "简体中文"} {
		if got[lang] != name {
			t.Errorf("switcher: %s is %q, want %q", lang, got[lang], name)
		}
	}
	if len(findAll(doc, "a", "href", "/info?lang=fa")) != 1 {
		t.Error("the chosen language is not kept on the page's links")
	}
	// A page only English translates has no switcher.
	resp, body = fetch(t, r, "/privacy")
	if doc := checkHTMLPage(t, resp, body); len(findAll(doc, "nav", "class", "langs")) != 0 {
		t.Error("an English-only page shows a switcher")
	}
}

func TestInfoPage(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.AdminContact = "boss@localhost"; c.Registration = "invite" })
	resp, body := fetch(t, r, "/info")
	doc := checkHTMLPage(t, resp, body)
	rows := map[string]string{}
	for _, tr := range findAll(doc, "tr") {
		var cells []string
		for c := tr.FirstChild; c != nil; c = c.NextSibling {
			if c.Type == html.ElementNode {
				cells = append(cells, strings.TrimSpace(text(c)))
			}
		}
		if len(cells) == 3 {
			rows[cells[1]] = cells[0] + " / " + cells[2]
		}
	}
	port := func(name string) string { _, p, _ := strings.Cut(r.AddrOf(name), ":"); return p }
	for name, want := range map[string]string{
		"imaps": "IMAP / TLS", "imap": "IMAP / STARTTLS (required before login)",
		"submissions": "SMTP submission / TLS", "submission": "SMTP submission / STARTTLS (required before login)",
		"smtp": "Mail from other servers / STARTTLS offered",
	} {
		if rows[port(name)] != want {
			t.Errorf("port %s (%s): %q, want %q", port(name), name, rows[port(name)], want)
		}
	}
	if !strings.HasPrefix(rows[port("https")], "Web") {
		t.Errorf("https port row %q", rows[port("https")])
	}
	for _, want := range []string{"self-signed", "boss@localhost", "by invite only", "xxxxxxxxx@localhost", "Largest message: 30 MiB", "per minute: 60", "9 to 9 characters", "/.well-known/autoconfig/mail/config-v1.1.xml"} {
		if !strings.Contains(body, want) {
			t.Errorf("/info lacks %q", want)
		}
	}
	_, body = fetch(t, startTrusted(t, nil), "/info")
	if !strings.Contains(body, "publicly trusted") {
		t.Error("/info of a trusted relay does not say so")
	}
}

func TestPrivacyPage(t *testing.T) {
	dir := t.TempDir()
	txt := filepath.Join(dir, "extra.txt")
	os.WriteFile(txt, []byte("Hosted in <Bremen>.\nBackups: none."), 0o644)
	r := relaytest.Start(t, func(c *relaytest.Cfg) {
		c.OperatorName = "Example e.V."
		c.AdminContact = "privacy@localhost"
		c.PrivacyExtraFile = txt
	})
	resp, body := fetch(t, r, "/privacy")
	checkHTMLPage(t, resp, body)
	for _, want := range []string{
		"is run by Example e.V.", "privacy@localhost", "never longer than 20 days", "not used for 90 days",
		"notifications.delta.chat", "no IP addresses", "no message content", "sets no cookies",
		"Hosted in &lt;Bremen&gt;.\nBackups: none.",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/privacy lacks %q", want)
		}
	}

	htmlFile := filepath.Join(dir, "extra.html")
	os.WriteFile(htmlFile, []byte("<p>Our <b>court</b> is in Bremen.</p>"), 0o644)
	r = relaytest.Start(t, func(c *relaytest.Cfg) { c.PrivacyExtraFile = htmlFile })
	resp, body = fetch(t, r, "/privacy")
	checkHTMLPage(t, resp, body)
	if !strings.Contains(body, "<p>Our <b>court</b> is in Bremen.</p>") {
		t.Error("/privacy lacks the operator's HTML")
	}
	if strings.Contains(body, "is run by") {
		t.Error("/privacy names an operator that is not configured")
	}

	// A missing file leaves the generated policy standing.
	r = relaytest.Start(t, func(c *relaytest.Cfg) { c.PrivacyExtraFile = filepath.Join(dir, "gone.txt") })
	if resp, body := fetch(t, r, "/privacy"); resp.StatusCode != 200 || !strings.Contains(body, "What is stored") {
		t.Fatalf("/privacy with a missing extra file: %d", resp.StatusCode)
	}
}

func TestRobotsDisallowsAll(t *testing.T) {
	r := relaytest.Start(t, nil)
	resp, body := fetch(t, r, "/robots.txt")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" || body != "User-agent: *\nDisallow: /\n" {
		t.Fatalf("robots.txt: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

func TestAutoconfig(t *testing.T) {
	r := relaytest.Start(t, nil)
	port := func(name string) string { _, p, _ := strings.Cut(r.AddrOf(name), ":"); return p }
	type server struct {
		Type           string `xml:"type,attr"`
		Hostname       string `xml:"hostname"`
		Port           string `xml:"port"`
		SocketType     string `xml:"socketType"`
		Authentication string `xml:"authentication"`
		Username       string `xml:"username"`
	}
	var want struct{ in, out []string }
	want.in = []string{"imap 127.0.0.1:" + port("imaps") + " SSL", "imap 127.0.0.1:" + port("imap") + " STARTTLS", "imap 127.0.0.1:" + port("https") + " SSL"}
	want.out = []string{"smtp 127.0.0.1:" + port("submissions") + " SSL", "smtp 127.0.0.1:" + port("submission") + " STARTTLS", "smtp 127.0.0.1:" + port("https") + " SSL"}
	for _, tc := range []struct{ path, host string }{
		{"/.well-known/autoconfig/mail/config-v1.1.xml", ""},
		{"/mail/config-v1.1.xml", "autoconfig.localhost"},
	} {
		resp, body := fetch(t, r, tc.path, "Host", tc.host)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/xml") {
			t.Fatalf("%s: %d %q", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var ac struct {
			XMLName  xml.Name `xml:"clientConfig"`
			Version  string   `xml:"version,attr"`
			Provider struct {
				ID       string   `xml:"id,attr"`
				Domain   []string `xml:"domain"`
				Incoming []server `xml:"incomingServer"`
				Outgoing []server `xml:"outgoingServer"`
			} `xml:"emailProvider"`
		}
		if err := xml.Unmarshal([]byte(body), &ac); err != nil {
			t.Fatalf("%s: %v\n%s", tc.path, err, body)
		}
		if ac.Version != "1.1" || ac.Provider.ID != "localhost" || len(ac.Provider.Domain) != 1 || ac.Provider.Domain[0] != "localhost" {
			t.Errorf("%s: provider %+v", tc.path, ac.Provider)
		}
		list := func(ss []server) []string {
			var out []string
			for _, s := range ss {
				if s.Authentication != "password-cleartext" || s.Username != "%EMAILADDRESS%" {
					t.Errorf("%s: server %+v", tc.path, s)
				}
				out = append(out, s.Type+" "+s.Hostname+":"+s.Port+" "+s.SocketType)
			}
			return out
		}
		if got := list(ac.Provider.Incoming); strings.Join(got, ",") != strings.Join(want.in, ",") {
			t.Errorf("%s: incoming %q, want %q", tc.path, got, want.in)
		}
		if got := list(ac.Provider.Outgoing); strings.Join(got, ",") != strings.Join(want.out, ",") {
			t.Errorf("%s: outgoing %q, want %q", tc.path, got, want.out)
		}
	}
}

// A production relay's autoconfig names the domain and the standard
// ports, and leaves out a listener that is turned off.
func TestAutoconfigStandardPorts(t *testing.T) {
	cfg := relay.Default()
	cfg.Domain = "chat.example"
	cfg.DataDir = t.TempDir()
	cfg.Listen.IMAP = ""
	// Built, not started: the ports are the configured ones.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	certs, err := acme.New(acme.Config{Mode: acme.ModeSelfSigned, Domain: cfg.Domain, DataDir: cfg.DataDir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer certs.Close()
	srv, err := relay.New(cfg, certs, relay.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	rec := httptestGet(srv, "https://chat.example/.well-known/autoconfig/mail/config-v1.1.xml")
	body := rec.String()
	for _, want := range []string{
		"<hostname>chat.example</hostname>\n      <port>993</port>\n      <socketType>SSL</socketType>",
		"<port>443</port>\n      <socketType>SSL</socketType>",
		"<outgoingServer type=\"smtp\">\n      <hostname>chat.example</hostname>\n      <port>465</port>",
		"<port>587</port>\n      <socketType>STARTTLS</socketType>",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("autoconfig lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "<port>143</port>") {
		t.Error("autoconfig lists the IMAP STARTTLS port that is turned off")
	}
}

func httptestGet(srv *relay.Server, u string) *bytes.Buffer {
	req, _ := http.NewRequest("GET", u, nil)
	rec := &recorder{header: http.Header{}}
	srv.WebHandler().ServeHTTP(rec, req)
	return &rec.body
}

type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(code int)        { r.code = code }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }

func TestMTASTS(t *testing.T) {
	r := relaytest.Start(t, nil)
	const policy = "version: STSv1\r\nmode: enforce\r\nmx: localhost\r\nmax_age: 2419200\r\n"
	for _, host := range []string{"", "mta-sts.localhost", "MTA-STS.localhost."} {
		resp, body := fetch(t, r, "/.well-known/mta-sts.txt", "Host", host)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" || body != policy {
			t.Fatalf("Host %q: %d %q %q", host, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	}
	// mta-sts.D serves the policy and nothing else.
	for _, path := range []string{"/", "/new", "/info", "/robots.txt"} {
		if resp, _ := fetch(t, r, path, "Host", "mta-sts.localhost"); resp.StatusCode != 404 {
			t.Errorf("mta-sts.localhost%s: %d", path, resp.StatusCode)
		}
	}
	// An IP-only relay has no policy.
	ipRelay := relaytest.Start(t, func(c *relaytest.Cfg) { c.Domain = ""; c.IP = "127.0.0.1" })
	if resp, _ := fetch(t, ipRelay, "/.well-known/mta-sts.txt"); resp.StatusCode != 404 {
		t.Errorf("IP relay MTA-STS: %d", resp.StatusCode)
	}
}

func TestWebWWWRedirects(t *testing.T) {
	r := relaytest.Start(t, nil)
	resp, _ := fetch(t, r, "/info?x=1", "Host", "www.localhost:8443")
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusMovedPermanently || loc != "https://localhost:8443/info?x=1" {
		t.Fatalf("www: %d %q", resp.StatusCode, loc)
	}
}

func TestDownloads(t *testing.T) {
	dir := t.TempDir()
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.DownloadsDir = dir })
	// No files: no page, no link.
	if resp, _ := fetch(t, r, "/downloads"); resp.StatusCode != 404 {
		t.Fatalf("empty /downloads: %d", resp.StatusCode)
	}
	if _, body := fetch(t, r, "/"); strings.Contains(body, `href="/downloads"`) {
		t.Fatal("/ links to an empty downloads folder")
	}

	apk := bytes.Repeat([]byte("delta chat apk "), 1000)
	os.WriteFile(filepath.Join(dir, "deltachat 2.0.apk"), apk, 0o644)
	os.WriteFile(filepath.Join(dir, "notes.html"), []byte("<script>alert(1)</script>"), 0o644)
	os.WriteFile(filepath.Join(dir, ".secret"), []byte("hidden"), 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "inner.txt"), []byte("inner"), 0o644)
	outside := filepath.Join(r.Dir, "outside.txt")
	os.WriteFile(outside, []byte("OUTSIDE"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "link.txt"))

	resp, body := fetch(t, r, "/downloads")
	doc := checkHTMLPage(t, resp, body)
	sum := sha256.Sum256(apk)
	if !strings.Contains(body, hex.EncodeToString(sum[:])) || !strings.Contains(body, "14.6 KiB") {
		t.Errorf("/downloads lacks the apk's sum or size:\n%s", body)
	}
	var names []string
	for _, a := range findAll(doc, "a") {
		if href := attr(a, "href"); strings.HasPrefix(href, "/downloads/") {
			names = append(names, href)
		}
	}
	if got := strings.Join(names, " "); got != "/downloads/deltachat%202.0.apk /downloads/notes.html" {
		t.Errorf("listed %q", got)
	}
	if _, body := fetch(t, r, "/"); !strings.Contains(body, `href="/downloads"`) {
		t.Error("/ does not link to the downloads")
	}

	resp, got := fetch(t, r, "/downloads/deltachat%202.0.apk")
	if resp.StatusCode != 200 || got != string(apk) {
		t.Fatalf("download: %d, %d bytes", resp.StatusCode, len(got))
	}
	if cd := resp.Header.Get("Content-Disposition"); cd != `attachment; filename="deltachat 2.0.apk"` {
		t.Errorf("Content-Disposition %q", cd)
	}
	resp, _ = fetch(t, r, "/downloads/notes.html")
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/octet-stream" || !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Errorf("HTML file served as %q", ct)
	}
	// A resumed download.
	resp, got = fetch(t, r, "/downloads/deltachat%202.0.apk", "Range", "bytes=10-19")
	if resp.StatusCode != http.StatusPartialContent || got != string(apk[10:20]) {
		t.Errorf("range: %d %q", resp.StatusCode, got)
	}

	// Nothing outside the folder, nor hidden, nor below it: the web
	// handler answers 404 at once, and through the whole HTTPS stack (whose
	// path cleaning may redirect first) a browser ends on a 404 too.
	base := "https://" + r.AddrOf("https")
	for _, p := range []string{
		"/downloads/.secret", "/downloads/sub", "/downloads/sub/inner.txt", "/downloads/link.txt",
		"/downloads/../index.db", "/downloads/%2e%2e/index.db", "/downloads/..%2findex.db", "/downloads/..%2Foutside.txt",
		"/downloads/%2e%2e%2foutside.txt", "/downloads/..%5coutside.txt", "/downloads/....//outside.txt",
		"/downloads//etc/passwd", "/downloads/%2fetc%2fpasswd", "/downloads/%252e%252e%252foutside.txt",
		"/downloads/sub%2f..%2f..%2foutside.txt", "/downloads/%00", "/downloads/..%00/outside.txt",
	} {
		u, err := url.Parse(base + p)
		if err != nil {
			t.Fatal(err)
		}
		rec := &recorder{header: http.Header{}, code: 200}
		r.WebHandler().ServeHTTP(rec, &http.Request{Method: "GET", URL: u, Host: u.Host, Header: http.Header{}})
		if rec.code != 404 {
			t.Errorf("web handler %s: status %d", p, rec.code)
		}
		resp, body := followGet(t, base+p)
		if resp.StatusCode != 404 {
			t.Errorf("%s: status %d", p, resp.StatusCode)
		}
		for _, secret := range []string{"OUTSIDE", "hidden", "inner", "root:"} {
			if strings.Contains(body+rec.body.String(), secret) {
				t.Errorf("%s served %q", p, secret)
			}
		}
	}
	// "." and ".." name the folder and the site: no file either way.
	for _, p := range []string{"/downloads/.", "/downloads/.."} {
		resp, _ := followGet(t, base+p)
		if resp.Header.Get("Content-Disposition") != "" {
			t.Errorf("%s served a file", p)
		}
	}

	// A changed file gets a new sum.
	apk2 := append(apk, "v2"...)
	os.WriteFile(filepath.Join(dir, "deltachat 2.0.apk"), apk2, 0o644)
	sum2 := sha256.Sum256(apk2)
	if _, body := fetch(t, r, "/downloads"); !strings.Contains(body, hex.EncodeToString(sum2[:])) || strings.Contains(body, hex.EncodeToString(sum[:])) {
		t.Error("/downloads shows a stale sum after the file changed")
	}
}

// followGet sends path as is (no client-side cleaning) and follows
// redirects, as a browser would.
func followGet(t *testing.T, raw string) (*http.Response, string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	client := httpsClient()
	client.CheckRedirect = nil
	req := &http.Request{Method: "GET", URL: u, Header: http.Header{}, Host: u.Host}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// The page as a phone's browser shows it: Chromium renders / at phone
// width, the QR code in the screenshot scans to a working code, and the
// browser fetched nothing from any other host.
func TestWebPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (Debian package chromium: apt-get install chromium)")
	}
	for _, tc := range []struct {
		name    string
		trusted bool
		lang    string // ?lang=, "" for the browser's own
	}{{"selfsigned", false, ""}, {"trusted", true, ""}, {"fa", false, "fa"}, {"zh", false, "zh-Hans"}} {
		t.Run(tc.name, func(t *testing.T) {
			var r *relaytest.Relay
			if tc.trusted {
				r = startTrusted(t, nil)
			} else {
				r = relaytest.Start(t, nil)
			}
			pageURL := "https://" + r.AddrOf("https") + "/"
			if tc.lang != "" {
				pageURL += "?lang=" + tc.lang
			}
			dir := t.TempDir()
			shot := filepath.Join(dir, "index.png")
			netlog := filepath.Join(dir, "netlog.json")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, chromium,
				"--headless", "--no-sandbox", "--disable-gpu",
				"--disable-background-networking", "--disable-component-update", "--disable-sync",
				"--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
				"--disable-component-extensions-with-background-pages", "--disable-domain-reliability",
				"--disable-client-side-phishing-detection", "--no-pings", "--disable-breakpad", "--no-service-autorun",
				"--password-store=basic", "--metrics-recording-only",
				"--disable-features=AutofillServerCommunication,OptimizationHints,OptimizationGuideModelDownloading,"+
					"MediaRouter,DialMediaRouteProvider,Translate,CertificateTransparencyComponentUpdater,NetworkTimeServiceQuerying",
				// Belt and braces: no name resolves but loopback, and anything
				// not loopback would go to a proxy that is not there.
				"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
				"--proxy-server=http://127.0.0.1:9",
				"--user-data-dir="+filepath.Join(dir, "profile"),
				"--ignore-certificate-errors",
				"--log-net-log="+netlog,
				"--screenshot="+shot, "--window-size=412,900", "--hide-scrollbars",
				pageURL)
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("chromium: %v\n%s", err, out)
			}
			f, err := os.Open(shot)
			if err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if art := os.Getenv("CHATRELAY_ARTIFACTS"); art != "" {
				os.MkdirAll(art, 0o755)
				data, _ := os.ReadFile(shot)
				os.WriteFile(filepath.Join(art, "web-index-"+tc.name+".png"), data, 0o644)
			}
			code := decodeQR(t, img)
			if tc.trusted {
				if want := "DCACCOUNT:https://" + r.AddrOf("https") + "/new"; code != want {
					t.Fatalf("screenshot QR %q, want %q", code, want)
				}
			} else {
				checkDCLogin(t, r, code)
			}
			checkNetLog(t, netlog, "https://127.0.0.1")
		})
	}
}

// checkNetLog reads Chromium's net log and asserts that the browser
// opened no TCP connection and sent no datagram to anything but loopback,
// and that every request made for the page went to the relay. Chromium's
// own background requests (update checks and the like) are made but only
// reach the dead proxy on 127.0.0.1:9; a UDP "connect" to a public address
// is how it learns its local address and sends nothing.
func checkNetLog(t *testing.T, path string, origin string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var log struct {
		Constants struct {
			EventTypes map[string]int `json:"logEventTypes"`
		} `json:"constants"`
		Events []struct {
			Type   int            `json:"type"`
			Params map[string]any `json:"params"`
		} `json:"events"`
	}
	if err := json.Unmarshal(data, &log); err != nil {
		// A log cut short at exit lacks its closing brackets.
		if err2 := json.Unmarshal(append(bytes.TrimRight(bytes.TrimSpace(data), ","), "]}"...), &log); err2 != nil {
			t.Fatalf("net log: %v", err)
		}
	}
	names := map[int]string{}
	for k, v := range log.Constants.EventTypes {
		names[v] = k
	}
	loopback := func(hostport string) bool {
		host := hostport
		if h, _, err := net.SplitHostPort(hostport); err == nil {
			host = h
		}
		ip := net.ParseIP(host)
		return host == "localhost" || ip != nil && ip.IsLoopback()
	}
	pageRequests := 0
	for _, e := range log.Events {
		switch names[e.Type] {
		case "TCP_CONNECT":
			list, _ := e.Params["address_list"].([]any)
			for _, a := range list {
				if s, _ := a.(string); !loopback(s) {
					t.Errorf("browser connected to %s", s)
				}
			}
		case "UDP_BYTES_SENT":
			if a, ok := e.Params["address"].(string); ok && !loopback(a) {
				t.Errorf("browser sent a datagram to %s", a)
			}
		case "URL_REQUEST_START_JOB":
			raw, _ := e.Params["url"].(string)
			nik, _ := e.Params["network_isolation_key"].(string)
			u, err := url.Parse(raw)
			if err != nil || !strings.Contains(nik, origin) && u.Host != strings.TrimPrefix(origin, "https://") {
				continue
			}
			if u.Scheme != "data" && !loopback(u.Host) {
				t.Errorf("the page made the browser fetch %s", raw)
				continue
			}
			pageRequests++
		}
	}
	if pageRequests == 0 {
		t.Error("net log shows no request for the page")
	}
}

// With the dedicated implicit-TLS ports off, the dclogin code sends clients
// to the HTTPS port, where ALPN routes IMAP and submission.
func TestDCLoginUsesHTTPSPortWhenOthersAreOff(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.Listen.IMAPS, c.Listen.Submissions = "", "" })
	u, err := url.Parse(r.DCLoginURL("abcdefghi@localhost", "password123"))
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(r.AddrOf("https"))
	if u.Query().Get("ip") != port || u.Query().Get("sp") != port {
		t.Fatalf("dclogin %s, want both ports %s", u, port)
	}
}

// The relay's own release files are offered beside the client apps, with
// their signatures, and a note on checking them.
func TestDownloadsOffersReleases(t *testing.T) {
	apps, rels := t.TempDir(), t.TempDir()
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.DownloadsDir = apps; c.ReleasesDir = rels })
	bin := []byte("a chatrelay binary")
	os.WriteFile(filepath.Join(rels, "chatrelay-1.0.0-linux-amd64"), bin, 0o755)
	os.WriteFile(filepath.Join(rels, "chatrelay-1.0.0-linux-amd64.minisig"), []byte("sig"), 0o644)
	os.WriteFile(filepath.Join(rels, "same.txt"), []byte("from releases"), 0o644)
	os.WriteFile(filepath.Join(apps, "same.txt"), []byte("from apps"), 0o644)
	os.WriteFile(filepath.Join(apps, "deltachat.apk"), []byte("apk"), 0o644)

	resp, body := fetch(t, r, "/downloads")
	doc := checkHTMLPage(t, resp, body)
	var names []string
	for _, a := range findAll(doc, "a") {
		if href := attr(a, "href"); strings.HasPrefix(href, "/downloads/") {
			names = append(names, href)
		}
	}
	want := "/downloads/chatrelay-1.0.0-linux-amd64 /downloads/chatrelay-1.0.0-linux-amd64.minisig /downloads/deltachat.apk /downloads/same.txt"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("listed %q, want %q", got, want)
	}
	sum := sha256.Sum256(bin)
	if !strings.Contains(body, hex.EncodeToString(sum[:])) || !strings.Contains(body, "chatrelay verify") {
		t.Errorf("/downloads lacks the release's sum or the note on verifying:\n%s", body)
	}
	if resp, got := fetch(t, r, "/downloads/chatrelay-1.0.0-linux-amd64"); resp.StatusCode != 200 || got != string(bin) {
		t.Errorf("release download: %d %q", resp.StatusCode, got)
	}
	if resp, got := fetch(t, r, "/downloads/chatrelay-1.0.0-linux-amd64.minisig"); resp.StatusCode != 200 || got != "sig" {
		t.Errorf("signature download: %d %q", resp.StatusCode, got)
	}
	// The operator's folder comes first.
	if _, got := fetch(t, r, "/downloads/same.txt"); got != "from apps" {
		t.Errorf("same.txt: %q", got)
	}
	// No note without release files.
	os.Remove(filepath.Join(rels, "chatrelay-1.0.0-linux-amd64"))
	os.Remove(filepath.Join(rels, "chatrelay-1.0.0-linux-amd64.minisig"))
	os.Remove(filepath.Join(rels, "same.txt"))
	if _, body := fetch(t, r, "/downloads"); strings.Contains(body, "chatrelay verify") {
		t.Error("note on release files without any")
	}
}

// A dev relay on a "_" domain names that domain, not its listener IP, in
// autoconfig and dclogin: Delta Chat relaxes certificate checks only for
// host names starting with "_", so an IP there fails the setup.
func TestAutoconfigKeepsUnderscoreDomain(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.Domain = "_x.test" })
	_, body := fetch(t, r, "/.well-known/autoconfig/mail/config-v1.1.xml", "Host", "")
	if !strings.Contains(body, "<hostname>_x.test</hostname>") || strings.Contains(body, "127.0.0.1") {
		t.Fatalf("autoconfig on a _ domain:\n%s", body)
	}
}
