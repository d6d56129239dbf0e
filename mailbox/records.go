package mailbox

import (
	"strings"

	"github.com/emersion/go-imap/v2"
)

// HasFlag tells whether the message has flag (case-insensitive).
func (r *MessageRecord) HasFlag(flag imap.Flag) bool {
	for _, f := range r.Flags {
		if strings.EqualFold(string(f), string(flag)) {
			return true
		}
	}
	return false
}

// canonicalFlag spells system flags the standard way (they are
// case-insensitive, RFC 3501 section 2.3.2) and keeps keywords as given.
func canonicalFlag(f imap.Flag) imap.Flag {
	for _, sys := range []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft, imap.FlagImportant} {
		if strings.EqualFold(string(f), string(sys)) {
			return sys
		}
	}
	return f
}

// ApplyFlags changes the flags as STORE does (RFC 3501 section 6.4.6):
// system flags spelt canonically, \Recent and \* ignored, the order of
// first setting kept. It says whether anything changed.
func (r *MessageRecord) ApplyFlags(op imap.StoreFlagsOp, flags []imap.Flag) (changed bool) {
	set := map[imap.Flag]bool{}
	var order []imap.Flag
	if op != imap.StoreFlagsSet {
		for _, f := range r.Flags {
			set[f] = true
			order = append(order, f)
		}
	}
	for _, f := range flags {
		f = canonicalFlag(f)
		if strings.EqualFold(string(f), `\Recent`) || f == imap.FlagWildcard {
			continue
		}
		switch op {
		case imap.StoreFlagsSet, imap.StoreFlagsAdd:
			if !set[f] {
				set[f] = true
				order = append(order, f)
			}
		case imap.StoreFlagsDel:
			set[f] = false
		}
	}
	var out []imap.Flag
	for _, f := range order {
		if set[f] {
			out = append(out, f)
		}
	}
	changed = len(out) != len(r.Flags)
	if !changed {
		for i := range out {
			if out[i] != r.Flags[i] {
				changed = true
			}
		}
	}
	r.Flags = out
	return changed
}

// mailboxName canonicalises a mailbox name: INBOX is case-insensitive
// (RFC 3501 section 5.1).
func mailboxName(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	return name
}

// maxMailboxes bounds the mailboxes of one account, so that a client cannot
// fill the index with them.
const maxMailboxes = 50
