package install

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/miekg/dns"
)

// DefaultSelector is the DKIM selector until the config has a key for it.
const DefaultSelector = "dkim"

// DNSOptions describe the relay whose records are wanted.
type DNSOptions struct {
	Domain   string
	IPv4     string // "" when unknown: the record is shown as a placeholder
	IPv6     string // "" for none
	Selector string // DKIM selector
	DKIM     string // the DKIM TXT value ("v=DKIM1; k=rsa; p=..."), "" when unknown
	TTL      uint32
}

// A Record is one DNS record to publish.
type Record struct {
	// RR is the record, nil when a value is not known (no IP given): then
	// Placeholder describes what to put there.
	RR          dns.RR
	Name        string // fully qualified
	Type        uint16
	Placeholder string
	Required    bool
	Why         string
	// AnyValue: any record of the type at the name is right (an A record
	// when the IP was not given).
	AnyValue bool
}

// Records returns what a relay for o.Domain needs in DNS (required) and
// what makes it work better (recommended).
func Records(o DNSOptions) []Record {
	d := dns.Fqdn(strings.ToLower(o.Domain))
	if o.TTL == 0 {
		o.TTL = 3600
	}
	if o.Selector == "" {
		o.Selector = DefaultSelector
	}
	hdr := func(name string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: o.TTL}
	}
	txt := func(name, v string) dns.RR {
		return &dns.TXT{Hdr: hdr(name, dns.TypeTXT), Txt: splitTXT(v)}
	}
	var recs []Record
	for _, host := range []struct {
		name     string
		required bool
		why      string
	}{
		{d, true, "the relay's address"},
		{"mta-sts." + d, false, "MTA-STS policy host (its certificate)"},
		{"www." + d, false, "web page (its certificate)"},
	} {
		a := Record{Name: host.name, Type: dns.TypeA, Required: host.required, Why: host.why}
		if ip := net.ParseIP(o.IPv4).To4(); ip != nil {
			a.RR = &dns.A{Hdr: hdr(host.name, dns.TypeA), A: ip}
		} else {
			a.Placeholder, a.AnyValue = "<IPv4 address of this server>", true
		}
		recs = append(recs, a)
		if ip := net.ParseIP(o.IPv6); ip != nil && ip.To4() == nil {
			recs = append(recs, Record{
				RR:   &dns.AAAA{Hdr: hdr(host.name, dns.TypeAAAA), AAAA: ip},
				Name: host.name, Type: dns.TypeAAAA, Required: host.required, Why: host.why + " (IPv6)",
			})
		}
	}
	recs = append(recs,
		Record{RR: &dns.MX{Hdr: hdr(d, dns.TypeMX), Preference: 10, Mx: d},
			Required: true, Why: "mail for the domain goes to the relay"},
		// -all: the relay is the only machine that sends mail for the
		// domain, and receivers check DKIM first anyway (DMARC p=reject).
		Record{RR: txt(d, "v=spf1 a -all"),
			Required: true, Why: "SPF: only this host sends for the domain"},
		Record{RR: txt("_dmarc."+d, "v=DMARC1;p=reject;adkim=s;aspf=s"),
			Required: true, Why: "DMARC: reject mail not signed by the domain"},
	)
	dk := Record{Name: o.Selector + "._domainkey." + d, Type: dns.TypeTXT,
		Required: true, Why: "DKIM public key (selector " + o.Selector + ")"}
	if o.DKIM != "" {
		dk.RR = txt(dk.Name, o.DKIM)
	} else {
		dk.Placeholder = "<DKIM key: give --data, the relay's data directory>"
		dk.AnyValue = true
	}
	recs = append(recs, dk,
		Record{RR: txt("_mta-sts."+d, "v=STSv1; id="+STSPolicyID(o.Domain)),
			Why: "MTA-STS: senders must use verified TLS"},
	)
	for _, s := range []struct {
		service string
		port    uint16
	}{
		{"_submission._tcp.", 587}, {"_submissions._tcp.", 465},
		{"_imap._tcp.", 143}, {"_imaps._tcp.", 993},
	} {
		recs = append(recs, Record{
			RR:  &dns.SRV{Hdr: hdr(s.service+d, dns.TypeSRV), Priority: 0, Weight: 1, Port: s.port, Target: d},
			Why: "client autoconfiguration (RFC 6186)",
		})
	}
	recs = append(recs, Record{
		RR:  &dns.CAA{Hdr: hdr(d, dns.TypeCAA), Flag: 0, Tag: "issue", Value: "letsencrypt.org"},
		Why: "only Let's Encrypt may issue certificates for the domain",
	})
	for i := range recs {
		if recs[i].RR != nil {
			recs[i].Name = recs[i].RR.Header().Name
			recs[i].Type = recs[i].RR.Header().Rrtype
		}
	}
	return recs
}

// STSPolicyID is the id of the MTA-STS policy (RFC 8461 section 3.1). It
// depends only on what the policy says, so it stays the same across
// installs and changes only when the policy does.
func STSPolicyID(domain string) string {
	sum := sha256.Sum256([]byte("mode: enforce\nmx: " + strings.ToLower(strings.TrimSuffix(domain, "."))))
	return hex.EncodeToString(sum[:8])
}

// splitTXT cuts a TXT value into strings of at most 255 bytes
// (RFC 1035 section 3.3.14); a DKIM key needs two.
func splitTXT(s string) []string {
	var parts []string
	for len(s) > 255 {
		parts = append(parts, s[:255])
		s = s[255:]
	}
	return append(parts, s)
}

// value is the record's data as people read it: the text of a TXT
// record in one piece, the rest in zone-file form.
func (r Record) value() string {
	switch rr := r.RR.(type) {
	case nil:
		return r.Placeholder
	case *dns.TXT:
		return strings.Join(rr.Txt, "")
	default:
		return strings.TrimPrefix(rr.String(), rr.Header().String())
	}
}

// WriteText prints the records for a person to type into a DNS provider's
// form: name, type and value, required ones first.
func WriteText(w io.Writer, recs []Record) {
	for _, required := range []bool{true, false} {
		if required {
			fmt.Fprintln(w, "Required DNS records:")
		} else {
			fmt.Fprintln(w, "\nRecommended DNS records:")
		}
		for _, r := range recs {
			if r.Required != required {
				continue
			}
			fmt.Fprintf(w, "  %-34s %-5s %s\n", r.Name, dns.TypeToString[r.Type], r.value())
			fmt.Fprintf(w, "  %34s       (%s)\n", "", r.Why)
		}
	}
}

// WriteZone prints the records as a zone file fragment. Records whose
// value is unknown are written as comments.
func WriteZone(w io.Writer, recs []Record) {
	for _, required := range []bool{true, false} {
		if required {
			fmt.Fprintln(w, "; required")
		} else {
			fmt.Fprintln(w, "; recommended")
		}
		for _, r := range recs {
			if r.Required != required {
				continue
			}
			if r.RR == nil {
				fmt.Fprintf(w, "; %s\tIN\t%s\t%s\n", r.Name, dns.TypeToString[r.Type], r.Placeholder)
				continue
			}
			fmt.Fprintln(w, r.RR.String())
		}
	}
}
