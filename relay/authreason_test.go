package relay_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// A login that breaks a public account rule says which one, in the IMAP NO
// and the SMTP 535, the same whether the account exists or not.
func TestLoginRefusalSaysWhichRule(t *testing.T) {
	r := relaytest.Start(t, nil)
	// An account from before the rules (or from `account add`): its name
	// is too short for a new one, yet it logs in with its password.
	if err := r.Store().CreateAccount("admin@localhost", "admins-own-password", mailbox.Chosen); err != nil {
		t.Fatal(err)
	}
	imapErr := func(user, pass string) string {
		t.Helper()
		err := dialIMAP(t, r, nil).Login(user, pass).Wait()
		var ie *imap.Error
		if !errors.As(err, &ie) || ie.Type != imap.StatusResponseTypeNo || ie.Code != imap.ResponseCodeAuthenticationFailed {
			t.Fatalf("IMAP LOGIN %s: %v, want NO [AUTHENTICATIONFAILED]", user, err)
		}
		return ie.Text
	}
	smtpErr := func(user, pass string) string {
		t.Helper()
		c, err := smtp.DialTLS(r.AddrOf("submissions"), relaytest.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Auth(sasl.NewPlainClient("", user, pass))
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 535 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 8}) {
			t.Fatalf("SMTP AUTH %s: %v, want 535 5.7.8", user, err)
		}
		return se.Message
	}
	for _, tc := range []struct{ user, pass, want string }{
		{"short@localhost", "long-enough-password", "must have 9 characters, not 5"},
		{"admin@localhost", "wrong-password-here", "must have 9 characters, not 5"}, // exists: same answer
		{"toolongname@localhost", "long-enough-password", "must have 9 characters, not 11"},
		{"bad+name1@localhost", "long-enough-password", "only a-z 0-9 . _ -"},
		{"goodname1@localhost", "short", "password of at least 9 characters, not 5"},
		{"goodname1@example.org", "long-enough-password", "only has addresses @localhost"},
		{"goodname1", "long-enough-password", "whole address, name@localhost"},
	} {
		for proto, got := range map[string]string{"imap": imapErr(tc.user, tc.pass), "smtp": smtpErr(tc.user, tc.pass)} {
			if !strings.Contains(got, tc.want) || !strings.HasPrefix(got, "Authentication failed") {
				t.Errorf("%s %s/%s: %q, want %q", proto, tc.user, tc.pass, got, tc.want)
			}
		}
	}
	// A name within the rules with a wrong password learns nothing more.
	if err := r.Store().CreateAccount("exists001@localhost", "the-right-password", mailbox.Chosen); err != nil {
		t.Fatal(err)
	}
	if got := imapErr("exists001@localhost", "wrong-password-1"); strings.Contains(got, ":") {
		t.Errorf("wrong password for an account within the rules: %q", got)
	}
	if got := smtpErr("exists001@localhost", "wrong-password-1"); strings.Contains(got, ":") {
		t.Errorf("wrong password for an account within the rules: %q", got)
	}
	// The old account still logs in; nothing stored changed.
	if err := dialIMAP(t, r, nil).Login("admin@localhost", "admins-own-password").Wait(); err != nil {
		t.Fatalf("existing short-named account: %v", err)
	}
}
