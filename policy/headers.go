package policy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"net/mail"
	"strings"
)

// Bounds that keep memory use independent of the input. Only the header
// sections are held in memory; bodies are looked at one line at a time.
const (
	// maxLineLen bounds one line, terminator included. RFC 5322 2.1.1
	// allows 998 octets; Delta Chat and the MTAs we talk to stay far below,
	// and armored OpenPGP lines are 64 or 76 characters.
	maxLineLen = 16 << 10

	// maxHeaderBytes and maxHeaderLines bound the top-level header section.
	// An Autocrypt header with a large RSA key is a few KiB; a received
	// message adds a few Received and DKIM-Signature fields.
	maxHeaderBytes = 1 << 20
	maxHeaderLines = 1000

	// maxPartHeaderBytes and maxPartHeaderLines bound the header section of
	// a MIME part, which in the messages we accept holds two to four fields.
	maxPartHeaderBytes = 64 << 10
	maxPartHeaderLines = 100
)

var crlf = []byte("\r\n")

// lineReader splits a message into lines ended by LF or CRLF, bounded by
// maxLineLen, without copying.
type lineReader struct {
	br  *bufio.Reader
	eof bool
	n   int // octets read so far, line terminators included
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, maxLineLen)}
}

// next returns the next line without its terminator; the slice is valid
// until the following call. At the end of the input it returns eof. A final
// line without terminator is returned as a line.
func (lr *lineReader) next() (line []byte, eof bool, rep *Reply) {
	if lr.eof {
		return nil, true, nil
	}
	line, err := lr.br.ReadSlice('\n')
	lr.n += len(line)
	switch {
	case err == nil:
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, false, ErrLineTooLong
	case err == io.EOF:
		lr.eof = true
		if len(line) == 0 {
			return nil, true, nil
		}
	default:
		r := *ErrReadFailed
		r.err = err
		return nil, false, &r
	}
	// A CR that does not end a line is read as a line break by some
	// parsers and not by others (the trick behind SMTP smuggling);
	// RFC 5322 2.3 does not allow it, so we refuse rather than guess.
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, false, ErrMalformed.because("bare CR")
	}
	return line, false, nil
}

// headerField is one field of a header section; its bytes, folded lines and
// CRLFs included, are header.buf[start:end].
type headerField struct {
	name       string // as written, without white space before the colon
	start, end int
	colon      int // index in buf of the colon
}

// header is a header section held in memory, with line endings
// normalised to CRLF.
type header struct {
	buf    []byte
	fields []headerField
}

// readHeader reads a header section up to and including the empty line
// that ends it (RFC 5322 2.1), or up to the end of the input.
func readHeader(lr *lineReader, maxBytes, maxLines int) (*header, *Reply) {
	h := &header{}
	for lines := 0; ; lines++ {
		line, eof, rep := lr.next()
		if rep != nil {
			return nil, rep
		}
		if eof || len(line) == 0 {
			return h, nil
		}
		if lines >= maxLines || len(h.buf)+len(line)+2 > maxBytes {
			return nil, ErrHeaderTooBig
		}
		if bytes.IndexByte(line, 0) >= 0 {
			return nil, ErrMalformed.because("NUL in header")
		}
		if line[0] == ' ' || line[0] == '\t' {
			// A folded line (RFC 5322 2.2.3). One made only of white
			// space is allowed by the obsolete syntax (4.2) but ends the
			// header section for some parsers, so it is refused.
			if len(h.fields) == 0 {
				return nil, ErrMalformed.because("header starts with a folded line")
			}
			if len(bytes.TrimLeft(line, " \t")) == 0 {
				return nil, ErrMalformed.because("header line of white space only")
			}
			h.buf = append(append(h.buf, line...), crlf...)
			h.fields[len(h.fields)-1].end = len(h.buf)
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			return nil, ErrMalformed.because("header line without colon")
		}
		// White space before the colon is obsolete syntax (RFC 5322 4.5):
		// Go's textproto refuses the line, Python's email takes the name
		// with the space, others trim it. Refused (SPEC section 5).
		name := line[:colon]
		if !validFieldName(name) {
			return nil, ErrMalformed.because("invalid header field name")
		}
		start := len(h.buf)
		h.buf = append(append(h.buf, line...), crlf...)
		h.fields = append(h.fields, headerField{
			name:  string(name),
			start: start,
			end:   len(h.buf),
			colon: start + colon,
		})
	}
}

// validFieldName reports whether name is an RFC 5322 2.2 field name:
// printable US-ASCII except colon.
func validFieldName(name []byte) bool {
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// value returns the unfolded value of f (RFC 5322 2.2.3), trimmed.
func (h *header) value(f headerField) string {
	v := h.buf[f.colon+1 : f.end]
	if bytes.Count(v, crlf) > 1 {
		v = bytes.ReplaceAll(v, crlf, nil)
	} else {
		v = bytes.TrimSuffix(v, crlf)
	}
	return strings.Trim(string(v), " \t")
}

// get returns the value of the first field called name and how many such
// fields there are.
func (h *header) get(name string) (value string, n int) {
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			if n == 0 {
				value = h.value(f)
			}
			n++
		}
	}
	return value, n
}

