package install

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Status is what a check found for one record.
type Status string

const (
	StatusOK      Status = "ok"
	StatusMissing Status = "missing"
	StatusWrong   Status = "wrong"
	StatusError   Status = "error" // the lookup itself failed
)

// A CheckResult is one checked record.
type CheckResult struct {
	Record
	Status Status
	// Found is what DNS has at the name, in zone-file data form.
	Found []string
	Err   error
}

// Failed reports whether the result counts against the relay: a required
// record that is not right.
func (r CheckResult) Failed() bool { return r.Required && r.Status != StatusOK }

// SystemResolver returns the first name server in /etc/resolv.conf.
func SystemResolver() (string, error) {
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return "", fmt.Errorf("read /etc/resolv.conf: %w (give --resolver host:port)", err)
	}
	if len(cc.Servers) == 0 {
		return "", fmt.Errorf("no name server in /etc/resolv.conf (give --resolver host:port)")
	}
	return net.JoinHostPort(cc.Servers[0], cc.Port), nil
}

// Check looks every record up at the resolver and compares.
func Check(ctx context.Context, resolver string, recs []Record) []CheckResult {
	c := &dns.Client{Timeout: 5 * time.Second}
	results := make([]CheckResult, len(recs))
	for i, r := range recs {
		results[i] = CheckResult{Record: r}
		found, err := lookup(ctx, c, resolver, r.Name, r.Type)
		if err != nil {
			results[i].Status, results[i].Err = StatusError, err
			continue
		}
		for _, f := range found {
			results[i].Found = append(results[i].Found, rdata(f))
		}
		results[i].Status = compare(r, found)
	}
	return results
}

// lookup asks resolver for name/type, over TCP when the UDP answer is
// truncated. NXDOMAIN and an empty answer are both no records.
func lookup(ctx context.Context, c *dns.Client, resolver, name string, t uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), t)
	m.SetEdns0(4096, false)
	in, _, err := c.ExchangeContext(ctx, m, resolver)
	if err == nil && in.Truncated {
		tc := *c
		tc.Net = "tcp"
		in, _, err = tc.ExchangeContext(ctx, m, resolver)
	}
	if err != nil {
		return nil, err
	}
	switch in.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	default:
		return nil, fmt.Errorf("%s %s: %s", name, dns.TypeToString[t], dns.RcodeToString[in.Rcode])
	}
	var rrs []dns.RR
	for _, rr := range in.Answer {
		if rr.Header().Rrtype == t {
			rrs = append(rrs, rr)
		}
	}
	return rrs, nil
}

func rdata(rr dns.RR) string {
	if t, ok := rr.(*dns.TXT); ok {
		return strings.Join(t.Txt, "")
	}
	return strings.TrimPrefix(rr.String(), rr.Header().String())
}

// compare decides ok, missing or wrong. Only the part of a record that
// matters is compared: an A record holds the IP, an SRV record the port
// and target; a TXT record is compared among the TXT records of its kind
// (v=spf1, v=DMARC1, ...), so unrelated TXT records at the name do not
// count.
func compare(want Record, found []dns.RR) Status {
	if want.RR == nil {
		if want.AnyValue && len(found) > 0 {
			return StatusOK
		}
		if len(found) == 0 {
			return StatusMissing
		}
		return StatusWrong
	}
	if wt, ok := want.RR.(*dns.TXT); ok {
		return compareTXT(strings.Join(wt.Txt, ""), found)
	}
	if len(found) == 0 {
		return StatusMissing
	}
	for _, f := range found {
		if sameRecord(want.RR, f) {
			return StatusOK
		}
	}
	return StatusWrong
}

