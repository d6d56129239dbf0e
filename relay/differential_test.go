package relay_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/dkim"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

var boundaryParam = regexp.MustCompile(`boundary="([^"]+)"`)

// rfc2231Boundary is the hardening issue's first example: Go's mime lets
// the RFC 2231 form win, Python's email and mailparse keep "A1" and read
// the body as plain text.
func rfc2231Boundary(msg []byte) []byte {
	return boundaryParam.ReplaceAll(msg, []byte(`boundary="A1"; boundary*=utf-8''$1`))
}

// preambleDelimiter is the second: a preamble line that starts with the
// delimiter and goes on with text, a delimiter to mailparse.
func preambleDelimiter(msg []byte) []byte {
	b := boundaryParam.FindSubmatch(msg)[1]
	i := bytes.Index(msg, []byte("\r\n\r\n")) + 4
	line := []byte("--" + string(b) + " Hello Bob, this is cleartext\r\n")
	return append(append(append([]byte{}, msg[:i]...), line...), msg[i:]...)
}

func secureJoinRequest(from, to string) []byte {
	return []byte("From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: Message from " + from + "\r\n" +
		"Date: " + time.Now().UTC().Format(time.RFC1123Z) + "\r\n" +
		"Message-ID: <sj" + strconv.FormatInt(time.Now().UnixNano(), 36) + "@test>\r\n" +
		"Secure-Join: vc-request\r\nSecure-Join-Invitenumber: Ae1Ib2Fc3Gd4\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"sjb\"\r\n\r\n" +
		"--sjb\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsecure-join: vc-request\r\n--sjb--\r\n")
}

func dsn(from, to, autoSubmitted string, pad int) []byte {
	return []byte("From: Mail Delivery System <" + from + ">\r\nTo: <" + to + ">\r\n" +
		"Subject: Undelivered Mail Returned to Sender\r\n" +
		"Date: " + time.Now().UTC().Format(time.RFC1123Z) + "\r\n" +
		"Message-ID: <dsn" + strconv.FormatInt(time.Now().UnixNano(), 36) + "@test>\r\n" +
		"Auto-Submitted: " + autoSubmitted + "\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"rep\"\r\n\r\n" +
		"--rep\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n" +
		strings.Repeat("Hello Bob, this is cleartext in a bounce.\r\n", pad) +
		"--rep\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; a.test\r\n\r\n" +
		"Final-Recipient: rfc822; x@a.test\r\nAction: failed\r\nStatus: 5.1.1\r\n--rep--\r\n")
}

// TestParserDifferentialOnEveryWayIn sends the hardening issue's two
// parser-differential examples, on an encrypted message and on a
// SecureJoin request, through the real listeners of all three ways in:
// submission (465), port 25 and /mxdeliv. Each is refused with 523 and
// nothing is stored; the unaltered messages pass every way.
func TestParserDifferentialOnEveryWayIn(t *testing.T) {
	a, b, _ := domainPeers(t, nil)
	carol, bob, alice := "carolcaro@b.test", "bobbobbob@b.test", "alicealic@a.test"
	login(t, b, carol).Close()
	login(t, b, bob).Close()
	key, err := dkim.LoadOrCreate(relay.DKIMKeyPath(a.Dir))
	if err != nil {
		t.Fatal(err)
	}
	signed := func(msg []byte) []byte {
		sig, err := dkim.Signature(key, "a.test", "dkim", bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte(sig), msg...)
	}
	ways := []struct {
		name string
		from string
		send func(msg []byte) int
	}{
		{"submission", carol, func(msg []byte) int {
			return smtpCode(submit(t, b, carol, password, carol, []string{bob}, msg))
		}},
		{"port 25", alice, func(msg []byte) int { return inboundSMTP(t, b, alice, bob, signed(msg)) }},
		{"mxdeliv", alice, func(msg []byte) int { return inboundHTTPS(t, b, alice, bob, signed(msg)) }},
	}
	stored := 0
	for _, w := range ways {
		t.Run(w.name, func(t *testing.T) {
			for _, c := range []struct {
				name string
				msg  []byte
				want int
			}{
				{"encrypted", testmsg.Encrypted(w.from, bob, 0), 0},
				{"encrypted, RFC 2231 boundary", rfc2231Boundary(testmsg.Encrypted(w.from, bob, 0)), 523},
				{"encrypted, delimiter-like preamble line", preambleDelimiter(testmsg.Encrypted(w.from, bob, 0)), 523},
				{"securejoin", secureJoinRequest(w.from, bob), 0},
				{"securejoin, RFC 2231 boundary", rfc2231Boundary(secureJoinRequest(w.from, bob)), 523},
				{"securejoin, delimiter-like preamble line", preambleDelimiter(secureJoinRequest(w.from, bob)), 523},
			} {
				if got := w.send(c.msg); got != c.want {
					t.Errorf("%s: got %d, want %d", c.name, got, c.want)
				} else if got == 0 {
					stored++
				}
			}
		})
	}
	if n := len(waitMessages(t, b, bob, stored, 10*time.Second)); n != stored {
		t.Fatalf("%d messages stored, want the %d accepted", n, stored)
	}
}