// single returns the value of a field that may appear at most once. Two
// Content-Type or From fields are read differently by different parsers,
// which is how a check is fooled, so they are refused (RFC 5322 3.6 allows
// one From; RFC 2045 one Content-Type per entity).
func (h *header) single(name string) (string, bool, *Reply) {
	v, n := h.get(name)
	if n > 1 {
		return "", false, ErrMalformed.because("more than one %s field", name)
	}
	return v, n == 1, nil
}

// write writes the header section and the empty line after it to w. Fields
// for which drop is true are left out; when subject is not "", every Subject
// field is replaced by "Subject: " + subject.
func (h *header) write(w *bufio.Writer, drop func(name string) bool, subject string) {
	for _, f := range h.fields {
		if drop != nil && drop(f.name) {
			continue
		}
		if subject != "" && strings.EqualFold(f.name, "Subject") {
			w.WriteString("Subject: ")
			w.WriteString(subject)
			w.Write(crlf)
			continue
		}
		w.Write(h.buf[f.start:f.end])
	}
	w.Write(crlf)
}

// outgoingDropped lists the fields removed from submitted messages so that
// they do not reveal the sender's IP address or software (SPEC section 5).
func outgoingDropped(name string) bool {
	return strings.EqualFold(name, "Received") ||
		strings.EqualFold(name, "X-Originating-IP") ||
		strings.EqualFold(name, "X-Mailer") ||
		strings.EqualFold(name, "User-Agent")
}

// incomingDropped lists the fields removed from received messages: the
// signatures were checked by the relay and mean nothing to the client,
// and Received fields only leak the path.
func incomingDropped(name string) bool {
	return strings.EqualFold(name, "DKIM-Signature") ||
		strings.EqualFold(name, "Authentication-Results") ||
		strings.EqualFold(name, "Received")
}

// outgoingSubject replaces the subject of submitted messages; Delta Chat
// puts the real one in the encrypted part.
const outgoingSubject = "[...]"

// addressParser reads From: fields. Display names are never looked at, so
// every charset of an RFC 2047 encoded word is accepted as is rather than
// failing the whole address on, say, koi8-r.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, input io.Reader) (io.Reader, error) { return input, nil },
}}

// fromAddress returns the address of the From: field, lower-cased. The
// field must exist once and hold one mailbox: a From: with several
// mailboxes needs a Sender: (RFC 5322 3.6.2) and is not what a chatmail
// client sends.
func (h *header) fromAddress() (string, *Reply) {
	v, ok, rep := h.single("From")
	if rep != nil {
		return "", rep
	}
	if !ok {
		return "", ErrMalformed.because("no From field")
	}
	a, err := addressParser.Parse(v)
	if err != nil || a.Address == "" {
		return "", ErrMalformed.because("unreadable From field")
	}
	return strings.ToLower(a.Address), nil
}

// mediaType is a parsed Content-Type (RFC 2045 5.1).
type mediaType struct {
	typ    string // "type/subtype", lower-case
	params map[string]string
}

// contentType returns the Content-Type of an entity, text/plain if it has
// none (RFC 2045 5.2), read by parseParamField.
func (h *header) contentType() (mediaType, *Reply) {
	_, n := h.get("Content-Type")
	if n > 1 {
		return mediaType{}, ErrMalformed.because("more than one Content-Type field")
	}
	f, ok := h.field("Content-Type")
	if !ok {
		return mediaType{typ: "text/plain"}, nil
	}
	mt, why := parseParamField(h.rawValue(f), true)
	if why != "" {
		return mediaType{}, ErrEncryptionNeeded.because("Content-Type: %s", why)
	}
	return mt, nil
}

// transferEncoding returns the Content-Transfer-Encoding of an entity,
// lower-case, "7bit" if it has none (RFC 2045 6.1). The value must be one
// bare token: "7bit (base64)" or a quoted value reads differently to a
// reader that strips comments or quotes.
func (h *header) transferEncoding() (string, *Reply) {
	v, ok, rep := h.single("Content-Transfer-Encoding")
	if rep != nil {
		return "", rep
	}
	if !ok {
		return "7bit", nil
	}
	for i := 0; i < len(v); i++ {
		if !isTokenChar(v[i]) {
			return "", ErrEncryptionNeeded.because("malformed Content-Transfer-Encoding")
		}
	}
	return strings.ToLower(v), nil
}

// identityEncoding reports whether cte leaves the body as it is (RFC 2045
// 6.2). Only these are accepted around OpenPGP armor: armor is already
// 7bit, and decoding a second transfer encoding would let a message pass
// here that a client reads differently.
func identityEncoding(cte string) bool {
	return cte == "7bit" || cte == "8bit"
}
