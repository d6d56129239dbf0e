package imapext

import (
	"bufio"
	"strconv"

	"github.com/emersion/go-imap/v2"
)

// The status responses the layer writes itself, in one place so their
// wording stays consistent.
var (
	errSyntax = &imap.Error{
		Type: imap.StatusResponseTypeBad,
		Code: imap.ResponseCodeClientBug,
		Text: "Syntax error",
	}
	errNotAuthenticated = &imap.Error{
		Type: imap.StatusResponseTypeBad,
		Code: imap.ResponseCodeClientBug,
		Text: "This command is only valid in the authenticated state",
	}
	// RFC 9051 section 7.1 (PRIVACYREQUIRED), RFC 8314 section 3.
	errPrivacyRequired = &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCodePrivacyRequired,
		Text: "Use STARTTLS before authenticating",
	}
	errTooBig = &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCodeTooBig,
		Text: "Command too big",
	}
	errStartTLSUnavailable = &imap.Error{
		Type: imap.StatusResponseTypeBad,
		Text: "STARTTLS not available",
	}
	// RFC 4978 section 3.
	errCompressionActive = &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: "COMPRESSIONACTIVE",
		Text: "Compression is already active",
	}
	errCompressAlgorithm = &imap.Error{
		Type: imap.StatusResponseTypeBad,
		Text: "Unsupported compression algorithm",
	}
	errNoSuchQuotaRoot = &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCodeNonExistent,
		Text: "No such quota root",
	}
	errServerBug = &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCodeServerBug,
		Text: "Internal server error",
	}
)

const (
	textSyntaxLine    = "Syntax error: expected a tag and a command"
	textLineTooLong   = "Command line too long"
	textTimeout       = "Autologout; idle for too long"
	textInjection     = "Data after STARTTLS"
	textLiteralTooBig = "Literal too big for this command"
	textLiteralReady  = "Ready for literal data"
)

// errMetadataMaxSize is RFC 5464 section 4.3: a value larger than the
// server accepts is refused with [METADATA MAXSIZE n].
func errMetadataMaxSize(n int) *imap.Error {
	return &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCode("METADATA MAXSIZE " + strconv.Itoa(n)),
		Text: "Metadata value too long",
	}
}

// writeStatus writes a status response; tag "" is untagged.
func writeStatus(w *bufio.Writer, tag string, typ imap.StatusResponseType, code imap.ResponseCode, text string) {
	if tag == "" {
		tag = "*"
	}
	w.WriteString(tag)
	w.WriteByte(' ')
	w.WriteString(string(typ))
	w.WriteByte(' ')
	if code != "" {
		w.WriteByte('[')
		w.WriteString(string(code))
		w.WriteString("] ")
	}
	w.WriteString(sanitizeText(text))
	w.WriteString("\r\n")
}

// sanitizeText keeps response text on one line: text comes from handlers.
func sanitizeText(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			b := []byte(s)
			for j := range b {
				if b[j] < 0x20 || b[j] == 0x7f {
					b[j] = ' '
				}
			}
			return string(b)
		}
	}
	if s == "" {
		return "Done"
	}
	return s
}
