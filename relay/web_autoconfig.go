package relay

import (
	"encoding/xml"
	"fmt"
	"net/http"
)

// mtaSTSPath is where senders fetch our MTA-STS policy (RFC 8461 section
// 3.2), on https://mta-sts.D.
const mtaSTSPath = "/.well-known/mta-sts.txt"

// mtaSTSMaxAge is four weeks, the max_age other chatmail relays publish.
const mtaSTSMaxAge = 2419200

// handleMTASTS serves the policy: TLS with a valid certificate is required
// to deliver to D, and D is its own MX (SPEC section 8). An IP-only relay
// has no domain to make a policy for.
func (w *web) handleMTASTS(rw http.ResponseWriter, r *http.Request) {
	d := w.s.cfg.Domain
	if d == "" || w.s.cfg.IP != "" {
		http.NotFound(rw, r)
		return
	}
	// RFC 8461 section 3.2: text/plain, key/value pairs separated by
	// CRLF.
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(rw, "version: STSv1\r\nmode: enforce\r\nmx: %s\r\nmax_age: %d\r\n", d, mtaSTSMaxAge)
}

// Thunderbird's autoconfig format, as Delta Chat core reads it: the type
// attribute, hostname, port, socketType (SSL, STARTTLS) and username of
// each server; entries without all of them are skipped.
type autoconfig struct {
	XMLName  xml.Name         `xml:"clientConfig"`
	Version  string           `xml:"version,attr"`
	Provider autoconfProvider `xml:"emailProvider"`
}

type autoconfProvider struct {
	ID               string           `xml:"id,attr"`
	Domain           string           `xml:"domain"`
	DisplayName      string           `xml:"displayName"`
	DisplayShortName string           `xml:"displayShortName"`
	Incoming         []autoconfServer `xml:"incomingServer"`
	Outgoing         []autoconfServer `xml:"outgoingServer"`
}

type autoconfServer struct {
	Type           string `xml:"type,attr"`
	Hostname       string `xml:"hostname"`
	Port           string `xml:"port"`
	SocketType     string `xml:"socketType"`
	Authentication string `xml:"authentication"`
	Username       string `xml:"username"`
}

// handleAutoconfig lists every way in that is turned on, implicit TLS
// first. Port 443 carries IMAP and SMTP by ALPN (core asks for "imap" and
// "smtp" on any port but 993 and 465), for networks that let only HTTPS
// through.
func (w *web) handleAutoconfig(rw http.ResponseWriter, r *http.Request) {
	host := w.s.connectHost()
	server := func(typ, listener, socket string) []autoconfServer {
		port := w.listenPort(listener)
		if port == "" {
			return nil
		}
		return []autoconfServer{{
			Type: typ, Hostname: host, Port: port, SocketType: socket,
			Authentication: "password-cleartext", Username: "%EMAILADDRESS%",
		}}
	}
	domain := w.s.cfg.MailDomain()
	ac := autoconfig{Version: "1.1", Provider: autoconfProvider{
		ID: domain, Domain: domain,
		DisplayName: domain + " chatmail relay", DisplayShortName: domain,
	}}
	p := &ac.Provider
	p.Incoming = append(p.Incoming, server("imap", "imaps", "SSL")...)
	p.Incoming = append(p.Incoming, server("imap", "imap", "STARTTLS")...)
	p.Incoming = append(p.Incoming, server("imap", "https", "SSL")...)
	p.Outgoing = append(p.Outgoing, server("smtp", "submissions", "SSL")...)
	p.Outgoing = append(p.Outgoing, server("smtp", "submission", "STARTTLS")...)
	p.Outgoing = append(p.Outgoing, server("smtp", "https", "SSL")...)
	out, err := xml.MarshalIndent(ac, "", "  ")
	if err != nil {
		http.Error(rw, "internal error", http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", "text/xml; charset=utf-8")
	rw.Write([]byte(xml.Header))
	rw.Write(out)
	rw.Write([]byte("\n"))
}
