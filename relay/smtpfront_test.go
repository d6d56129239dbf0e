package relay_test

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// smtpWire is a raw SMTP client: what it sends is exactly what the test
// writes, pipelined or not.
type smtpWire struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialSMTPWire(t *testing.T, addr string, tlsConf *tls.Config) *smtpWire {
	t.Helper()
	var c net.Conn
	var err error
	if tlsConf != nil {
		c, err = tls.Dial("tcp", addr, tlsConf)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	w := &smtpWire{t: t, conn: c, r: bufio.NewReader(c)}
	if first, _ := w.reply(); !strings.HasPrefix(first, "220 ") {
		t.Fatalf("greeting %q", first)
	}
	return w
}

func (w *smtpWire) send(s string) {
	w.t.Helper()
	w.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := w.conn.Write([]byte(s)); err != nil {
		w.t.Fatal(err)
	}
}

// reply reads one whole reply: its last line and all its lines.
func (w *smtpWire) reply() (last string, lines []string) {
	w.t.Helper()
	w.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for range 100 {
		line, err := w.r.ReadString('\n')
		if err != nil {
			w.t.Fatalf("read reply (after %q): %v", lines, err)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return line, lines
		}
	}
	w.t.Fatalf("reply of more than 100 lines: %q", lines)
	return "", nil
}

func (w *smtpWire) expect(prefix string) []string {
	w.t.Helper()
	last, lines := w.reply()
	if !strings.HasPrefix(last, prefix) {
		w.t.Fatalf("reply %q, want %q", lines, prefix)
	}
	return lines
}

// starttls says STARTTLS and makes the handshake; the session goes on over
// TLS with no new greeting (RFC 3207).
func (w *smtpWire) starttls() {
	w.t.Helper()
	w.send("STARTTLS\r\n")
	w.expect("220 ")
	tc := tls.Client(w.conn, relaytest.ClientTLS())
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		w.t.Fatalf("handshake after STARTTLS: %v", err)
	}
	w.conn, w.r = tc, bufio.NewReader(tc)
}

// VRFY answers "252 2.0.0" on every SMTP port, before and after STARTTLS,
// as the reference relay's Postfix does (SPEC section 5), and in its turn
// when commands are pipelined.
func TestVRFYAnswers252(t *testing.T) {
	r := relaytest.Start(t, nil)
	smtpALPN := relaytest.ClientTLS()
	smtpALPN.NextProtos = []string{"smtp"}
	for _, tc := range []struct {
		name, port string
		tls        *tls.Config
		starttls   bool
	}{
		{"25 before STARTTLS", "smtp", nil, false},
		{"25 after STARTTLS", "smtp", nil, true},
		{"587 before STARTTLS", "submission", nil, false},
		{"587 after STARTTLS", "submission", nil, true},
		{"465", "submissions", relaytest.ClientTLS(), false},
		{"443 smtp by ALPN", "https", smtpALPN, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := dialSMTPWire(t, r.AddrOf(tc.port), tc.tls)
			if tc.starttls {
				w.send("EHLO test.example\r\n")
				w.expect("250 ")
				w.starttls()
			}
			// Pipelined, with go-smtp's own answers in between: each
			// reply comes in the order of the commands.
			w.send("EHLO test.example\r\nVRFY someone@example.org\r\nNOOP\r\nVRFY\r\nvrfy x\r\nQUIT\r\n")
			w.expect("250 ")
			for _, want := range []string{"252 2.0.0 ", "250 2.0.0 ", "252 2.0.0 ", "252 2.0.0 ", "221 "} {
				w.expect(want)
			}
		})
	}
}

// After STARTTLS the session starts over on TLS: EHLO no longer offers
// STARTTLS, submission offers AUTH (which it refuses in the clear), and a
// client that pipelines cleartext after STARTTLS is cut off before any
// of it can pass as sent over TLS.
func TestSTARTTLSStartsOver(t *testing.T) {
	r := relaytest.Start(t, nil)
	w := dialSMTPWire(t, r.AddrOf("submission"), nil)
	w.send("EHLO test.example\r\n")
	ehlo := strings.Join(w.expect("250 "), "\n")
	if !strings.Contains(ehlo, "STARTTLS") || strings.Contains(ehlo, "AUTH") {
		t.Fatalf("EHLO before TLS:\n%s\nwant STARTTLS and no AUTH", ehlo)
	}
	w.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00abcdefghi@localhost\x00password123")) + "\r\n")
	if last, _ := w.reply(); strings.HasPrefix(last, "2") {
		t.Fatalf("AUTH before STARTTLS: %q", last)
	}
	w.starttls()
	w.send("EHLO test.example\r\n")
	ehlo = strings.Join(w.expect("250 "), "\n")
	if strings.Contains(ehlo, "STARTTLS") || !strings.Contains(ehlo, "AUTH PLAIN") {
		t.Fatalf("EHLO after STARTTLS:\n%s\nwant AUTH PLAIN and no STARTTLS", ehlo)
	}
	w.send("STARTTLS\r\n")
	if last, _ := w.reply(); !strings.HasPrefix(last, "5") {
		t.Fatalf("STARTTLS twice: %q, want a 5xx", last)
	}
	// A new account, made at its first login over TLS.
	w.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00vrfyuser1@localhost\x00password123")) + "\r\n")
	w.expect("235 ")

	// Cleartext pipelined behind STARTTLS: no reply, the connection ends.
	p := dialSMTPWire(t, r.AddrOf("smtp"), nil)
	p.send("EHLO test.example\r\n")
	p.expect("250 ")
	p.send("STARTTLS\r\nMAIL FROM:<x@example.org>\r\n")
	p.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if line, err := p.r.ReadString('\n'); err == nil {
		t.Fatalf("pipelined cleartext after STARTTLS: got %q, want the connection closed", line)
	}
}

// Lines of a message body, a BDAT chunk and an AUTH continuation are not
// commands: a "VRFY" there gets no answer of its own.
func TestVRFYInsideDataIsData(t *testing.T) {
	r := relaytest.Start(t, nil)
	w := dialSMTPWire(t, r.AddrOf("submissions"), relaytest.ClientTLS())
	w.send("EHLO test.example\r\n")
	w.expect("250 ")
	w.send("AUTH PLAIN\r\n")
	w.expect("334")
	w.send(base64.StdEncoding.EncodeToString([]byte("\x00vrfyuser2@localhost\x00password123")) + "\r\n")
	w.expect("235 ")
	from := "vrfyuser2@localhost"
	w.send("MAIL FROM:<" + from + ">\r\nRCPT TO:<" + from + ">\r\nDATA\r\n")
	w.expect("250 ")
	w.expect("250 ")
	w.expect("354 ")
	// Cleartext, so refused (523) after the body: one reply, no 252.
	w.send("From: <" + from + ">\r\nSubject: x\r\n\r\nVRFY someone\r\n.VRFY dot-stuffed\r\n.\r\nVRFY after-body\r\n")
	w.expect("523 ")
	w.expect("252 2.0.0 ") // a command again, answered in front of go-smtp
	chunk := "From: <" + from + ">\r\n\r\nVRFY x\r\n"
	w.send("MAIL FROM:<" + from + ">\r\nRCPT TO:<" + from + ">\r\n")
	w.expect("250 ")
	w.expect("250 ")
	w.send("BDAT " + itoa(len(chunk)) + " LAST\r\n" + chunk + "VRFY after-chunk\r\n")
	w.expect("523 ")
	w.expect("252 2.0.0 ")
}
