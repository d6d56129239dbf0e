package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/mailbox/imapext"
	"github.com/chatrelay/chatrelay/relay/turn"
)

// METADATA entries Delta Chat reads (SPEC section 2).
const (
	entryComment       = "/shared/comment"
	entryAdmin         = "/shared/admin"
	entryIrohRelay     = "/shared/vendor/deltachat/irohrelay"
	entryTURN          = "/shared/vendor/deltachat/turn"
	entryMaxRecipients = "/shared/vendor/deltachat/maxsmtprecipients"
	entryAppVersions   = "/shared/vendor/deltachat/appversions"
	entryDeviceToken   = "/private/devicetoken"
)

// metadata answers METADATA and QUOTA for the IMAP layer: server entries
// from the config, private entries and push tokens from the store.
type metadata struct{ s *Server }

var _ imapext.Handler = metadata{}

// serverEntries are the /shared entries of the server ("" mailbox).
func (m metadata) serverEntries() map[string]string {
	cfg := m.s.cfg
	e := map[string]string{
		entryMaxRecipients: strconv.Itoa(cfg.MaxRecipients),
	}
	if cfg.Comment != "" {
		e[entryComment] = cfg.Comment
	}
	if cfg.AdminContact != "" {
		e[entryAdmin] = "mailto:" + cfg.AdminContact
	}
	if u := m.s.IrohRelayURL(); u != "" {
		e[entryIrohRelay] = u
	}
	if t := m.turnCredentials(); t != "" {
		e[entryTURN] = t
	}
	if a := m.appVersions(); a != "" {
		e[entryAppVersions] = a
	}
	return e
}

// IrohRelayURL is the iroh relay announced to Delta Chat, or "" for none
// (core then falls back to n0's public relays). The built-in relay is
// announced only while the certificate served is not self-signed: core's
// iroh checks the relay's certificate against the public roots compiled
// into it (iroh-relay 0.35 client/tls.rs: webpki-roots), so a self-signed
// relay would only break realtime for clients that could reach n0's.
func (s *Server) IrohRelayURL() string {
	switch v := s.cfg.IrohRelay; {
	case v == IrohRelayOff:
		return ""
	case v != "":
		return v
	case s.cfg.IP != "" || s.certs.SelfSigned():
		return ""
	}
	return s.ownIrohRelayURL()
}

// ownIrohRelayURL is Config.OwnIrohRelayURL with the port the HTTPS
// listener is bound to.
func (s *Server) ownIrohRelayURL() string {
	c := s.cfg
	if a, ok := s.Addr("https").(*net.TCPAddr); ok {
		c.Listen.HTTPS = net.JoinHostPort("", strconv.Itoa(a.Port))
	}
	return c.OwnIrohRelayURL()
}

// appVersions is the JSON Delta Chat reads for app updates (SPEC section
// 2): {"clients":[{"clientId","sources":[{"sourceId","versionInteger",
// "versionString","downloadUrl"}]}]}, from config. An entry for a file
// of the downloads folder points at it on this relay and is left out
// while the file is not there; "" when nothing is on offer.
func (m metadata) appVersions() string {
	type source struct {
		SourceID       string `json:"sourceId"`
		VersionInteger int64  `json:"versionInteger"`
		VersionString  string `json:"versionString"`
		DownloadURL    string `json:"downloadUrl"`
	}
	type client struct {
		ClientID string   `json:"clientId"`
		Sources  []source `json:"sources"`
	}
	var clients []client
	for _, a := range m.s.cfg.AppVersions {
		src := source{SourceID: a.SourceID, VersionInteger: a.VersionInteger, VersionString: a.VersionString, DownloadURL: a.DownloadURL}
		if src.SourceID == "" {
			src.SourceID = "relay"
		}
		if a.File != "" {
			if !m.s.web.dl.has(a.File) {
				continue
			}
			if src.DownloadURL == "" {
				src.DownloadURL = m.s.web.baseURL() + "/downloads/" + url.PathEscape(a.File)
			}
		}
		i := slices.IndexFunc(clients, func(c client) bool { return c.ClientID == a.ClientID })
		if i < 0 {
			clients = append(clients, client{ClientID: a.ClientID})
			i = len(clients) - 1
		}
		clients[i].Sources = append(clients[i].Sources, src)
	}
	if len(clients) == 0 {
		return ""
	}
	b, err := json.Marshal(struct {
		Clients []client `json:"clients"`
	}{clients})
	if err != nil {
		return ""
	}
	return string(b)
}

