package install

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/chatrelay/chatrelay/relay/dkim"
)

// serveDNS answers from zone (records in zone-file form) on a loopback
// UDP port and returns its address.
func serveDNS(t *testing.T, zone []string) string {
	t.Helper()
	var rrs []dns.RR
	for _, z := range zone {
		rr, err := dns.NewRR(z)
		if err != nil {
			t.Fatalf("%q: %v", z, err)
		}
		rrs = append(rrs, rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(req)
			q := req.Question[0]
			known := false
			for _, rr := range rrs {
				if strings.EqualFold(rr.Header().Name, q.Name) {
					known = true
					if rr.Header().Rrtype == q.Qtype {
						m.Answer = append(m.Answer, rr)
					}
				}
			}
			if !known {
				m.Rcode = dns.RcodeNameError
			}
			w.WriteMsg(m)
		})}
	go srv.ActivateAndServe()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("DNS server did not start")
	}
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func testDKIM(t *testing.T) string {
	t.Helper()
	k, err := dkim.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k.TXTRecord()
}

// quoteTXT writes a TXT value as zone-file strings of at most 255 bytes.
func quoteTXT(s string) string {
	parts := splitTXT(s)
	for i, p := range parts {
		parts[i] = `"` + p + `"`
	}
	return strings.Join(parts, " ")
}

func TestCheckSaysOKMissingWrong(t *testing.T) {
	key := testDKIM(t)
	resolver := serveDNS(t, []string{
		"example.org. 300 IN A 192.0.2.10",
		"www.example.org. 300 IN A 192.0.2.99",
		"example.org. 300 IN MX 10 EXAMPLE.org.",
		`example.org. 300 IN TXT "v=spf1 mx ~all"`,
		`example.org. 300 IN TXT "google-site-verification=abc"`,
		"dkim._domainkey.example.org. 300 IN TXT " + quoteTXT(key),
		`_mta-sts.example.org. 300 IN TXT "v=STSv1; id=20240101"`,
		"_submission._tcp.example.org. 300 IN SRV 0 1 587 example.org.",
		"_submissions._tcp.example.org. 300 IN SRV 0 1 4650 example.org.",
		"_imaps._tcp.example.org. 300 IN SRV 5 0 993 example.org.",
		`example.org. 300 IN CAA 0 issue "letsencrypt.org; accounturi=https://acme-v02.api.letsencrypt.org/acme/acct/1"`,
	})
	recs := Records(DNSOptions{Domain: "example.org", IPv4: "192.0.2.10", DKIM: key})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	results := Check(ctx, resolver, recs)

	want := map[string]Status{
		"A example.org.":                     StatusOK,
		"A mta-sts.example.org.":             StatusMissing,
		"A www.example.org.":                 StatusWrong,
		"MX example.org.":                    StatusOK,
		"TXT example.org.":                   StatusWrong,
		"TXT _dmarc.example.org.":            StatusMissing,
		"TXT dkim._domainkey.example.org.":   StatusOK,
		"TXT _mta-sts.example.org.":          StatusOK,
		"SRV _submission._tcp.example.org.":  StatusOK,
		"SRV _submissions._tcp.example.org.": StatusWrong,
		"SRV _imap._tcp.example.org.":        StatusMissing,
		"SRV _imaps._tcp.example.org.":       StatusOK,
		"CAA example.org.":                   StatusOK,
	}
	failed := 0
	for _, r := range results {
		key := dns.TypeToString[r.Type] + " " + r.Name
		if r.Status != want[key] {
			t.Errorf("%s: %s (found %q, err %v), want %s", key, r.Status, r.Found, r.Err, want[key])
		}
		delete(want, key)
		if r.Failed() {
			failed++
		}
	}
	if len(want) != 0 {
		t.Errorf("records not checked: %v", want)
	}
	if failed != 2 { // SPF wrong, DMARC missing
		t.Errorf("%d required records failed, want 2", failed)
	}

	var b strings.Builder
	WriteResults(&b, results)
	out := b.String()
	for _, line := range []string{
		"found: v=spf1 mx ~all",
		"want:  v=spf1 a -all",
		"found: 192.0.2.99",
		"found: nothing",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("output lacks %q:\n%s", line, out)
		}
	}
}

