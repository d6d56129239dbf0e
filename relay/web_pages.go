package relay

import (
	"bytes"
	"embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/skip2/go-qrcode"
	"golang.org/x/text/language"

	"github.com/chatrelay/chatrelay/mailbox"
)

// The pages and their strings are embedded: the binary is the whole site,
// for relays whose operators copy one file by hand.
//
//go:embed templates
var webFS embed.FS

// webPushTokenDays is how long a push token lives (mailbox.PushTokenTTL).
const webPushTokenDays = int(mailbox.PushTokenTTL / (24 * time.Hour))

// catalogue holds the translated strings: language -> key -> text.
// English is complete; other languages may translate only some pages.
type catalogue map[string]map[string]string

func loadCatalogue(fsys fs.FS) (catalogue, error) {
	files, err := fs.Glob(fsys, "templates/strings/*.json")
	if err != nil {
		return nil, err
	}
	cat := catalogue{}
	for _, f := range files {
		data, err := fs.ReadFile(fsys, f)
		if err != nil {
			return nil, err
		}
		m := map[string]string{}
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		cat[strings.TrimSuffix(path.Base(f), ".json")] = m
	}
	if cat["en"] == nil {
		return nil, fmt.Errorf("templates/strings/en.json missing")
	}
	return cat, nil
}

// page is one template with the languages that translate every string it
// uses; a page is never shown half translated.
type page struct {
	tmpl    *template.Template
	langs   []string // "en" first
	matcher language.Matcher
	strings map[string]map[string]string // language -> key -> text
}

// stringKey finds the catalogue keys a template uses ({{.S.key}}).
var stringKey = regexp.MustCompile(`\.S\.([a-z0-9_]+)`)

// loadPage parses the layout with templates/NAME.html. extraKeys are keys
// the Go code looks up for the page.
func loadPage(fsys fs.FS, cat catalogue, name string, extraKeys ...string) (*page, error) {
	files := []string{"templates/layout.html", "templates/" + name + ".html"}
	tmpl, err := template.ParseFS(fsys, files...)
	if err != nil {
		return nil, err
	}
	keys := slices.Clone(extraKeys)
	for _, f := range files {
		src, err := fs.ReadFile(fsys, f)
		if err != nil {
			return nil, err
		}
		for _, m := range stringKey.FindAllSubmatch(src, -1) {
			keys = append(keys, string(m[1]))
		}
	}
	p := &page{tmpl: tmpl.Lookup("layout"), strings: map[string]map[string]string{}}
	if p.tmpl == nil {
		return nil, fmt.Errorf("templates/layout.html defines no \"layout\"")
	}
	for _, k := range keys {
		if _, ok := cat["en"][k]; !ok {
			return nil, fmt.Errorf("page %s: string %q missing from en.json", name, k)
		}
	}
	langs := []string{"en"}
	for lang := range cat {
		if lang != "en" && slices.IndexFunc(keys, func(k string) bool { _, ok := cat[lang][k]; return !ok }) < 0 {
			langs = append(langs, lang)
		}
	}
	slices.Sort(langs[1:])
	tags := make([]language.Tag, len(langs))
	for i, lang := range langs {
		tags[i] = language.Make(lang)
		// The English text stands in for anything a translation leaves
		// out that this page does not use.
		merged := map[string]string{}
		for k, v := range cat["en"] {
			merged[k] = v
		}
		for k, v := range cat[lang] {
			merged[k] = v
		}
		p.strings[lang] = merged
	}
	p.langs = langs
	p.matcher = language.NewMatcher(tags)
	return p, nil
}

// lang picks the page's language from Accept-Language; English when
// nothing the reader accepts is translated.
func (p *page) lang(r *http.Request) string {
	if l := p.chosenLang(r); l != "" {
		return l
	}
	tags, _, err := language.ParseAcceptLanguage(r.Header.Get("Accept-Language"))
	if err != nil || len(tags) == 0 {
		return "en"
	}
	_, i, conf := p.matcher.Match(tags...)
	if conf == language.No {
		return "en"
	}
	return p.langs[i]
}

// pages are parsed once; a template error is a build mistake the tests
// catch.
var pages = func() map[string]*page {
	cat, err := loadCatalogue(webFS)
	if err != nil {
		panic(err)
	}
	ps := map[string]*page{}
	extra := map[string][]string{"info": portStringKeys}
	for _, name := range []string{"index", "info", "privacy", "downloads"} {
		p, err := loadPage(webFS, cat, name, extra[name]...)
		if err != nil {
			panic(err)
		}
		ps[name] = p
	}
	return ps
}()