// turnCredentials is host:port:expiry:password (SPEC section 2), where
// expiry (unix seconds) is the TURN user name and the password the base64
// HMAC-SHA1 of it under the secret shared with the TURN server: the
// external one if configured, else the built-in one.
func (m metadata) turnCredentials() string {
	s := m.s
	t := s.cfg.TURN
	ttl := time.Duration(t.TTLHours) * time.Hour
	var hostport string
	var secret []byte
	switch {
	case t.External():
		hostport, secret = t.Server, []byte(t.Secret)
	case s.turn != nil && s.turnHost != "":
		hostport, secret = net.JoinHostPort(s.turnHost, strconv.Itoa(s.turn.Port())), s.turnSecret
	default:
		return ""
	}
	user, pass := turn.Credentials(secret, s.now().Add(ttl))
	return hostport + ":" + user + ":" + pass
}

func (m metadata) GetMetadata(user, mbox string, entries []string, opts imapext.GetMetadataOptions) (map[string]*string, error) {
	out := map[string]*string{}
	var shared map[string]string
	if mbox == "" {
		shared = m.serverEntries()
	}
	for _, e := range entries {
		lower := strings.ToLower(e)
		switch {
		case shared != nil && strings.HasPrefix(lower, "/shared"):
			if opts.Depth != 0 {
				for k, v := range shared {
					if strings.HasPrefix(k, lower+"/") && (opts.Depth < 0 || strings.Count(k[len(lower):], "/") <= opts.Depth) {
						v := v
						out[k] = &v
					}
				}
			}
			if v, ok := shared[lower]; ok {
				out[e] = &v
			} else if _, listed := out[e]; !listed {
				out[e] = nil
			}
		case strings.HasPrefix(lower, "/private/") && lower != entryDeviceToken:
			v, err := m.s.store.GetPrivate(user, mbox, lower)
			if err != nil {
				return nil, err
			}
			out[e] = v
		case lower == entryDeviceToken && strings.EqualFold(mbox, "INBOX"):
			// The account's own tokens, space-separated, as the reference
			// relay answers; only the logged-in user reads them.
			tokens, err := m.s.store.PushTokens(user)
			if err != nil {
				return nil, err
			}
			if len(tokens) == 0 {
				out[e] = nil
				continue
			}
			v := strings.Join(tokens, " ")
			out[e] = &v
		default:
			out[e] = nil
		}
	}
	return out, nil
}

func (m metadata) SetMetadata(user, mbox string, entries map[string]*string) error {
	for e, v := range entries {
		lower := strings.ToLower(e)
		switch {
		case lower == entryDeviceToken && strings.EqualFold(mbox, "INBOX"):
			if v == nil {
				continue
			}
			token := strings.TrimSpace(*v)
			if token == "" || len(token) > 4096 {
				return &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Invalid device token"}
			}
			if err := m.s.store.AddPushToken(user, token); err != nil {
				return err
			}
		case strings.HasPrefix(lower, "/private/"):
			err := m.s.store.SetPrivate(user, mbox, lower, v)
			if errors.Is(err, mailbox.ErrTooMany) {
				return &imap.Error{Type: imap.StatusResponseTypeNo, Code: "METADATA TOOMANY", Text: "Too many entries"}
			} else if err != nil {
				return err
			}
		default:
			// RFC 5464 section 3.2: shared entries here are the server's.
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNoPerm, Text: fmt.Sprintf("%s is read-only", e)}
		}
	}
	return nil
}

func (m metadata) Quota(user string) (used, limit int64, err error) {
	return m.s.store.Quota(user)
}