func TestCheckWrongDKIMKey(t *testing.T) {
	resolver := serveDNS(t, []string{
		"dkim._domainkey.example.org. 300 IN TXT " + quoteTXT(testDKIM(t)),
	})
	recs := Records(DNSOptions{Domain: "example.org", DKIM: testDKIM(t)})
	for _, r := range Check(context.Background(), resolver, recs) {
		if r.Type == dns.TypeTXT && strings.HasPrefix(r.Name, "dkim.") && r.Status != StatusWrong {
			t.Errorf("another key: %s", r.Status)
		}
	}
}

func TestCheckLookupFailure(t *testing.T) {
	// A port nothing answers on: every lookup fails, and says so.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	recs := Records(DNSOptions{Domain: "example.org"})[:1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := Check(ctx, addr, recs)
	if res[0].Status != StatusError || !res[0].Failed() {
		t.Errorf("got %s, want error", res[0].Status)
	}
}

func TestZoneParses(t *testing.T) {
	recs := Records(DNSOptions{Domain: "example.org", IPv4: "192.0.2.10", IPv6: "2001:db8::10", DKIM: testDKIM(t)})
	var b strings.Builder
	WriteZone(&b, recs)
	zp := dns.NewZoneParser(strings.NewReader(b.String()), "", "")
	var parsed []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		parsed = append(parsed, rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("zone does not parse: %v\n%s", err, b.String())
	}
	if len(parsed) != len(recs) {
		t.Fatalf("parsed %d records, want %d:\n%s", len(parsed), len(recs), b.String())
	}
	// Same records, required first.
	for _, r := range recs {
		found := false
		for _, p := range parsed {
			if dns.IsDuplicate(r.RR, p) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s not in the parsed zone", r.RR)
		}
	}
	if len(recs) != 16 { // 3 A, 3 AAAA, MX, SPF, DMARC, DKIM, MTA-STS, 4 SRV, CAA
		t.Errorf("%d records", len(recs))
	}
}

func TestZoneWithoutIPStillParses(t *testing.T) {
	var b strings.Builder
	WriteZone(&b, Records(DNSOptions{Domain: "example.org"}))
	zp := dns.NewZoneParser(strings.NewReader(b.String()), "", "")
	n := 0
	for _, ok := zp.Next(); ok; _, ok = zp.Next() {
		n++
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if !strings.Contains(b.String(), "; example.org.\tIN\tA\t<IPv4 address of this server>") {
		t.Errorf("placeholder missing:\n%s", b.String())
	}
}

func TestRecordsContent(t *testing.T) {
	recs := Records(DNSOptions{Domain: "Example.org.", IPv4: "192.0.2.10", Selector: "s1", DKIM: "v=DKIM1; k=rsa; p=AAAA"})
	var b strings.Builder
	WriteText(&b, recs)
	out := b.String()
	for _, want := range []string{
		"example.org.                       MX    10 example.org.",
		"_dmarc.example.org.                TXT   v=DMARC1;p=reject;adkim=s;aspf=s",
		"s1._domainkey.example.org.         TXT   v=DKIM1; k=rsa; p=AAAA",
		"_mta-sts.example.org.              TXT   v=STSv1; id=" + STSPolicyID("example.org"),
		"_imaps._tcp.example.org.           SRV   0 1 993 example.org.",
		`example.org.                       CAA   0 issue "letsencrypt.org"`,
		"www.example.org.                   A     192.0.2.10",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	if STSPolicyID("example.org") != STSPolicyID("EXAMPLE.org.") {
		t.Error("MTA-STS id depends on spelling")
	}
}

func TestSplitTXT(t *testing.T) {
	s := strings.Repeat("a", 600)
	parts := splitTXT(s)
	if len(parts) != 3 || len(parts[0]) != 255 || strings.Join(parts, "") != s {
		t.Errorf("split into %d parts", len(parts))
	}
}
