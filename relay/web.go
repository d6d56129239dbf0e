package relay

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/chatrelay/chatrelay/mailbox"
)

// InviteChecker redeems invite tokens for /new?token=T when registration
// is "invite". UseInvite returns nil when the token was valid and one use
// of it is now spent.
type InviteChecker interface {
	UseInvite(token string) error
}

// web serves the HTTPS side: the onboarding page, /new, /info, /privacy,
// /downloads, autoconfig and the MTA-STS policy.
type web struct {
	s       *Server
	invites atomic.Pointer[inviteChecker]
	dl      *downloads
}

// inviteChecker boxes the interface for atomic.Pointer.
type inviteChecker struct{ InviteChecker }

func newWeb(s *Server) *web {
	w := &web{s: s}
	dir := s.cfg.DownloadsDir
	if dir == "" {
		dir = filepath.Join(s.cfg.DataDir, "downloads")
	}
	w.dl = newDownloads(dir, s.cfg.ReleasesFolder())
	return w
}

// SetInviteChecker makes /new accept invite tokens (registration mode
// "invite"); nil means invites are not supported and such a relay takes
// no new accounts over the web.
func (s *Server) SetInviteChecker(c InviteChecker) {
	if c == nil {
		s.web.invites.Store(nil)
		return
	}
	s.web.invites.Store(&inviteChecker{c})
}

func (w *web) inviteChecker() InviteChecker {
	if c := w.invites.Load(); c != nil {
		return c.InviteChecker
	}
	return nil
}

// WebHandler is the web site on its own (without /mxdeliv), as the HTTPS
// listener serves it.
func (s *Server) WebHandler() http.Handler { return s.web.handler() }

func (w *web) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/new", w.handleNew)
	mux.HandleFunc("GET /robots.txt", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(rw, "User-agent: *\nDisallow: /\n")
	})
	mux.HandleFunc("GET /{$}", w.handleIndex)
	mux.HandleFunc("POST /{$}", w.handleIndex) // an invite's button
	mux.HandleFunc("GET /info", w.handleInfo)
	mux.HandleFunc("GET /privacy", w.handlePrivacy)
	mux.HandleFunc("GET /downloads", w.handleDownloads)
	mux.HandleFunc("GET "+mtaSTSPath, w.handleMTASTS)
	// Delta Chat core tries autoconfig.D first, then D/.well-known.
	mux.HandleFunc("GET /.well-known/autoconfig/mail/config-v1.1.xml", w.handleAutoconfig)
	mux.HandleFunc("GET /mail/config-v1.1.xml", w.handleAutoconfig)
	return w.secure(w.route(mux))
}

// route does what the Host header asks before the paths are looked at:
// mta-sts.D serves only its policy (RFC 8461 section 3.3), www.D sends
// browsers to D, and /downloads/NAME is answered here so that no path
// cleaning or pattern matching stands between the name and its checks.
func (w *web) route(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		host, port := splitHost(r.Host)
		if d := strings.ToLower(w.s.cfg.Domain); d != "" && w.s.cfg.IP == "" {
			switch host {
			case "mta-sts." + d:
				if r.URL.Path != mtaSTSPath {
					http.NotFound(rw, r)
					return
				}
				w.handleMTASTS(rw, r)
				return
			case "www." + d:
				target := "https://" + d
				if port != "" {
					target += ":" + port
				}
				http.Redirect(rw, r, target+r.URL.RequestURI(), http.StatusMovedPermanently)
				return
			}
		}
		if name, ok := strings.CutPrefix(r.URL.Path, "/downloads/"); ok {
			w.serveDownload(rw, r, name)
			return
		}
		next.ServeHTTP(rw, r)
	})
}

// splitHost returns the lower-case host name of a Host header without a
// trailing dot, and its port if one was given.
func splitHost(hostport string) (host, port string) {
	host = hostport
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host, port = h, p
	}
	return strings.TrimSuffix(strings.ToLower(host), "."), port
}

// secure sets the headers every answer carries: the page may load nothing
// but its own inline style and data: images, and nobody may frame it.
func (w *web) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h := rw.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		next.ServeHTTP(rw, r)
	})
}

const contentSecurityPolicy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

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
	q.Set("ip", s.implicitTLSPort("imaps", s.cfg.Listen.IMAPS, "993"))
	q.Set("is", "ssl")
	q.Set("sh", host)
	q.Set("sp", s.implicitTLSPort("submissions", s.cfg.Listen.Submissions, "465"))
	q.Set("ss", "ssl")
	if s.certs.SelfSigned() {
		q.Set("ic", "3")
	}
	return "dclogin:" + addr + "?" + q.Encode()
}

