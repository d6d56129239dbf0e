package e2e

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSubmissionRejectsCleartext submits a plain, unencrypted mail the way
// an ordinary mail client would. Core 2.x will not send one, so this speaks
// SMTP itself. A chatmail relay must refuse it with 523.
func TestSubmissionRejectsCleartext(t *testing.T) {
	r := startRelay(t)
	from := "sender001@localhost"
	to := "rcpt00002@localhost"
	const password = "cleartext-test-password"
	// Accounts are created at their first login.
	for _, addr := range []string{from, to} {
		if err := imapLogin(r, addr, password); err != nil {
			t.Fatalf("IMAP login %s: %v", addr, err)
		}
	}

	c, err := dialSubmissions(r)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(smtp.PlainAuth("", from, password, r.Host)); err != nil {
		t.Fatalf("AUTH PLAIN %s: %v", from, err)
	}
	msg := "From: <" + from + ">\r\n" +
		"To: <" + to + ">\r\n" +
		"Subject: plain hello\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\n" +
		"Message-ID: <cleartext." + strconv.FormatInt(time.Now().UnixNano(), 36) + "@localhost>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"\r\n" +
		"This is not encrypted.\r\n"

	err = sendMail(c, from, to, msg)
	var perr *textproto.Error
	switch {
	case err == nil:
		t.Fatal("relay accepted an unencrypted message; want 523")
	case !errors.As(err, &perr):
		t.Fatalf("send: %v; want an SMTP 523 reply", err)
	case perr.Code != 523:
		t.Fatalf("send: relay replied %d %s; want 523", perr.Code, perr.Msg)
	}
	t.Logf("relay refused cleartext: %d %s", perr.Code, perr.Msg)
}

// sendMail runs MAIL, RCPT and DATA, returning the first refusal.
func sendMail(c *smtp.Client, from, to, msg string) error {
	if err := c.Mail(from); err != nil {
		return fmt.Errorf("MAIL FROM: %w", err)
	}
	if err := c.Rcpt(to); err != nil {
		return fmt.Errorf("RCPT TO: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return nil
}

func dialSubmissions(r *relay) (*smtp.Client, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(r.Host, strconv.Itoa(r.Submissions)),
		&tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, fmt.Errorf("dial submissions: %w", err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c, err := smtp.NewClient(conn, r.Host)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("submissions greeting: %w", err)
	}
	if err := c.Hello("e2e.localhost"); err != nil {
		c.Close()
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	return c, nil
}

// imapLogin logs in once over IMAPS, which creates the account.
func imapLogin(r *relay, addr, password string) error {
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(r.Host, strconv.Itoa(r.IMAPS)),
		&tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("greeting %q: %v", line, err)
	}
	if _, err := fmt.Fprintf(conn, "a1 LOGIN %s %s\r\n", imapQuote(addr), imapQuote(password)); err != nil {
		return err
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, "a1 ") {
			if !strings.HasPrefix(line, "a1 OK") {
				return fmt.Errorf("LOGIN: %s", strings.TrimSpace(line))
			}
			fmt.Fprintf(conn, "a2 LOGOUT\r\n")
			return nil
		}
	}
}

// imapQuote makes an IMAP quoted string (RFC 9051 section 4.3).
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