// TestCleartextCarriersBouncesOnEveryWayIn: over port 25 and /mxdeliv a
// DKIM-signed bounce from mailer-daemon of the signing domain passes only
// with Auto-Submitted other than "no" and up to 64 KiB; submission takes
// no bounce at all.
func TestCleartextCarriersBouncesOnEveryWayIn(t *testing.T) {
	a, b, _ := domainPeers(t, nil)
	bob := "bobbobbob@b.test"
	login(t, b, bob).Close()
	key, err := dkim.LoadOrCreate(relay.DKIMKeyPath(a.Dir))
	if err != nil {
		t.Fatal(err)
	}
	signed := func(msg []byte) []byte {
		sig, err := dkim.Signature(key, "a.test", "dkim", bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte(sig), msg...)
	}
	const daemon = "mailer-daemon@a.test"
	stored := 0
	for _, w := range []struct {
		name string
		send func(msg []byte) int
	}{
		{"port 25", func(msg []byte) int { return inboundSMTP(t, b, "", bob, signed(msg)) }},
		{"mxdeliv", func(msg []byte) int { return inboundHTTPS(t, b, "", bob, signed(msg)) }},
	} {
		t.Run(w.name, func(t *testing.T) {
			for _, c := range []struct {
				name string
				msg  []byte
				want int
			}{
				{"bounce", dsn(daemon, bob, "auto-replied", 0), 0},
				{"Auto-Submitted: no", dsn(daemon, bob, "no", 0), 523},
				{"over 64 KiB", dsn(daemon, bob, "auto-replied", (64<<10)/43), 523},
				{"from someone else at the domain", dsn("postmaster@a.test", bob, "auto-replied", 0), 523},
				{"mailer-daemon of a domain that did not sign", dsn("mailer-daemon@other.test", bob, "auto-replied", 0), 554},
				{"mailer-daemon of another address literal", dsn("mailer-daemon@[127.0.0.9]", bob, "auto-replied", 0), 554},
			} {
				if got := w.send(c.msg); got != c.want {
					t.Errorf("%s: got %d, want %d", c.name, got, c.want)
				} else if got == 0 {
					stored++
				}
			}
		})
	}
	// A logged-in user cannot send one.
	carol := "carolcaro@b.test"
	login(t, b, carol).Close()
	if got := smtpCode(submit(t, b, carol, password, carol, []string{bob}, dsn(carol, bob, "auto-replied", 0))); got != 523 {
		t.Errorf("submission of a report: got %d, want 523", got)
	}
	if n := len(waitMessages(t, b, bob, stored, 10*time.Second)); n != stored {
		t.Fatalf("%d messages stored, want the %d accepted", n, stored)
	}
}

// inboundSMTP delivers msg to r's port 25 and returns the reply code, 0
// for success.
func inboundSMTP(t *testing.T, r *relaytest.Relay, from, to string, msg []byte) int {
	t.Helper()
	c, err := smtp.DialStartTLS(r.AddrOf("smtp"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return smtpCode(c.SendMail(from, []string{to}, bytes.NewReader(msg)))
}

// inboundHTTPS delivers msg to r's /mxdeliv and returns the SMTP reply
// code in the answer, 0 for success.
func inboundHTTPS(t *testing.T, r *relaytest.Relay, from, to string, msg []byte) int {
	t.Helper()
	req, err := http.NewRequest("POST", "https://"+r.AddrOf("https")+"/mxdeliv", bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if from != "" {
		req.Header.Set("X-MAIL-FROM", from)
	}
	req.Header.Add("X-MAIL-TO", to)
	resp, err := httpsClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	code, err := strconv.Atoi(strings.SplitN(string(body), " ", 2)[0])
	if err != nil {
		t.Fatal(fmt.Errorf("mxdeliv answer %q", body))
	}
	if code == 250 {
		return 0
	}
	return code
}