// pageData is what every template gets.
type pageData struct {
	Lang         string
	LangQuery    string       // "?lang=L" when the reader chose L, for the page's links
	Langs        []langChoice // the language switcher
	S            map[string]string
	Domain       string
	Operator     string
	Admin        string
	Registration string
	HasDownloads bool
	HasReleases  bool // the relay's own release files are among Downloads
	Limits       limits

	Join      joinCode
	Proxy     joinCode // the ss:// URL, when published on this page
	Info      infoData
	Privacy   privacyData
	Downloads []download
}

type limits struct {
	MaxMessageMiB, QuotaMiB                         int64
	MaxRecipients, SendPerMinute                    int
	RetentionDays, LargeRetentionDays, InactiveDays int
	MinNameLen, MaxNameLen, MinPasswordLen          int
}

func (w *web) pageData(p *page, r *http.Request) *pageData {
	lang := p.lang(r)
	c := &w.s.cfg
	langQuery := ""
	if l := p.chosenLang(r); l != "" {
		langQuery = "?lang=" + l
	}
	return &pageData{
		Lang:         lang,
		LangQuery:    langQuery,
		Langs:        p.switcher(r, lang),
		S:            p.strings[lang],
		Domain:       c.Hostname(),
		Operator:     c.OperatorName,
		Admin:        c.AdminContact,
		Registration: c.Registration,
		HasDownloads: w.dl.any(),
		Limits: limits{
			MaxMessageMiB:      c.MaxMessageSize >> 20,
			QuotaMiB:           c.QuotaBytes >> 20,
			MaxRecipients:      c.MaxRecipients,
			SendPerMinute:      int(c.SendRatePerMinute),
			RetentionDays:      c.MaxMessageAgeDays,
			LargeRetentionDays: c.LargeReadAgeDays,
			InactiveDays:       c.AccountIdleDays,
			MinNameLen:         c.MinNameLen,
			MaxNameLen:         c.MaxNameLen,
			MinPasswordLen:     c.MinPasswordLen,
		},
	}
}

func (w *web) render(rw http.ResponseWriter, p *page, d *pageData) {
	var buf bytes.Buffer
	if err := p.tmpl.Execute(&buf, d); err != nil {
		w.s.log.Error("render page", "err", err)
		http.Error(rw, "internal error", http.StatusInternalServerError)
		return
	}
	h := rw.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Language", d.Lang)
	h.Set("Vary", "Accept-Language")
	if h.Get("Cache-Control") == "" {
		h.Set("Cache-Control", "no-cache")
	}
	rw.Write(buf.Bytes())
}

// joinCode is the onboarding code on /: the link, its text and its QR.
type joinCode struct {
	URL        template.URL // dcaccount: or dclogin:, which html/template would refuse as a plain string
	Text       string
	QR         template.URL // data:image/png;base64,...
	QRSize     int
	SelfSigned bool
	Error      string
	Confirm    bool // an invite waits for the reader's button
}

// The join code (SPEC sections 2 and 4). A relay with a publicly trusted
// certificate shows DCACCOUNT:https://D/new and core asks /new for an
// account. Core will not talk to /new over a self-signed certificate, so
// such a relay shows a dclogin: code that carries the account and "accept
// invalid certificates": with open registration for invented credentials
// (the account is made at first login), with an invite for an account made
// when the reader presses the page's button: a GET never spends an invite
// (a link preview would burn it), only the button's POST does.
func (w *web) handleIndex(rw http.ResponseWriter, r *http.Request) {
	p := pages["index"]
	d := w.pageData(p, r)
	selfSigned := w.s.certs.SelfSigned()
	token := r.URL.Query().Get("token")
	// Before the switch below may spend the invite.
	showProxy := w.proxyShown(token)
	var code string
	switch w.s.cfg.Registration {
	case "open":
		if selfSigned {
			code = w.s.DCLoginURL(w.s.NewAccountCredentials())
		} else {
			code = "DCACCOUNT:" + w.newURL("")
		}
	case "invite":
		switch {
		case token == "":
		case !selfSigned:
			code = "DCACCOUNT:" + w.newURL(token)
		case r.Method != http.MethodPost:
			d.Join.Confirm = true
		default:
			addr, pw, err := w.createAccount(r, token)
			if err != nil {
				d.Join.Error = err.Error()
				break
			}
			code = w.s.DCLoginURL(addr, pw)
		}
	}
	if code != "" {
		png, size, err := qrPNG(code)
		if err != nil {
			w.s.log.Error("join QR code", "err", err)
			http.Error(rw, "internal error", http.StatusInternalServerError)
			return
		}
		d.Join = joinCode{
			URL:        template.URL(code),
			Text:       code,
			QR:         template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(png)),
			QRSize:     size,
			SelfSigned: selfSigned,
		}
	}
	if u := w.s.ProxyURL(); u != "" && showProxy {
		png, size, err := qrPNG(u)
		if err != nil {
			w.s.log.Error("proxy QR code", "err", err)
			http.Error(rw, "internal error", http.StatusInternalServerError)
			return
		}
		d.Proxy = joinCode{
			Text:   u,
			QR:     template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(png)),
			QRSize: size,
		}
	}
	if selfSigned || token != "" {
		// A code with credentials or an invite in it is for one reader.
		rw.Header().Set("Cache-Control", "no-store")
	}
	w.render(rw, p, d)
}

