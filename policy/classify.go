package policy

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// direction says where a message comes from; the rules differ a little.
type direction uint8

const (
	outgoing  direction = iota // submitted by a logged-in user
	incoming                   // from another server
	appending                  // IMAP APPEND by a logged-in user
)

// Bounds on what is accumulated of a part body, and on MIME boundaries.
const (
	// maxSmallBody bounds the bodies compared as text: "Version: 1" and
	// "secure-join: vc-request".
	maxSmallBody = 1 << 10
	// maxBoundary is the longest boundary RFC 2046 5.1.1 allows.
	maxBoundary = 70
)

const setupSubject = "Autocrypt Setup Message" // Autocrypt Level 1, 4.4

// Outgoing checks a message submitted by an authenticated user.
// env.From is the login, which the caller has already checked is the
// envelope sender (ErrSenderMismatch otherwise).
//
// The message (RFC 5322, CRLF or LF line endings) is read from r once, as a
// stream, and written to w with CRLF line endings and the outgoing header
// clean-up of SPEC section 5: Received, X-Originating-IP, X-Mailer and
// User-Agent removed, Subject replaced by "[...]".
//
// Outgoing returns nil when the message may be sent. On refusal what was
// written to w is garbage to discard, and r may be left partly unread.
func Outgoing(env Envelope, r io.Reader, w io.Writer) *Reply {
	c := newChecker(outgoing, r, w)
	h, rep := readHeader(c.lr, maxHeaderBytes, maxHeaderLines)
	if rep != nil {
		return rep
	}
	from, rep := h.fromAddress()
	if rep != nil {
		return ErrFromMismatch.because("%s", rep.reason)
	}
	if !strings.EqualFold(from, env.From) {
		return ErrFromMismatch
	}
	h.write(c.out, outgoingDropped, outgoingSubject)
	if _, rep := c.classify(h, env, from); rep != nil {
		return rep
	}
	return c.flush()
}

// Incoming checks a message from another server (port 25 or /mxdeliv),
// after the caller has checked DKIM on the raw message. It streams r to w
// like Outgoing, with the incoming clean-up: DKIM-Signature,
// Authentication-Results and Received removed.
//
// Besides encrypted and SecureJoin messages it lets through bounces
// (multipart/report from mailer-daemon with Auto-Submitted) and an
// Autocrypt Setup Message whose From: is its only recipient, which can only
// be one of our own users writing to themselves.
func Incoming(env Envelope, r io.Reader, w io.Writer) (Verdict, *Reply) {
	c := newChecker(incoming, r, w)
	h, rep := readHeader(c.lr, maxHeaderBytes, maxHeaderLines)
	if rep != nil {
		return Verdict{}, rep
	}
	from, rep := h.fromAddress()
	if rep != nil {
		return Verdict{}, rep
	}
	h.write(c.out, incomingDropped, "")
	kind, rep := c.classify(h, env, from)
	if rep != nil {
		return Verdict{}, rep
	}
	if rep := c.flush(); rep != nil {
		return Verdict{}, rep
	}
	return Verdict{
		From: from,
		// SPEC section 5: a differing envelope sender is not a reason to
		// refuse, but bounces must not go to it.
		DropEnvelopeSender: env.From != "" && !strings.EqualFold(env.From, from),
		Kind:               kind,
	}, nil
}

// Append checks a message that user stores with IMAP APPEND into its own
// mailbox: it must be encrypted (an armor Version header is allowed), a
// SecureJoin request, or an Autocrypt Setup Message from user. r is copied
// to w unchanged.
func Append(user string, r io.Reader, w io.Writer) *Reply {
	if w == nil {
		w = io.Discard
	}
	t := &tee{r: r, w: w}
	c := newChecker(appending, t, nil)
	rep := c.appended(user)
	if rep != nil && t.werr != nil {
		return writeFailed(t.werr)
	}
	return rep
}