// connectHost is the host name clients should connect to. A dev relay
// listens on one loopback address, and "localhost" may resolve to ::1
// first on the client, so it names the address itself; but a domain
// starting with "_" is kept, since Delta Chat accepts a certificate it
// cannot verify only for host names starting with "_".
func (s *Server) connectHost() string {
	if s.cfg.Dev && !strings.HasPrefix(s.cfg.Hostname(), "_") {
		for _, name := range []string{"imaps", "https"} {
			if a, ok := s.Addr(name).(*net.TCPAddr); ok && a.IP != nil && !a.IP.IsUnspecified() {
				return a.IP.String()
			}
		}
	}
	return s.cfg.Hostname()
}

// implicitTLSPort is the port clients reach a protocol on with implicit
// TLS: its own listener, or the HTTPS one (by ALPN) when that is off.
func (s *Server) implicitTLSPort(name, configured, def string) string {
	if configured == "" && s.cfg.Listen.HTTPS != "" {
		return portOf(s.Addr("https"), s.cfg.Listen.HTTPS, "443")
	}
	return portOf(s.Addr(name), configured, def)
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
	token := r.URL.Query().Get("token")
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		http.Redirect(rw, r, "dcaccount:"+w.newURL(token), http.StatusFound)
		return
	case http.MethodPost:
	default:
		rw.Header().Set("Allow", "GET, POST")
		http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	addr, pw, err := w.createAccount(r, token)
	if err != nil {
		var re *registrationError
		if !errors.As(err, &re) {
			re = &registrationError{http.StatusInternalServerError, "could not create the account"}
		}
		writeReason(rw, re.code, re.reason)
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
}

// newURL is the https URL of /new, with the invite token if there is one.
func (w *web) newURL(token string) string {
	u := w.baseURL() + "/new"
	if token != "" {
		u += "?" + url.Values{"token": {token}}.Encode()
	}
	return u
}

// registrationError is a refusal to make an account, with the HTTP status
// and the reason Delta Chat shows to the user.
type registrationError struct {
	code   int
	reason string
}

func (e *registrationError) Error() string { return e.reason }

// createAccount makes a fresh account in the store for a web request, if
// the registration mode, the invite token, the per-IP rate and the
// machine's health all allow it. The token is only spent when everything
// else has passed.
func (w *web) createAccount(r *http.Request, token string) (addr, password string, err error) {
	// One budget per client address for /new and first-login creation.
	if !w.s.auth.allowNewAccount(clientIP(r)) {
		return "", "", &registrationError{http.StatusTooManyRequests, "too many new accounts from your address, try again later"}
	}
	mode := w.s.cfg.Registration
	switch mode {
	case "open":
	case "invite":
		if token == "" {
			return "", "", &registrationError{http.StatusForbidden, "this relay only takes new accounts with an invite"}
		}
		if w.inviteChecker() == nil {
			w.s.log.Warn("new account refused: registration is invite but no invite checker is set")
			return "", "", &registrationError{http.StatusForbidden, "this relay cannot check invites right now"}
		}
	default:
		return "", "", &registrationError{http.StatusForbidden, "registration is not open on this relay"}
	}
	if err := w.s.auth.guard.check(w.s.cfg.DataDir); err != nil {
		w.s.log.Warn("new account refused", "reason", err.Error())
		return "", "", &registrationError{http.StatusServiceUnavailable, "this relay cannot take new accounts right now"}
	}
	if mode == "invite" {
		if err := w.inviteChecker().UseInvite(token); err != nil {
			w.s.log.Info("new account refused: invite not accepted", "err", err)
			return "", "", &registrationError{http.StatusForbidden, "this invite is not valid (unknown, used up or expired)"}
		}
	}
	for range 5 {
		addr, pw := w.s.NewAccountCredentials()
		err := w.s.store.CreateAccount(addr, pw, mailbox.Generated)
		if errors.Is(err, mailbox.ErrExists) {
			continue
		}
		if err != nil {
			w.s.log.Error("create account", "err", err)
			return "", "", &registrationError{http.StatusInternalServerError, "could not create the account"}
		}
		return addr, pw, nil
	}
	return "", "", &registrationError{http.StatusInternalServerError, "could not find a free account name"}
}

func writeReason(rw http.ResponseWriter, code int, reason string) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	json.NewEncoder(rw).Encode(map[string]string{"reason": reason})
}

// clientIP is the key /new is rate limited by: the client's IP, or for
// IPv6 its /64, as the connection caps count.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	if ip := net.ParseIP(host); ip != nil {
		return ipKey(&net.TCPAddr{IP: ip})
	}
	return host
}
