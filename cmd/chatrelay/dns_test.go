package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/chatrelay/chatrelay/install"
	"github.com/chatrelay/chatrelay/relay/dkim"
)

// serveDNS answers from zone on a loopback UDP port.
func serveDNS(t *testing.T, zone ...string) string {
	t.Helper()
	var rrs []dns.RR
	for _, z := range zone {
		rr, err := dns.NewRR(z)
		if err != nil {
			t.Fatal(err)
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
			for _, rr := range rrs {
				h := rr.Header()
				if strings.EqualFold(h.Name, req.Question[0].Name) && h.Rrtype == req.Question[0].Qtype {
					m.Answer = append(m.Answer, rr)
				}
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

// dataDirWithKey makes a data directory holding a DKIM key, as install does.
func dataDirWithKey(t *testing.T) (dir, txt string) {
	t.Helper()
	dir = t.TempDir()
	k, err := dkim.LoadOrCreate(install.DKIMKeyPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	return dir, k.TXTRecord()
}

func TestDNSCheckReportsEachRecordAndFails(t *testing.T) {
	data, key := dataDirWithKey(t)
	var dkimTXT []string
	for s := key; s != ""; {
		n := min(len(s), 255)
		dkimTXT, s = append(dkimTXT, `"`+s[:n]+`"`), s[n:]
	}
	resolver := serveDNS(t,
		"example.org. 300 IN A 192.0.2.10",
		"mta-sts.example.org. 300 IN A 192.0.2.10",
		"www.example.org. 300 IN A 198.51.100.1",
		"example.org. 300 IN MX 10 mail.elsewhere.example.",
		`example.org. 300 IN TXT "v=spf1 a -all"`,
		`_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"`,
		"dkim._domainkey.example.org. 300 IN TXT "+strings.Join(dkimTXT, " "),
		"_imaps._tcp.example.org. 300 IN SRV 0 1 993 example.org.",
	)
	out, code := runMain(t, "dns", "--check", "--domain", "example.org", "--ip", "192.0.2.10",
		"--data", data, "--config", filepath.Join(t.TempDir(), "none.toml"), "--resolver", resolver)
	if code == 0 {
		t.Errorf("exit code 0 with the MX wrong:\n%s", out)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && (f[0] == "ok" || f[0] == "missing" || f[0] == "wrong" || f[0] == "error") {
			lines[f[2]+" "+f[1]] = f[0]
		}
	}
	for rec, want := range map[string]string{
		"A example.org.":                     "ok",
		"A mta-sts.example.org.":             "ok",
		"A www.example.org.":                 "wrong",
		"MX example.org.":                    "wrong",
		"TXT example.org.":                   "ok",
		"TXT _dmarc.example.org.":            "ok",
		"TXT dkim._domainkey.example.org.":   "ok",
		"TXT _mta-sts.example.org.":          "missing",
		"SRV _submission._tcp.example.org.":  "missing",
		"SRV _submissions._tcp.example.org.": "missing",
		"SRV _imap._tcp.example.org.":        "missing",
		"SRV _imaps._tcp.example.org.":       "ok",
		"CAA example.org.":                   "missing",
	} {
		if lines[rec] != want {
			t.Errorf("%s: %q, want %q", rec, lines[rec], want)
		}
	}
	for _, want := range []string{"found: 10 mail.elsewhere.example.", "1 required DNS record(s) missing or wrong"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestDNSCheckPassesWhenRequiredRecordsAreRight(t *testing.T) {
	data, key := dataDirWithKey(t)
	resolver := serveDNS(t,
		"example.org. 300 IN A 192.0.2.10",
		"example.org. 300 IN MX 10 example.org.",
		`example.org. 300 IN TXT "v=spf1 a -all"`,
		`_dmarc.example.org. 300 IN TXT "v=DMARC1;p=reject"`,
		`dkim._domainkey.example.org. 300 IN TXT "`+key[:200]+`" "`+key[200:]+`"`,
	)
	out, code := runMain(t, "dns", "--check", "--domain", "example.org", "--ip", "192.0.2.10",
		"--data", data, "--config", filepath.Join(t.TempDir(), "none.toml"), "--resolver", resolver)
	if code != 0 || !strings.Contains(out, "All required records are in place.") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

func TestDNSZoneParses(t *testing.T) {
	data, key := dataDirWithKey(t)
	out, err := run(t, dnsCmd(), "", "--zone", "--domain", "example.org", "--ip", "192.0.2.10", "--ipv6", "2001:db8::1", "--data", data, "--selector", "s2024")
	if err != nil {
		t.Fatal(err)
	}
	zp := dns.NewZoneParser(strings.NewReader(out), "", "")
	var dkimFound bool
	n := 0
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		n++
		if txt, ok := rr.(*dns.TXT); ok && rr.Header().Name == "s2024._domainkey.example.org." {
			dkimFound = strings.Join(txt.Txt, "") == key
		}
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("zone does not parse: %v\n%s", err, out)
	}
	if n != 16 || !dkimFound {
		t.Errorf("%d records, DKIM record found %v:\n%s", n, dkimFound, out)
	}
	if !strings.Contains(out, ";   3478/udp") || !strings.Contains(out, ";   49152-65535/udp") {
		t.Errorf("zone output does not name the TURN ports in comments:\n%s", out)
	}
}

func TestDNSTextReadsConfig(t *testing.T) {
	data, _ := dataDirWithKey(t)
	cfg := filepath.Join(t.TempDir(), "chatrelay.toml")
	os.WriteFile(cfg, []byte("domain = \"chat.example\"\ndata_dir = \""+data+"\"\n[turn]\nmin_port = 40000\nmax_port = 40100\n"), 0o600)
	out, err := run(t, dnsCmd(), "", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Required DNS records:", "dkim._domainkey.chat.example.", "v=DKIM1; k=rsa; p=", "_dmarc.chat.example.", "3478/udp", "3478/tcp", "40000-40100/udp", "25/tcp"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