func (c *checker) appended(user string) *Reply {
	h, rep := readHeader(c.lr, maxHeaderBytes, maxHeaderLines)
	if rep != nil {
		return rep
	}
	// The From: field only matters for a setup message, so a missing or
	// odd one is not refused here.
	from, _ := h.fromAddress()
	_, rep = c.classify(h, Envelope{From: user, To: []string{user}}, from)
	return rep
}

// tee copies what is read from r to w, like io.TeeReader, and remembers a
// write error so that it is not reported as a read error.
type tee struct {
	r    io.Reader
	w    io.Writer
	werr error
}

func (t *tee) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		if _, werr := t.w.Write(p[:n]); werr != nil {
			t.werr = werr
			return n, werr
		}
	}
	return n, err
}

// checker streams one message through the checks.
type checker struct {
	dir  direction
	lr   *lineReader
	out  *bufio.Writer // nil when the output is taken care of elsewhere
	werr error
}

func newChecker(dir direction, r io.Reader, w io.Writer) *checker {
	c := &checker{dir: dir, lr: newLineReader(r)}
	if w != nil {
		c.out = bufio.NewWriterSize(w, 64<<10)
	}
	return c
}

// line returns the next body line and copies it to the output with CRLF.
func (c *checker) line() ([]byte, bool, *Reply) {
	l, eof, rep := c.lr.next()
	if rep != nil || eof {
		return nil, eof, rep
	}
	if c.out != nil {
		c.out.Write(l)
		if _, err := c.out.Write(crlf); err != nil {
			c.werr = err
		}
	}
	if c.werr != nil {
		return nil, false, writeFailed(c.werr)
	}
	return l, false, nil
}

// writeHeader copies a MIME part header section to the output unchanged.
func (c *checker) writeHeader(h *header) {
	if c.out != nil {
		h.write(c.out, nil, "")
	}
}

func (c *checker) flush() *Reply {
	if c.out == nil {
		return nil
	}
	if err := c.out.Flush(); err != nil {
		return writeFailed(err)
	}
	return nil
}

func writeFailed(err error) *Reply {
	r := *ErrWriteFailed
	r.err = err
	return &r
}

// passThrough copies the rest of the message.
func (c *checker) passThrough() *Reply {
	for {
		_, eof, rep := c.line()
		if rep != nil || eof {
			return rep
		}
	}
}

// classify decides what the message is from its header section and
// checks its body accordingly, streaming it to the output.
func (c *checker) classify(h *header, env Envelope, from string) (Kind, *Reply) {
	ct, rep := h.contentType()
	if rep != nil {
		return 0, rep
	}
	cte, rep := h.transferEncoding()
	if rep != nil {
		return 0, rep
	}
	secureJoin, sjFields := h.get("Secure-Join")

	switch {
	case ct.typ == "multipart/encrypted":
		return Encrypted, c.encrypted(ct, cte)

	case sjFields > 0:
		if sjFields > 1 {
			return 0, ErrMalformed.because("more than one Secure-Join field")
		}
		return SecureJoin, c.secureJoin(strings.ToLower(secureJoin), ct, cte)

	case ct.typ == "multipart/mixed":
		subject, _, rep := h.single("Subject")
		if rep != nil {
			return 0, rep
		}
		if subject != setupSubject {
			break
		}
		if !c.toOneself(env, from) {
			return 0, ErrEncryptionNeeded.because("setup message not to oneself")
		}
		return SetupMessage, c.passThrough()

	case ct.typ == "multipart/report" && c.dir == incoming:
		local, _, _ := strings.Cut(from, "@")
		if local != "mailer-daemon" {
			return 0, ErrEncryptionNeeded.because("report not from mailer-daemon")
		}
		if v, _ := h.get("Auto-Submitted"); v == "" {
			return 0, ErrEncryptionNeeded.because("report without Auto-Submitted")
		}
		return Bounce, c.passThrough()
	}
	return 0, ErrEncryptionNeeded.because("cleartext %s", ct.typ)
}

