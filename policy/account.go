package policy

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// The ways a new account can fail AccountRules; CheckNewAccount wraps them
// with the details, so test them with errors.Is.
var (
	ErrBadAddress       = errors.New("not an address")
	ErrBadName          = errors.New("name has characters other than a-z 0-9 . _ -")
	ErrNameLength       = errors.New("name length out of range")
	ErrPasswordTooShort = errors.New("password too short")
	ErrWrongDomain      = errors.New("domain is not ours")
)

// AccountRules are the conditions for creating an account at first login
// (SPEC section 4).
type AccountRules struct {
	// MinNameLen and MaxNameLen bound the length of the local part.
	MinNameLen, MaxNameLen int
	// MinPasswordLen is the shortest password accepted, in characters.
	MinPasswordLen int
}

// DefaultAccountRules returns the rules of the reference chatmail relays:
// names of exactly 9 characters, as Delta Chat invents them for
// "dcaccount:" QR codes, and passwords of at least 9.
func DefaultAccountRules() AccountRules {
	return AccountRules{MinNameLen: 9, MaxNameLen: 9, MinPasswordLen: 9}
}

// CheckNewAccount reports whether an account addr with password may be
// created on a relay for domain, and if not which rule failed. domain may
// be an IP literal such as "[127.0.0.2]"; it is compared without regard to
// case.
func (r AccountRules) CheckNewAccount(addr, password, domain string) error {
	local, dom, err := SplitAddress(addr)
	if err != nil {
		return err
	}
	if !strings.EqualFold(dom, domain) {
		return fmt.Errorf("%w: %q", ErrWrongDomain, dom)
	}
	// ^[a-z0-9._-]+$ without the regexp package.
	for i := 0; i < len(local); i++ {
		c := local[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return ErrBadName
		}
	}
	if n := len(local); n < r.MinNameLen || n > r.MaxNameLen {
		return fmt.Errorf("%w: %d characters, want %d to %d", ErrNameLength, n, r.MinNameLen, r.MaxNameLen)
	}
	if n := utf8.RuneCountInString(password); n < r.MinPasswordLen {
		return fmt.Errorf("%w: %d characters, want at least %d", ErrPasswordTooShort, n, r.MinPasswordLen)
	}
	return nil
}

// SplitAddress splits "local@domain" at its last "@". Both parts must be
// non-empty.
func SplitAddress(addr string) (local, domain string, err error) {
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 {
		return "", "", ErrBadAddress
	}
	return addr[:i], addr[i+1:], nil
}