func sameRecord(want, got dns.RR) bool {
	switch w := want.(type) {
	case *dns.A:
		g, ok := got.(*dns.A)
		return ok && w.A.Equal(g.A)
	case *dns.AAAA:
		g, ok := got.(*dns.AAAA)
		return ok && w.AAAA.Equal(g.AAAA)
	case *dns.MX:
		g, ok := got.(*dns.MX)
		return ok && strings.EqualFold(w.Mx, g.Mx)
	case *dns.SRV:
		g, ok := got.(*dns.SRV)
		return ok && w.Port == g.Port && strings.EqualFold(w.Target, g.Target)
	case *dns.CAA:
		g, ok := got.(*dns.CAA)
		if !ok || g.Tag != w.Tag {
			return false
		}
		// The issuer domain may be followed by parameters (RFC 8659 4.2).
		issuer, _, _ := strings.Cut(g.Value, ";")
		return strings.EqualFold(strings.TrimSpace(issuer), w.Value)
	}
	return dns.IsDuplicate(want, got)
}

// compareTXT finds the TXT records of the same kind as want (same v= tag)
// and compares their tags.
func compareTXT(want string, found []dns.RR) Status {
	wtags := txtTags(want)
	kind := wtags["v"]
	var same []map[string]string
	for _, f := range found {
		t, ok := f.(*dns.TXT)
		if !ok {
			continue
		}
		text := strings.Join(t.Txt, "")
		tags := txtTags(text)
		if strings.EqualFold(tags["v"], kind) {
			same = append(same, tags)
		}
	}
	if len(same) == 0 {
		return StatusMissing
	}
	keys := significantTags(kind, wtags)
	for _, tags := range same {
		if tagsMatch(wtags, tags, keys) {
			return StatusOK
		}
	}
	return StatusWrong
}

// significantTags are the tags that must match for a record to be right.
func significantTags(kind string, wtags map[string]string) []string {
	switch strings.ToLower(kind) {
	case "dkim1":
		return []string{"p"} // the key; k= defaults to rsa
	case "dmarc1":
		return []string{"p"} // the policy; alignment is a recommendation
	case "stsv1":
		return nil // any id: it only has to change when the policy does
	case "spf1":
		return []string{"spf"}
	}
	keys := make([]string, 0, len(wtags))
	for k := range wtags {
		keys = append(keys, k)
	}
	return keys
}

func tagsMatch(want, got map[string]string, keys []string) bool {
	for _, k := range keys {
		if !strings.EqualFold(want[k], got[k]) {
			return false
		}
	}
	return true
}

// txtTags splits "v=DKIM1; k=rsa; p=..." into tags (RFC 6376 3.2). An SPF
// record ("v=spf1 a -all") has no ';' tags: its mechanisms, normalized,
// are kept under "spf".
func txtTags(s string) map[string]string {
	tags := map[string]string{}
	if f := strings.Fields(s); len(f) > 0 && strings.EqualFold(f[0], "v=spf1") {
		tags["v"] = "spf1"
		mech := slices.Clone(f[1:])
		for i := range mech {
			mech[i] = strings.ToLower(mech[i])
		}
		tags["spf"] = strings.Join(mech, " ")
		return tags
	}
	for _, part := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		// Whitespace may appear anywhere in a tag value (a DKIM key split
		// by a zone editor): drop it all.
		tags[strings.ToLower(strings.TrimSpace(k))] = strings.Join(strings.Fields(v), "")
	}
	return tags
}

// WriteResults prints one line per record: status, name, type, and for a
// record that is not right what was expected and what was found.
func WriteResults(w io.Writer, results []CheckResult) {
	for _, r := range results {
		level := "recommended"
		if r.Required {
			level = "required"
		}
		fmt.Fprintf(w, "%-7s %-34s %-5s (%s)\n", r.Status, r.Name, dns.TypeToString[r.Type], level)
		switch r.Status {
		case StatusOK:
		case StatusError:
			fmt.Fprintf(w, "        lookup failed: %v\n", r.Err)
		default:
			fmt.Fprintf(w, "        want:  %s\n", r.value())
			if len(r.Found) == 0 {
				fmt.Fprintf(w, "        found: nothing\n")
			}
			for _, f := range r.Found {
				fmt.Fprintf(w, "        found: %s\n", f)
			}
		}
	}
}
