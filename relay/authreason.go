package relay

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/chatrelay/chatrelay/policy"
)

// ruleRefusal is a failed login whose address or password breaks the
// public rules for new accounts (SPEC section 4). Its ClientText goes to
// the client in the IMAP NO and the SMTP 535, so the user learns what to
// change instead of a bare "authentication failed".
//
// It tells nothing about which accounts exist: it is decided from the
// address and password alone, for every failed login on a relay with open
// registration, whether the account exists or not (an existing account
// whose name predates the rules still logs in with its right password).
type ruleRefusal struct {
	err  error
	text string
}

func (e *ruleRefusal) Error() string      { return e.err.Error() }
func (e *ruleRefusal) Unwrap() error      { return e.err }
func (e *ruleRefusal) ClientText() string { return e.text }

// ruleReason explains why user and pass could not be a new account on
// this relay, or returns nil when they could be.
func (s *Server) ruleReason(user, pass string) error {
	if s.cfg.Registration != "open" {
		return nil // no account is made at login: the rules do not apply
	}
	addr := strings.ToLower(strings.TrimSpace(user))
	err := s.rules.CheckNewAccount(addr, pass, s.cfg.MailDomain())
	if err == nil {
		return nil
	}
	c := &s.cfg
	local, _, _ := policy.SplitAddress(addr)
	var text string
	switch {
	case errors.Is(err, policy.ErrBadAddress):
		text = fmt.Sprintf("log in with a whole address, name@%s", c.MailDomain())
	case errors.Is(err, policy.ErrWrongDomain):
		text = fmt.Sprintf("this relay only has addresses @%s", c.MailDomain())
	case errors.Is(err, policy.ErrBadName):
		text = "a new address may use only a-z 0-9 . _ - before the @"
	case errors.Is(err, policy.ErrNameLength):
		want := fmt.Sprintf("%d", c.MinNameLen)
		if c.MaxNameLen != c.MinNameLen {
			want = fmt.Sprintf("%d to %d", c.MinNameLen, c.MaxNameLen)
		}
		text = fmt.Sprintf("the name before the @ must have %s characters, not %d", want, len(local))
	case errors.Is(err, policy.ErrPasswordTooShort):
		text = fmt.Sprintf("a new address needs a password of at least %d characters, not %d", c.MinPasswordLen, utf8.RuneCountInString(pass))
	default:
		return nil
	}
	return &ruleRefusal{err: err, text: "Authentication failed: " + text}
}