// proxyShown tells whether the page shows the proxy's URL: always with
// proxy.publish "page", with "invite" only to holders of a valid invite
// (checked, not spent).
func (w *web) proxyShown(token string) bool {
	switch w.s.cfg.Proxy.Publish {
	case "page":
		return true
	case "invite":
		ic, ok := w.inviteChecker().(interface{ Valid(string) bool })
		return token != "" && ok && ic.Valid(token)
	}
	return false
}

// qrPNG draws code as a PNG with whole pixels per module, about 300 px
// wide: scaled by the browser it stays sharp enough to scan off a screen.
func qrPNG(code string) (png []byte, size int, err error) {
	qr, err := qrcode.New(code, qrcode.Medium)
	if err != nil {
		return nil, 0, err
	}
	modules := len(qr.Bitmap()) // with the quiet zone
	scale := max(2, 300/modules)
	png, err = qr.PNG(-scale)
	return png, modules * scale, err
}

// infoData is /info: where to connect and how.
type infoData struct {
	ExampleAddr   string
	SelfSigned    bool
	Ports         []portRow
	AutoconfigURL string
}

type portRow struct {
	Service, Port, Security string // Service and Security are catalogue keys
}

var portStringKeys = []string{
	"svc_imaps", "svc_imap", "svc_submissions", "svc_submission", "svc_smtp", "svc_https",
	"sec_tls", "sec_starttls", "sec_starttls_inbound",
}

// listenPort is the port a listener takes connections on: the bound one,
// else the configured one; "" when the listener is turned off.
func (w *web) listenPort(name string) string {
	c := w.s.cfg.Listen
	configured := map[string]string{
		"imaps": c.IMAPS, "imap": c.IMAP, "submissions": c.Submissions,
		"submission": c.Submission, "smtp": c.SMTP, "https": c.HTTPS,
	}[name]
	bound := w.s.Addr(name)
	if configured == "" && bound == nil {
		return ""
	}
	return portOf(bound, configured, "")
}

func (w *web) handleInfo(rw http.ResponseWriter, r *http.Request) {
	p := pages["info"]
	d := w.pageData(p, r)
	d.Info = infoData{
		ExampleAddr:   strings.Repeat("x", w.s.cfg.MaxNameLen) + "@" + w.s.cfg.MailDomain(),
		SelfSigned:    w.s.certs.SelfSigned(),
		AutoconfigURL: w.baseURL() + "/.well-known/autoconfig/mail/config-v1.1.xml",
	}
	for _, l := range []struct{ name, sec string }{
		{"imaps", "sec_tls"}, {"imap", "sec_starttls"},
		{"submissions", "sec_tls"}, {"submission", "sec_starttls"},
		{"https", "sec_tls"}, {"smtp", "sec_starttls_inbound"},
	} {
		if port := w.listenPort(l.name); port != "" {
			d.Info.Ports = append(d.Info.Ports, portRow{"svc_" + l.name, port, l.sec})
		}
	}
	w.render(rw, p, d)
}

// privacyData is /privacy beyond the config values every page has.
type privacyData struct {
	PushTokenDays int
	PushHost      string
	ExtraHTML     template.HTML // the operator's own HTML, trusted as such
	ExtraText     string
}

// maxPrivacyExtra bounds the operator's file: a policy, not a library.
const maxPrivacyExtra = 1 << 20

func (w *web) handlePrivacy(rw http.ResponseWriter, r *http.Request) {
	p := pages["privacy"]
	d := w.pageData(p, r)
	d.Privacy.PushTokenDays = webPushTokenDays
	d.Privacy.PushHost = w.s.cfg.NotifyURL
	if u, err := url.Parse(w.s.cfg.NotifyURL); err == nil && u.Host != "" {
		d.Privacy.PushHost = u.Hostname()
	}
	if f := w.s.cfg.PrivacyExtraFile; f != "" {
		extra, err := readLimited(f, maxPrivacyExtra)
		if err != nil {
			// The generated policy still holds; the operator sees why
			// their part is missing.
			w.s.log.Error("privacy_extra_file", "err", err)
		}
		switch ext := strings.ToLower(filepath.Ext(f)); {
		case err != nil:
		case ext == ".html" || ext == ".htm":
			d.Privacy.ExtraHTML = template.HTML(extra)
		default:
			d.Privacy.ExtraText = string(extra)
		}
	}
	w.render(rw, p, d)
}

func readLimited(name string, n int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, n+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(data)) > n {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, n)
	}
	return data, nil
}
