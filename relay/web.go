package relay

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"golang.org/x/time/rate"

	"github.com/chatrelay/chatrelay/mailbox"
)

// web serves the HTTPS side: the onboarding page and /new.
type web struct {
	s      *Server
	newLim *ipLimiter
}

func newWeb(s *Server) *web {
	// /new: a burst of 5 accounts per client IP, then one every 10 s.
	return &web{s: s, newLim: newIPLimiter(rate.Every(10*time.Second), 5)}
}

func (w *web) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/new", w.handleNew)
	mux.HandleFunc("/robots.txt", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(rw, "User-agent: *\nDisallow: /\n")
	})
	mux.HandleFunc("/{$}", w.handleIndex)
	return mux
}

// Random account names: SPEC section 4, 9 characters of [a-z0-9].
const nameAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomString(n int, alphabet string) string {
	b := make([]byte, n)
	rand.Read(b)
	// 256 is not a multiple of 36; the bias is negligible for names and
	// irrelevant for the 24-character passwords drawn the same way.
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

const passwordAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// NewAccountCredentials invents an unused address and a password.
func (s *Server) NewAccountCredentials() (addr, password string) {
	n := s.cfg.MaxNameLen
	if n < 9 && s.cfg.MinNameLen <= 9 {
		n = 9
	}
	return randomString(n, nameAlphabet) + "@" + s.cfg.MailDomain(), randomString(24, passwordAlphabet)
}

// DCLoginURL is the dclogin: code for an account on this relay, with the
// implicit-TLS ports and "accept invalid certificates" when self-signed.
func (s *Server) DCLoginURL(addr, password string) string {
	host := s.connectHost()
	q := url.Values{}
	q.Set("p", password)
	q.Set("v", "1")
	q.Set("ih", host)
	q.Set("ip", portOf(s.Addr("imaps"), s.cfg.Listen.IMAPS, "993"))
	q.Set("is", "ssl")
	q.Set("sh", host)
	q.Set("sp", portOf(s.Addr("submissions"), s.cfg.Listen.Submissions, "465"))
	q.Set("ss", "ssl")
	if s.certs.SelfSigned() {
		q.Set("ic", "3")
	}
	return "dclogin:" + addr + "?" + q.Encode()
}

// connectHost is the host name clients should connect to. A dev relay
// listens on one loopback address, and "localhost" may resolve to ::1
// first on the client, so it names the address itself.
func (s *Server) connectHost() string {
	if s.cfg.Dev {
		if a, ok := s.Addr("imaps").(*net.TCPAddr); ok && a.IP != nil && !a.IP.IsUnspecified() {
			return a.IP.String()
		}
	}
	return s.cfg.Hostname()
}

func portOf(bound net.Addr, configured, def string) string {
	if bound != nil {
		if _, p, err := net.SplitHostPort(bound.String()); err == nil {
			return p
		}
	}
	if _, p, err := net.SplitHostPort(configured); err == nil {
		return p
	}
	return def
}

func (w *web) baseURL() string {
	host := w.s.connectHost()
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		host = "[" + host + "]"
	}
	if p := portOf(w.s.Addr("https"), w.s.cfg.Listen.HTTPS, "443"); p != "443" {
		host = net.JoinHostPort(host, p)
	}
	return "https://" + host
}

type newAccount struct {
	Email      string `json:"email"`
	Password   string `json:"password"`
	DCLoginURL string `json:"dclogin_url,omitempty"`
}

func (w *web) handleNew(rw http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		http.Redirect(rw, r, "dcaccount:"+w.baseURL()+"/new", http.StatusFound)
		return
	case http.MethodPost:
	default:
		rw.Header().Set("Allow", "GET, POST")
		http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !w.newLim.allow(clientIP(r)) {
		writeReason(rw, http.StatusTooManyRequests, "too many new accounts from your address, try again later")
		return
	}
	if w.s.cfg.Registration != "open" {
		writeReason(rw, http.StatusForbidden, "registration is not open on this relay")
		return
	}
	if err := w.s.auth.guard.check(w.s.cfg.DataDir); err != nil {
		w.s.log.Warn("new account refused", "reason", err.Error())
		writeReason(rw, http.StatusServiceUnavailable, "this relay cannot take new accounts right now")
		return
	}
	for range 5 {
		addr, pw := w.s.NewAccountCredentials()
		err := w.s.store.CreateAccount(addr, pw)
		if errors.Is(err, mailbox.ErrExists) {
			continue
		}
		if err != nil {
			w.s.log.Error("create account", "err", err)
			writeReason(rw, http.StatusInternalServerError, "could not create the account")
			return
		}
		resp := newAccount{Email: addr, Password: pw}
		if w.s.certs.SelfSigned() {
			resp.DCLoginURL = w.s.DCLoginURL(addr, pw)
		}
		rw.Header().Set("Content-Type", "application/json")
		rw.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(rw)
		enc.SetEscapeHTML(false)
		enc.Encode(resp)
		return
	}
	writeReason(rw, http.StatusInternalServerError, "could not find a free account name")
}

func writeReason(rw http.ResponseWriter, code int, reason string) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	json.NewEncoder(rw).Encode(map[string]string{"reason": reason})
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

var indexTmpl = template.Must(template.New("index").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Domain}} chat relay</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:auto;padding:1em">
<h1>{{.Domain}}</h1>
<p>This is a chatmail relay for <a href="https://delta.chat">Delta Chat</a>. It only carries end-to-end encrypted messages.</p>
<p><a href="{{.Join}}">Join with Delta Chat</a></p>
<p>Messages are deleted after {{.Days}} days. Storage per account: {{.QuotaMiB}} MiB. Largest message: {{.MaxMiB}} MiB.</p>
</body></html>
`))

func (w *web) handleIndex(rw http.ResponseWriter, r *http.Request) {
	rw.Header().Set("Content-Type", "text/html; charset=utf-8")
	indexTmpl.Execute(rw, map[string]string{
		"Domain":   w.s.cfg.Hostname(),
		"Join":     "DCACCOUNT:" + w.baseURL() + "/new",
		"Days":     "20",
		"QuotaMiB": strconv.FormatInt(w.s.cfg.QuotaBytes>>20, 10),
		"MaxMiB":   strconv.FormatInt(w.s.cfg.MaxMessageSize>>20, 10),
	})
}
