package policy

import (
	"errors"
	"testing"
)

func TestCheckNewAccount(t *testing.T) {
	r := DefaultAccountRules()
	const pw = "long enough password"
	for _, tc := range []struct {
		addr, password, domain string
		want                   error
	}{
		{"abcd12345@example.org", pw, "example.org", nil},
		{"a.b_c-d.9@example.org", pw, "example.org", nil},
		{"abcd12345@EXAMPLE.org", pw, "example.ORG", nil},
		{"abcd12345@[127.0.0.2]", pw, "[127.0.0.2]", nil},
		{"abcd12345@example.org", "123456789", "example.org", nil},
		{"abcd12345@example.org", "ääääääääá", "example.org", nil}, // 9 characters, 18 bytes
		{"abcd12345@[127.0.0.3]", pw, "[127.0.0.2]", ErrWrongDomain},
		{"abcd12345@example.net", pw, "example.org", ErrWrongDomain},
		{"abcd12345@sub.example.org", pw, "example.org", ErrWrongDomain},
		{"Abcd12345@example.org", pw, "example.org", ErrBadName},
		{"abcd 1234@example.org", pw, "example.org", ErrBadName},
		{"abcd+1234@example.org", pw, "example.org", ErrBadName},
		{"abcdé1234@example.org", pw, "example.org", ErrBadName},
		{"abcd1234@example.org", pw, "example.org", ErrNameLength},
		{"abcd123456@example.org", pw, "example.org", ErrNameLength},
		{"abcd12345@example.org", "12345678", "example.org", ErrPasswordTooShort},
		{"abcd12345@example.org", "", "example.org", ErrPasswordTooShort},
		{"abcd12345", pw, "example.org", ErrBadAddress},
		{"@example.org", pw, "example.org", ErrBadAddress},
		{"abcd12345@", pw, "example.org", ErrBadAddress},
		{"a@bcd12345@example.org", pw, "example.org", ErrBadName},
	} {
		err := r.CheckNewAccount(tc.addr, tc.password, tc.domain)
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("CheckNewAccount(%q, %q, %q) = %v, want %v", tc.addr, tc.password, tc.domain, err, tc.want)
		}
	}

	wide := AccountRules{MinNameLen: 3, MaxNameLen: 32, MinPasswordLen: 12}
	if err := wide.CheckNewAccount("bob@example.org", "twelve chars", "example.org"); err != nil {
		t.Errorf("configured rules: %v", err)
	}
	if err := wide.CheckNewAccount("bo@example.org", "twelve chars", "example.org"); !errors.Is(err, ErrNameLength) {
		t.Errorf("configured rules, short name: %v", err)
	}
}

func TestSplitAddress(t *testing.T) {
	for _, tc := range []struct {
		addr, local, domain string
		ok                  bool
	}{
		{"a@b", "a", "b", true},
		{"a@[127.0.0.1]", "a", "[127.0.0.1]", true},
		{"\"a@b\"@c", "\"a@b\"", "c", true},
		{"ab", "", "", false},
		{"", "", "", false},
		{"a@", "", "", false},
		{"@b", "", "", false},
	} {
		l, d, err := SplitAddress(tc.addr)
		if l != tc.local || d != tc.domain || (err == nil) != tc.ok {
			t.Errorf("SplitAddress(%q) = %q, %q, %v", tc.addr, l, d, err)
		}
	}
}
