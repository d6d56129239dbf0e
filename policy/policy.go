// Package policy decides what a chatmail relay accepts: the encrypted-only
// rule for submitted, received and appended messages (SPEC section 5), the
// per-sender sending rate, and the rules for new account names (SPEC
// section 4).
//
// It only makes decisions. It does no network or file I/O and imports no
// other package of this repository; messages are streamed from an
// io.Reader to an io.Writer one line at a time, so a 30 MiB message is
// never held in memory, and the base64 of its OpenPGP armor is decoded and
// its packets walked as it streams.
//
// Every check reads the message the strictest way: whatever two MIME
// parsers (Go's mime, Python's email, Rust's mailparse that Delta Chat
// uses, ...) could read differently is refused (SPEC section 5). See
// mime.go for the field rules; FuzzPolicyDifferential holds the policy to
// three independent readings.
//
// Where SPEC section 5 leaves room, the choices are:
//   - The preamble and the epilogue of a multipart body may hold at most
//     four blank lines and nothing else (Delta Chat writes one); every line
//     that starts with "--" and the boundary must be exactly a delimiter.
//   - Content-Type, Content-Disposition: a strict grammar, no comments,
//     RFC 2231 or RFC 2047 forms, escapes or doubled parameters; the
//     boundary from a safe character set; only the parameters the shape
//     needs, charset utf-8 or us-ascii. MIME-Version must be "1.0".
//   - Parts hold only Content-Type, Content-Transfer-Encoding,
//     Content-Description (short ASCII) and Content-Disposition, each once.
//   - Around the armor only 7bit, 8bit or no Content-Transfer-Encoding is
//     accepted: a base64 or quoted-printable wrapping would be decoded
//     here and perhaps not by the client, or the other way round.
//   - Armor headers: none when sending (Delta Chat writes none, and any
//     header is cleartext); one short Version when receiving or
//     appending. The blank line after the headers is required.
//   - The armor CRC-24 line is allowed and its value ignored (RFC 9580
//     6.1). Only a few blank lines may surround the armor block.
//   - Legacy (old-format) packet headers are refused, as SPEC section 5
//     asks; note that GnuPG writes its PKESK packets that way, Delta Chat
//     (rPGP) does not. The SEIPD version octet must be 1 or 2.
//   - A SecureJoin request may be a text/plain message or a
//     multipart/mixed holding one text/plain part (what Delta Chat sends);
//     its text is compared without regard to case.
//   - A bounce passes only when received, from mailer-daemon at the
//     domain the caller verified (Envelope.Authenticated), with
//     report-type delivery-status, an Auto-Submitted keyword other than
//     "no", and at most 64 KiB in all.
//   - An Autocrypt Setup Message is accepted when received only if its
//     single recipient is its From: address (which DKIM vouches for); when
//     appended, if its From: is the user.
//   - Header sections are held in memory up to 1 MiB and 1000 lines (64 KiB
//     and 100 lines for a MIME part); lines up to 16 KiB. A bare CR
//     anywhere, and in a header a line without colon, white space before
//     a colon, a whitespace-only folded line, a NUL, or two fields of a
//     kind that may appear once (From, Subject, MIME-Version, Content-*,
//     Secure-Join, Auto-Submitted, ...) are refused as malformed:
//     different parsers read these differently.
//   - The Subject is replaced on every submitted message, a setup message
//     included (Autocrypt recognises those by their Autocrypt-Setup-Message
//     field); no Subject is added where there was none.
package policy

import (
	"fmt"
	"strconv"
	"strings"
)

// Reply is an SMTP refusal: the reply code, the enhanced status code
// (RFC 3463) and the human-readable text.
//
// Replies returned by this package that stand for one of the exported
// values (ErrEncryptionNeeded, ...) may carry a more precise reason for the
// log; compare them with errors.Is, not with ==.
//
// The functions return *Reply, not error: test the result against nil
// before storing it in an error variable, or a nil *Reply becomes a
// non-nil error. The methods accept a nil receiver all the same.
type Reply struct {
	Code     int
	Enhanced [3]int
	Text     string
	// Colon: the enhanced code is followed by a colon on the wire
	// ("450 4.7.1: Too much mail from ..."), as the reference relay's
	// filtermail writes it and Delta Chat users know it.
	Colon bool

	// reason says, for the operator's log, why the message was refused.
	// It is never sent to the client: the SMTP text stays the same for
	// every refusal of one kind.
	reason string
	// err is the underlying error, for refusals caused by reading the
	// message (the caller's size limit, a dropped connection).
	err error
}

