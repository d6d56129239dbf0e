package hosttest

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/smtp"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

// The relay in a guest has a self-signed certificate (IP mode, or a
// domain without a reachable CA): the checks look at the protocol, not
// at the chain.
func clientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
}

var dialer = &net.Dialer{Timeout: 10 * time.Second}

// tlsVersion dials addr with TLS and returns the negotiated version.
func tlsVersion(addr string) (uint16, error) {
	c, err := tls.DialWithDialer(dialer, "tcp", addr, clientTLS())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.ConnectionState().Version, nil
}

// imapSTARTTLS greets, upgrades with STARTTLS and returns the version.
func imapSTARTTLS(addr string) (uint16, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	greet, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(greet, "* OK") {
		return 0, fmt.Errorf("greeting %q: %v", greet, err)
	}
	if _, err := fmt.Fprintf(c, "a STARTTLS\r\n"); err != nil {
		return 0, err
	}
	for i := 0; i < 10; i++ {
		line, err := r.ReadString('\n')
		if err != nil {
			return 0, err
		}
		if strings.HasPrefix(line, "a ") {
			if !strings.HasPrefix(line, "a OK") {
				return 0, fmt.Errorf("STARTTLS: %q", line)
			}
			tc := tls.Client(c, clientTLS())
			if err := tc.Handshake(); err != nil {
				return 0, err
			}
			return tc.ConnectionState().Version, nil
		}
	}
	return 0, fmt.Errorf("no answer to STARTTLS")
}

// smtpSTARTTLS does EHLO and STARTTLS and returns the version.
func smtpSTARTTLS(addr string) (uint16, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	host, _, _ := net.SplitHostPort(addr)
	sc, err := smtp.NewClient(c, host)
	if err != nil {
		c.Close()
		return 0, err
	}
	defer sc.Close()
	if err := sc.StartTLS(clientTLS()); err != nil {
		return 0, err
	}
	st, _ := sc.TLSConnectionState()
	return st.Version, nil
}

// smtpGreeting reads the banner on addr.
func smtpGreeting(addr string) (string, error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return bufio.NewReader(c).ReadString('\n')
}

type account struct{ Email, Password, DCLogin_URL string }

// newAccount makes an account with POST https://A/new.
func newAccount(ip string) (account, error) {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS(), Proxy: nil}}
	resp, err := hc.Post("https://"+ip+"/new", "", nil)
	if err != nil {
		return account{}, err
	}
	defer resp.Body.Close()
	var a account
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || resp.StatusCode != 200 {
		return a, fmt.Errorf("POST /new: status %d, %v", resp.StatusCode, err)
	}
	return a, nil
}

// imapLogin logs in over IMAPS and selects INBOX.
func imapLogin(ip string, a account) error {
	c, err := imapclient.DialTLS(net.JoinHostPort(ip, "993"), &imapclient.Options{TLSConfig: clientTLS()})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Login(a.Email, a.Password).Wait(); err != nil {
		return fmt.Errorf("IMAP LOGIN %s: %w", a.Email, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		return fmt.Errorf("IMAP SELECT INBOX: %w", err)
	}
	return c.Logout().Wait()
}

// smtpLogin authenticates on submission over TLS (465).
func smtpLogin(ip string, a account) error {
	c, err := tls.DialWithDialer(dialer, "tcp", net.JoinHostPort(ip, "465"), clientTLS())
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	sc, err := smtp.NewClient(c, ip)
	if err != nil {
		c.Close()
		return err
	}
	defer sc.Close()
	if err := sc.Auth(smtp.PlainAuth("", a.Email, a.Password, ip)); err != nil {
		return fmt.Errorf("SMTP AUTH %s: %w", a.Email, err)
	}
	return sc.Quit()
}

// loginBoth is IMAP and SMTP login with one account.
func loginBoth(ip string, a account) error {
	if err := imapLogin(ip, a); err != nil {
		return err
	}
	return smtpLogin(ip, a)
}
