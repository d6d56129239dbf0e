package imapext

import (
	"bufio"
	"strconv"
	"strings"
)

// args parses the arguments of one of the layer's own commands, buffered by
// readOwn: text with literals inline ("{n}" CRLF and n bytes). The grammar is
// RFC 9051 section 9.
type args struct {
	b []byte
	i int
}

// newArgs positions the parser after "tag SP name".
func newArgs(cmd []byte) *args {
	a := &args{b: cmd}
	for a.i < len(a.b) && a.b[a.i] != ' ' {
		a.i++
	}
	a.i++
	for a.i < len(a.b) && isAtomChar(a.b[a.i]) {
		a.i++
	}
	return a
}

func (a *args) peek() byte {
	if a.i < len(a.b) {
		return a.b[a.i]
	}
	return 0
}

func (a *args) special(c byte) bool {
	if a.peek() == c {
		a.i++
		return true
	}
	return false
}

func (a *args) sp() bool { return a.special(' ') }

// end accepts the end of the command as leniently as imapserver does: an
// optional SP, an optional CR, then LF.
func (a *args) end() bool {
	a.special(' ')
	a.special('\r')
	return a.special('\n') && a.i == len(a.b)
}

func (a *args) atom() (string, bool) {
	start := a.i
	for a.i < len(a.b) && isAtomChar(a.b[a.i]) {
		a.i++
	}
	return string(a.b[start:a.i]), a.i > start
}

// astring reads an atom (with "]" allowed, ASTRING-CHAR), a quoted string or
// a literal.
func (a *args) astring() (string, bool) {
	switch a.peek() {
	case '"', '{', '~':
		return a.str()
	}
	start := a.i
	for a.i < len(a.b) && (isAtomChar(a.b[a.i]) || a.b[a.i] == ']') {
		a.i++
	}
	return string(a.b[start:a.i]), a.i > start
}

// str reads a quoted string or a literal (also literal8, RFC 3516).
func (a *args) str() (string, bool) {
	switch a.peek() {
	case '"':
		return a.quoted()
	case '~':
		a.i++
		if a.peek() != '{' {
			return "", false
		}
		return a.literal()
	case '{':
		return a.literal()
	}
	return "", false
}

func (a *args) quoted() (string, bool) {
	a.i++
	var sb strings.Builder
	for a.i < len(a.b) {
		c := a.b[a.i]
		a.i++
		switch c {
		case '"':
			return sb.String(), true
		case '\\':
			if a.i >= len(a.b) || (a.b[a.i] != '"' && a.b[a.i] != '\\') {
				return "", false
			}
			sb.WriteByte(a.b[a.i])
			a.i++
		case '\r', '\n', 0:
			return "", false
		default:
			sb.WriteByte(c)
		}
	}
	return "", false
}

func (a *args) literal() (string, bool) {
	a.i++ // "{"
	start := a.i
	for a.i < len(a.b) && a.b[a.i] >= '0' && a.b[a.i] <= '9' {
		a.i++
	}
	n, err := strconv.ParseInt(string(a.b[start:a.i]), 10, 64)
	if err != nil {
		return "", false
	}
	a.special('+')
	if !a.special('}') {
		return "", false
	}
	a.special(' ')
	a.special('\r')
	if !a.special('\n') || n > int64(len(a.b)-a.i) {
		return "", false
	}
	s := string(a.b[a.i : a.i+int(n)])
	a.i += int(n)
	return s, true
}

// nstring reads NIL (returned as nil) or a string.
func (a *args) nstring() (*string, bool) {
	if a.nil() {
		return nil, true
	}
	s, ok := a.str()
	if !ok {
		return nil, false
	}
	return &s, true
}

func (a *args) nil() bool {
	if a.i+3 <= len(a.b) && strings.EqualFold(string(a.b[a.i:a.i+3]), "NIL") &&
		(a.i+3 == len(a.b) || !isAtomChar(a.b[a.i+3])) {
		a.i += 3
		return true
	}
	return false
}

// list reads "(" item *(SP item) ")"; empty lists are accepted when
// allowEmpty is set.
func (a *args) list(allowEmpty bool, item func() bool) bool {
	if !a.special('(') {
		return false
	}
	if a.special(')') {
		return allowEmpty
	}
	for {
		if !item() {
			return false
		}
		if a.special(')') {
			return true
		}
		if !a.sp() {
			return false
		}
	}
}

// spaces skips any run of SP and reports whether there was one.
func (a *args) spaces() bool {
	n := 0
	for a.special(' ') {
		n++
	}
	return n > 0
}

// looseList is list with the whitespace real servers take: any run of SP
// between items and after "(" or before ")" (clients send
// "SETMETADATA INBOX (/private/devicetoken "t" )").
func (a *args) looseList(item func() bool) bool {
	if !a.special('(') {
		return false
	}
	a.spaces()
	if a.special(')') {
		return false
	}
	for {
		if !item() {
			return false
		}
		sp := a.spaces()
		if a.special(')') {
			return true
		}
		if !sp {
			return false
		}
	}
}

// mailbox reads a mailbox name; INBOX is case-insensitive (RFC 9051
// section 5.1).
func (a *args) mailbox() (string, bool) {
	s, ok := a.astring()
	if ok && strings.EqualFold(s, "INBOX") {
		s = "INBOX"
	}
	return s, ok
}

// writeString writes s as a quoted string when that is possible and short,
// else as a literal; literal8 when s holds NUL (RFC 5464 section 5 allows it
// for values).
func writeString(w *bufio.Writer, s string) {
	if len(s) <= 1024 && isQuotable(s) {
		w.WriteByte('"')
		for i := 0; i < len(s); i++ {
			if s[i] == '"' || s[i] == '\\' {
				w.WriteByte('\\')
			}
			w.WriteByte(s[i])
		}
		w.WriteByte('"')
		return
	}
	if strings.IndexByte(s, 0) >= 0 {
		w.WriteByte('~')
	}
	w.WriteByte('{')
	w.WriteString(strconv.Itoa(len(s)))
	w.WriteString("}\r\n")
	w.WriteString(s)
}

func isQuotable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