// Error returns the reply as it goes on the wire, without CRLF:
// "523 5.7.1 Encryption Needed: Invalid Unencrypted Mail".
func (r *Reply) Error() string {
	if r == nil {
		return "<nil>"
	}
	if r.Colon {
		return strconv.Itoa(r.Code) + " " + r.EnhancedCode() + ": " + r.Text
	}
	return strconv.Itoa(r.Code) + " " + r.EnhancedCode() + " " + r.Text
}

// EnhancedCode returns the enhanced status code as "5.7.1".
func (r *Reply) EnhancedCode() string {
	return fmt.Sprintf("%d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2])
}

// Reason says why the message was refused, for the log. It never holds
// message content beyond header names and MIME types. It is empty when the
// reply text says it all.
func (r *Reply) Reason() string {
	if r == nil {
		return ""
	}
	return r.reason
}

// Unwrap returns the read error behind a refusal, if any, so that a caller
// that limits the message size with its own reader can recognise its error
// with errors.Is.
func (r *Reply) Unwrap() error {
	if r == nil {
		return nil
	}
	return r.err
}

// Is reports whether target is a *Reply with the same code, enhanced code
// and text, so errors.Is(reply, ErrEncryptionNeeded) holds for every
// refusal of that kind whatever its Reason.
func (r *Reply) Is(target error) bool {
	t, ok := target.(*Reply)
	if !ok || t == nil || r == nil {
		return false
	}
	return r.Code == t.Code && r.Enhanced == t.Enhanced && r.Text == t.Text
}

// because returns a copy of r that records reason for the log.
func (r *Reply) because(format string, args ...any) *Reply {
	c := *r
	c.reason = fmt.Sprintf(format, args...)
	return &c
}

func newReply(code int, class, subject, detail int, text string) *Reply {
	return &Reply{Code: code, Enhanced: [3]int{class, subject, detail}, Text: text}
}

// The refusals of the relay, in one place so that the wording a user sees is
// the same everywhere. The texts of ErrEncryptionNeeded and TooMuchMail
// are those of the reference chatmail relays, which Delta Chat users
// already know.
var (
	// ErrEncryptionNeeded refuses anything that is neither encrypted nor one
	// of the few cleartext messages the protocol needs (SPEC section 5).
	// 5.7.1: delivery not authorized (RFC 3463 3.8).
	ErrEncryptionNeeded = newReply(523, 5, 7, 1, "Encryption Needed: Invalid Unencrypted Mail")

	// ErrSenderMismatch: the envelope sender (MAIL FROM) is not the
	// authenticated login; given for each recipient at RCPT, as the
	// reference relay's Postfix does.
	ErrSenderMismatch = newReply(553, 5, 7, 1, "Envelope sender must equal the login name")

	// ErrFromMismatch: the From: header address is not the envelope sender.
	ErrFromMismatch = newReply(500, 5, 7, 1, "From header must equal the envelope sender")

	// ErrTooBig: the message exceeds the size limit. 5.3.4: message too big
	// for system (RFC 3463 3.5).
	ErrTooBig = newReply(552, 5, 3, 4, "Message too big")

	// ErrNoSuchUser: an incoming message for an address that has no
	// account. 5.1.1: bad destination mailbox address (RFC 3463 3.2).
	ErrNoSuchUser = newReply(550, 5, 1, 1, "No such user")

	// ErrTooManyRecipients: more RCPT TO than allowed. 452 4.5.3 is what
	// RFC 5321 4.5.3.1.10 asks for, so the client sends the rest later.
	ErrTooManyRecipients = newReply(452, 4, 5, 3, "Too many recipients")

	// ErrHeaderTooBig: the header section (of the message or of a MIME part)
	// is larger than this package is willing to hold in memory.
	ErrHeaderTooBig = newReply(552, 5, 3, 4, "Message header section too big")

	// ErrLineTooLong: a line longer than maxLineLen. RFC 5322 2.1.1 allows
	// 998 octets; we allow more but not without bound.
	ErrLineTooLong = newReply(552, 5, 3, 4, "Message line too long")

	// ErrMalformed: the header section is not RFC 5322 syntax we can read
	// unambiguously (no colon, bare CR, two From: fields, ...). 5.6.0:
	// other or undefined media error (RFC 3463 3.7).
	ErrMalformed = newReply(554, 5, 6, 0, "Malformed message")

	// ErrReadFailed: reading the message failed; the error is in Unwrap.
	// Temporary, the client may try again.
	ErrReadFailed = newReply(451, 4, 3, 0, "Error reading message")

	// ErrWriteFailed: writing the checked message to the caller's writer
	// failed; the error is in Unwrap.
	ErrWriteFailed = newReply(451, 4, 3, 0, "Error storing message")
)

// ErrNoDKIMSignature refuses an incoming message that carries no DKIM
// signature at all, in the reference chatmail relay's words.
var ErrNoDKIMSignature = newReply(554, 5, 7, 1, "No DKIM signature found")

// ErrDKIM refuses an incoming message whose DKIM signature is invalid or
// not aligned with the From: domain (SPEC section 5). detail is sent to
// the client; keep it short and free of message content. A "dkim: "
// prefix of detail is dropped: the text names DKIM once.
func ErrDKIM(detail string) *Reply {
	text := "DKIM check failed"
	if detail = strings.TrimPrefix(detail, "dkim: "); detail != "" {
		text += ": " + detail
	}
	return newReply(554, 5, 7, 1, text)
}

// TooMuchMail is the refusal of a sender over its sending rate:
// "450 4.7.1: Too much mail from addr", given for each recipient at RCPT.
// 4.7.1 is temporary, the client retries later.
func TooMuchMail(addr string) *Reply {
	r := newReply(450, 4, 7, 1, "Too much mail from "+addr)
	r.Colon = true
	return r
}

// Kind is what sort of message passed the policy.
type Kind int

const (
	// Encrypted is an OpenPGP/MIME encrypted message (RFC 3156 section 4).
	Encrypted Kind = iota + 1
	// SecureJoin is the cleartext first step of the Delta Chat SecureJoin
	// protocol (vc-request or vg-request).
	SecureJoin
	// SetupMessage is an Autocrypt Setup Message sent to oneself.
	SetupMessage
	// Bounce is a cleartext delivery status notification (RFC 3464)
	// from a mailer daemon.
	Bounce
)

func (k Kind) String() string {
	switch k {
	case Encrypted:
		return "encrypted"
	case SecureJoin:
		return "securejoin"
	case SetupMessage:
		return "setup-message"
	case Bounce:
		return "bounce"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Envelope is the SMTP envelope of a message.
type Envelope struct {
	// From is the MAIL FROM address without angle brackets; "" for the
	// null reverse-path of bounces.
	From string
	// To holds the RCPT TO addresses.
	To []string
	// Authenticated is, for Incoming, the sender domain the caller has
	// verified: the DKIM d= domain aligned with From:, or "[ip]" for an
	// address-literal sender connecting from ip. Incoming refuses a
	// message whose From: domain, as read here, is not this one when it
	// is set, and lets a bounce through only from mailer-daemon at it.
	Authenticated string
}

// Verdict describes an incoming message that passed the policy.
type Verdict struct {
	// From is the address of the From: header, lower-cased, for the
	// caller's DKIM or IP-literal alignment check.
	From string
	// DropEnvelopeSender is set when MAIL FROM differed from the From:
	// header: the message is stored with an empty envelope sender instead
	// of being refused (SPEC section 5).
	DropEnvelopeSender bool
	// Kind is what sort of message it is.
	Kind Kind
}
