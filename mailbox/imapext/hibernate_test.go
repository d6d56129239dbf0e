package imapext

import "testing"

// The replay of a resume names the selected mailbox; imapserver decodes
// it back, so the encoding must be modified UTF-7 (RFC 3501 section
// 5.1.3) in a quoted string.
func TestQuoteMailbox(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"INBOX", "INBOX"},
		{"inbox", "INBOX"},
		{"Archive", `"Archive"`},
		{"a&b", `"a&-b"`},
		{`say "hi"\`, `"say \"hi\"\\"`},
		// The RFC's own example.
		{"~peter/mail/台北/日本語", `"~peter/mail/&U,BTFw-/&ZeVnLIqe-"`},
		{"Entwürfe", `"Entw&APw-rfe"`},
	} {
		if got := quoteMailbox(c.in); got != c.want {
			t.Errorf("quoteMailbox(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}