// toOneself reports whether a setup message goes to its sender only
// (Autocrypt Level 1, 4.4: it is sent to the user's own address).
func (c *checker) toOneself(env Envelope, from string) bool {
	switch c.dir {
	case outgoing:
		return len(env.To) == 1 && strings.EqualFold(env.To[0], env.From)
	case incoming:
		// The DKIM-checked From: is the identity that counts here.
		return len(env.To) == 1 && strings.EqualFold(env.To[0], from)
	}
	// Appending into one's own mailbox: From: must be the user.
	return strings.EqualFold(from, env.From)
}

// encrypted checks the body of a multipart/encrypted message: the two
// parts of RFC 3156 section 4, a version part and an armored OpenPGP
// message.
func (c *checker) encrypted(ct mediaType, cte string) *Reply {
	if !multipartEncoding(cte) {
		return ErrEncryptionNeeded.because("multipart with transfer encoding %s", cte)
	}
	// RFC 1847 2.2 requires the protocol parameter; RFC 3156 4 fixes its
	// value. A missing one is tolerated: the parts are checked anyway.
	if p, ok := ct.params["protocol"]; ok && !strings.EqualFold(p, "application/pgp-encrypted") {
		return ErrEncryptionNeeded.because("multipart/encrypted protocol %q", p)
	}
	return c.multipart(ct, 2, func(i int, h *header) (partBody, *Reply) {
		pt, rep := h.contentType()
		if rep != nil {
			return nil, rep
		}
		pcte, rep := h.transferEncoding()
		if rep != nil {
			return nil, rep
		}
		if !identityEncoding(pcte) {
			return nil, ErrEncryptionNeeded.because("part %d transfer encoding %s", i, pcte)
		}
		if strings.HasPrefix(pt.typ, "multipart/") {
			return nil, ErrEncryptionNeeded.because("nested multipart")
		}
		switch {
		case i == 1 && pt.typ == "application/pgp-encrypted":
			return &textPart{want: "Version: 1"}, nil
		case i == 2 && pt.typ == "application/octet-stream":
			return &armorPart{a: armorChecker{strict: c.dir == outgoing}}, nil
		}
		return nil, ErrEncryptionNeeded.because("part %d is %s", i, pt.typ)
	})
}

// secureJoin checks the cleartext first message of SecureJoin: a
// "Secure-Join: vc-request" (or vg-request) field and a body that says the
// same in one text/plain part, either the message itself or the only part
// of a multipart/mixed, as Delta Chat sends it.
func (c *checker) secureJoin(step string, ct mediaType, cte string) *Reply {
	if step != "vc-request" && step != "vg-request" {
		return ErrEncryptionNeeded.because("cleartext Secure-Join step")
	}
	want := "secure-join: " + step
	if ct.typ == "text/plain" {
		p, rep := secureJoinPart(want, cte)
		if rep != nil {
			return rep
		}
		return c.single(p)
	}
	if ct.typ != "multipart/mixed" {
		return ErrEncryptionNeeded.because("Secure-Join in %s", ct.typ)
	}
	if !multipartEncoding(cte) {
		return ErrEncryptionNeeded.because("multipart with transfer encoding %s", cte)
	}
	return c.multipart(ct, 1, func(_ int, h *header) (partBody, *Reply) {
		pt, rep := h.contentType()
		if rep != nil {
			return nil, rep
		}
		if pt.typ != "text/plain" {
			return nil, ErrEncryptionNeeded.because("Secure-Join part is %s", pt.typ)
		}
		pcte, rep := h.transferEncoding()
		if rep != nil {
			return nil, rep
		}
		return secureJoinPart(want, pcte)
	})
}

func secureJoinPart(want, cte string) (*textPart, *Reply) {
	switch cte {
	case "7bit", "8bit":
		return &textPart{want: want, fold: true}, nil
	case "quoted-printable":
		// The text has nothing to escape, so quoted-printable leaves it
		// as is, provided no escape appears (RFC 2045 6.7).
		return &textPart{want: want, fold: true, noEquals: true}, nil
	}
	return nil, ErrEncryptionNeeded.because("Secure-Join transfer encoding %s", cte)
}

// single checks a non-multipart message body with p.
func (c *checker) single(p partBody) *Reply {
	for {
		l, eof, rep := c.line()
		if rep != nil {
			return rep
		}
		if eof {
			return p.end()
		}
		if rep := p.line(l); rep != nil {
			return rep
		}
	}
}

