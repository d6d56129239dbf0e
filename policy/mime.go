package policy

import (
	"bytes"
	"strings"
)

// The MIME fields of a message are read by the strictest grammar that
// still takes what Delta Chat and the usual OpenPGP/MIME writers send.
// Whatever two MIME parsers could read differently is refused (SPEC
// section 5); each rule below names the parsers that disagree.

// uniqueFields may appear at most once in a header section: RFC 5322 3.6
// for the message fields, RFC 2045 for the MIME ones, and the fields the
// policy decides on. Parsers differ on which of two they take (Go's
// textproto and Python's email the first, mailparse's maps the last).
var uniqueFields = []string{
	"From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Subject", "Date",
	"Message-ID", "In-Reply-To", "References",
	"MIME-Version", "Secure-Join", "Auto-Submitted",
}

// checkUnique refuses a header section with two fields of a name in
// uniqueFields or starting with "Content-".
func (h *header) checkUnique() *Reply {
	for i, f := range h.fields {
		unique := len(f.name) > 8 && strings.EqualFold(f.name[:8], "Content-")
		for _, u := range uniqueFields {
			unique = unique || strings.EqualFold(f.name, u)
		}
		if !unique {
			continue
		}
		for _, g := range h.fields[i+1:] {
			if strings.EqualFold(f.name, g.name) {
				return ErrMalformed.because("more than one %s field", f.name)
			}
		}
	}
	return nil
}

// rawValue returns the value of f as written, folds (CRLF followed by
// white space) included.
func (h *header) rawValue(f headerField) []byte {
	return bytes.TrimSuffix(h.buf[f.colon+1:f.end], crlf)
}

// field returns the one field called name, if there is one.
func (h *header) field(name string) (headerField, bool) {
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			return f, true
		}
	}
	return headerField{}, false
}

// mimeVersion checks that the header section says "MIME-Version: 1.0",
// exactly. Without it a strict MIME reader (RFC 2045 4) may take the body
// as plain text; with a comment some readers see 1.0 and others not.
func (h *header) mimeVersion() *Reply {
	f, ok := h.field("MIME-Version")
	if !ok {
		return ErrEncryptionNeeded.because("no MIME-Version field")
	}
	if string(bytes.Trim(h.rawValue(f), " \t")) != "1.0" {
		return ErrEncryptionNeeded.because("MIME-Version is not exactly 1.0")
	}
	return nil
}

// isTokenChar reports whether c may appear in an RFC 2045 5.1 token:
// printable US-ASCII except SPACE and tspecials.
func isTokenChar(c byte) bool {
	if c <= ' ' || c >= 0x7f {
		return false
	}
	return !strings.ContainsRune(`()<>@,;:\"/[]?=`, rune(c))
}

// isQuotedChar reports whether c may appear inside a quoted parameter
// value here: printable US-ASCII and SPACE except '"' and '\' (no escapes:
// parsers differ on them) and ';' (mailparse splits parameters on every
// ';', quoted or not, so name="a;boundary=X" hides a second boundary).
func isQuotedChar(c byte) bool {
	return c >= ' ' && c < 0x7f && c != '"' && c != '\\' && c != ';'
}

// parseParamField reads a Content-Type or Content-Disposition value (RFC
// 2045 5.1, RFC 2183 2) by a strict grammar:
//
//	value   = token ["/" token] *(WSP) *(";" *(WSP) param *(WSP)) [";" *(WSP)]
//	param   = token "=" (token / DQUOTE *qchar DQUOTE)
//
// WSP includes folds. Refused, since parsers read them differently:
// comments "( )" (Python's email strips them, Go's mime and mailparse do
// not), RFC 2231 "*" parameters (Go lets "boundary*" win over "boundary",
// mailparse and Python keep the plain one), RFC 2047 encoded words (some
// readers decode them in parameters), backslash escapes, a fold inside a
// quoted string, white space around "/" or "=", a parameter given twice
// (case-insensitively), 8-bit bytes and control characters. withSlash
// says whether the value is a media type.
func parseParamField(raw []byte, withSlash bool) (mediaType, string) {
	for _, c := range raw {
		if c >= 0x7f || c < ' ' && c != '\t' && c != '\r' && c != '\n' {
			return mediaType{}, "8-bit or control character"
		}
	}
	switch {
	case bytes.ContainsAny(raw, "()"):
		return mediaType{}, "comment"
	case bytes.IndexByte(raw, '*') >= 0:
		return mediaType{}, "RFC 2231 parameter"
	case bytes.Contains(raw, []byte("=?")):
		return mediaType{}, "encoded word"
	case bytes.IndexByte(raw, '\\') >= 0:
		return mediaType{}, "backslash"
	}
	s := raw
	i := 0
	ws := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n') {
			i++
		}
	}
	token := func() string {
		j := i
		for i < len(s) && isTokenChar(s[i]) {
			i++
		}
		return strings.ToLower(string(s[j:i]))
	}
	ws()
	typ := token()
	if typ == "" {
		return mediaType{}, "no type"
	}
	if withSlash {
		if i >= len(s) || s[i] != '/' {
			return mediaType{}, "no subtype"
		}
		i++
		sub := token()
		if sub == "" {
			return mediaType{}, "no subtype"
		}
		typ += "/" + sub
	}
	mt := mediaType{typ: typ, params: map[string]string{}}
	for {
		ws()
		if i == len(s) {
			return mt, ""
		}
		if s[i] != ';' {
			return mediaType{}, "junk after a value"
		}
		i++
		ws()
		if i == len(s) {
			// A trailing ";" is read as nothing by Go, Python and
			// mailparse alike.
			return mt, ""
		}
		name := token()
		if name == "" || i == len(s) || s[i] != '=' {
			return mediaType{}, "malformed parameter"
		}
		i++
		var value string
		if i < len(s) && s[i] == '"' {
			i++
			j := i
			for i < len(s) && isQuotedChar(s[i]) {
				i++
			}
			if i == len(s) || s[i] != '"' {
				return mediaType{}, "malformed quoted string"
			}
			value = string(s[j:i])
			i++
		} else {
			j := i
			for i < len(s) && isTokenChar(s[i]) {
				i++
			}
			if i == j {
				return mediaType{}, "malformed parameter value"
			}
			value = string(s[j:i])
		}
		if _, dup := mt.params[name]; dup {
			return mediaType{}, "parameter " + name + " given twice"
		}
		mt.params[name] = value
	}
}

// validBoundary reports whether b is a boundary every parser reads the
// same: 1 to 70 characters (RFC 2046 5.1.1) from the bchars without
// SPACE, and without "(" and ")", which some read as a comment.
func validBoundary(b string) bool {
	if len(b) == 0 || len(b) > maxBoundary {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' ||
			strings.IndexByte("'+_,-./:=?", c) >= 0) {
			return false
		}
	}
	return true
}

// allowedParams checks that mt has only parameters named in allowed and
// that a charset, if any, is one that reads ASCII as ASCII.
func (mt mediaType) allowedParams(allowed ...string) string {
	for name, v := range mt.params {
		ok := false
		for _, a := range allowed {
			ok = ok || name == a
		}
		if !ok {
			return "parameter " + name + " in " + mt.typ
		}
		if name == "charset" && !strings.EqualFold(v, "utf-8") && !strings.EqualFold(v, "us-ascii") {
			return "charset " + v
		}
	}
	return ""
}

// partFields are the only fields a MIME part of an accepted message may
// have. Anything else is a field some client might interpret.
var partFields = []string{
	"Content-Type", "Content-Transfer-Encoding", "Content-Description", "Content-Disposition",
}

// maxDescription bounds a Content-Description, which some clients show:
// "OpenPGP encrypted message" and the like, not a place for text.
const maxDescription = 64

// checkPartHeader checks the header section of a MIME part of an
// encrypted message or SecureJoin request: only partFields, each at most
// once, a short ASCII Content-Description and a strict
// Content-Disposition.
func checkPartHeader(h *header) *Reply {
	for _, f := range h.fields {
		ok := false
		for _, p := range partFields {
			ok = ok || strings.EqualFold(f.name, p)
		}
		if !ok {
			return ErrEncryptionNeeded.because("field %s in a MIME part", f.name)
		}
	}
	if rep := h.checkUnique(); rep != nil {
		return rep
	}
	if f, ok := h.field("Content-Description"); ok {
		v := h.value(f)
		if len(v) > maxDescription || bytes.Contains([]byte(v), []byte("=?")) {
			return ErrEncryptionNeeded.because("Content-Description")
		}
		for i := 0; i < len(v); i++ {
			if v[i] < ' ' || v[i] >= 0x7f {
				return ErrEncryptionNeeded.because("Content-Description")
			}
		}
	}
	if f, ok := h.field("Content-Disposition"); ok {
		d, why := parseParamField(h.rawValue(f), false)
		if why != "" {
			return ErrEncryptionNeeded.because("Content-Disposition: %s", why)
		}
		if d.typ != "inline" && d.typ != "attachment" {
			return ErrEncryptionNeeded.because("Content-Disposition %s", d.typ)
		}
		if why := d.allowedParams("filename"); why != "" {
			return ErrEncryptionNeeded.because("Content-Disposition %s", why)
		}
	}
	return nil
}