// multipartEncoding reports whether cte is allowed on a multipart entity
// (RFC 2045 6.4).
func multipartEncoding(cte string) bool {
	return cte == "7bit" || cte == "8bit" || cte == "binary"
}

// partBody checks the body of one MIME part, line by line.
type partBody interface {
	line(l []byte) *Reply
	end() *Reply
}

// multipart streams the body of a multipart entity (RFC 2046 5.1.1) that
// must have exactly want parts, each checked by the partBody that part
// returns for its header section. The preamble and the epilogue are
// ignored, as the RFC says; Delta Chat and others put a sentence there.
func (c *checker) multipart(ct mediaType, want int, part func(i int, h *header) (partBody, *Reply)) *Reply {
	boundary := ct.params["boundary"]
	if len(boundary) == 0 || len(boundary) > maxBoundary {
		return ErrMalformed.because("bad multipart boundary")
	}
	delim := make([]byte, 0, 2+len(boundary))
	delim = append(append(delim, "--"...), boundary...)

	var cur partBody
	parts := 0
	for {
		l, eof, rep := c.line()
		if rep != nil {
			return rep
		}
		if eof {
			return ErrEncryptionNeeded.because("multipart without close delimiter")
		}
		last, isDelim := delimiter(l, delim)
		if !isDelim {
			if cur != nil {
				if rep := cur.line(l); rep != nil {
					return rep
				}
			}
			continue
		}
		if cur != nil {
			if rep := cur.end(); rep != nil {
				return rep
			}
			cur = nil
		}
		if last {
			if parts != want {
				return ErrEncryptionNeeded.because("%d MIME parts, want %d", parts, want)
			}
			return c.passThrough()
		}
		parts++
		if parts > want {
			return ErrEncryptionNeeded.because("more than %d MIME parts", want)
		}
		h, rep := readHeader(c.lr, maxPartHeaderBytes, maxPartHeaderLines)
		if rep != nil {
			return rep
		}
		c.writeHeader(h)
		if cur, rep = part(parts, h); rep != nil {
			return rep
		}
	}
}

// delimiter reports whether l is a boundary delimiter line for delim
// ("--" boundary), and whether it is the close delimiter. Linear white
// space may follow (RFC 2046 5.1.1).
func delimiter(l, delim []byte) (last, ok bool) {
	if !bytes.HasPrefix(l, delim) {
		return false, false
	}
	rest := l[len(delim):]
	if bytes.HasPrefix(rest, []byte("--")) {
		last, rest = true, rest[2:]
	}
	return last, len(bytes.TrimRight(rest, " \t")) == 0
}

// textPart accepts a short body whose text, without surrounding white
// space, is want.
type textPart struct {
	want     string
	fold     bool // compare case-insensitively
	noEquals bool // refuse "=" (quoted-printable escapes)
	buf      []byte
}

func (p *textPart) line(l []byte) *Reply {
	if len(p.buf)+len(l)+2 > maxSmallBody {
		return ErrEncryptionNeeded.because("part body too long")
	}
	p.buf = append(append(p.buf, l...), '\n')
	return nil
}

func (p *textPart) end() *Reply {
	got := string(bytes.TrimSpace(p.buf))
	if p.noEquals && strings.Contains(got, "=") {
		return ErrEncryptionNeeded.because("quoted-printable escape in text part")
	}
	if got == p.want || p.fold && strings.EqualFold(got, p.want) {
		return nil
	}
	return ErrEncryptionNeeded.because("unexpected text part body")
}

// armorPart checks the armored OpenPGP message of an encrypted message.
type armorPart struct{ a armorChecker }

func (p *armorPart) line(l []byte) *Reply {
	if err := p.a.line(l); err != nil {
		return ErrEncryptionNeeded.because("%v", err)
	}
	return nil
}

func (p *armorPart) end() *Reply {
	if err := p.a.end(); err != nil {
		return ErrEncryptionNeeded.because("%v", err)
	}
	return nil
}
