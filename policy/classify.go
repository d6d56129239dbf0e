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

// Bounds on MIME boundaries.
const (
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
// When env.Authenticated is set, the From: domain read here must be that
// domain, which the caller verified on its own reading of From:.
//
// Besides encrypted and SecureJoin messages it lets through bounces
// (multipart/report of report-type delivery-status from mailer-daemon at
// env.Authenticated, with Auto-Submitted, at most 64 KiB) and an
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
	if _, domain, _ := strings.Cut(from, "@"); env.Authenticated != "" && !strings.EqualFold(domain, env.Authenticated) {
		// The caller verified another reading of From: than this one.
		return Verdict{}, ErrDKIM("From header read differently").because("From domain %q, verified %q", domain, env.Authenticated)
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
	if rep := h.checkUnique(); rep != nil {
		return 0, rep
	}
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
		return Encrypted, c.encrypted(h, ct, cte)

	case sjFields > 0:
		return SecureJoin, c.secureJoin(h, strings.ToLower(secureJoin), ct, cte)

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
		return Bounce, c.bounce(h, ct, env, from)
	}
	return 0, ErrEncryptionNeeded.because("cleartext %s", ct.typ)
}

// maxBounce bounds a cleartext bounce, header included (SPEC section 5):
// enough for a delivery status notification with the returned headers,
// too little to carry much else.
const maxBounce = 64 << 10

// bounce checks a cleartext delivery status notification (RFC 3464): a
// multipart/report of report-type delivery-status from mailer-daemon at
// the domain the caller verified (env.Authenticated: DKIM d=, or the
// connecting IP for an address literal), marked Auto-Submitted (RFC 3834
// 5) with any value but "no", and at most maxBounce octets in all.
func (c *checker) bounce(h *header, ct mediaType, env Envelope, from string) *Reply {
	local, domain, _ := strings.Cut(from, "@")
	if local != "mailer-daemon" {
		return ErrEncryptionNeeded.because("report not from mailer-daemon")
	}
	if env.Authenticated == "" || !strings.EqualFold(domain, env.Authenticated) {
		return ErrEncryptionNeeded.because("report from mailer-daemon of an unverified domain")
	}
	if !strings.EqualFold(ct.params["report-type"], "delivery-status") {
		return ErrEncryptionNeeded.because("report that is not a delivery status")
	}
	// The keyword is the leading token (RFC 3834 5): "no (x)" and
	// "no; x" are "no" to a reader that strips comments and parameters.
	as, _ := h.get("Auto-Submitted")
	n := 0
	for n < len(as) && isTokenChar(as[n]) {
		n++
	}
	if as = strings.ToLower(as[:n]); as == "" || as == "no" {
		return ErrEncryptionNeeded.because("report without Auto-Submitted")
	}
	for {
		_, eof, rep := c.line()
		if rep != nil {
			return rep
		}
		if c.lr.n > maxBounce {
			return ErrEncryptionNeeded.because("report larger than %d octets", maxBounce)
		}
		if eof {
			return nil
		}
	}
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

// encrypted checks the body of a multipart/encrypted message: exactly the
// two parts of RFC 3156 section 4, a version part and an armored OpenPGP
// message, with MIME-Version 1.0 and the protocol parameter RFC 1847 2.2
// requires.
func (c *checker) encrypted(h *header, ct mediaType, cte string) *Reply {
	if rep := h.mimeVersion(); rep != nil {
		return rep
	}
	if !multipartEncoding(cte) {
		return ErrEncryptionNeeded.because("multipart with transfer encoding %s", cte)
	}
	if why := ct.allowedParams("boundary", "protocol"); why != "" {
		return ErrEncryptionNeeded.because("%s", why)
	}
	if p := ct.params["protocol"]; !strings.EqualFold(p, "application/pgp-encrypted") {
		return ErrEncryptionNeeded.because("multipart/encrypted protocol %q", p)
	}
	return c.multipart(ct, 2, func(i int, h *header) (partBody, *Reply) {
		if rep := checkPartHeader(h); rep != nil {
			return nil, rep
		}
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
			if why := pt.allowedParams("charset"); why != "" {
				return nil, ErrEncryptionNeeded.because("%s", why)
			}
			return &textPart{want: "Version: 1"}, nil
		case i == 2 && pt.typ == "application/octet-stream":
			if why := pt.allowedParams("charset", "name"); why != "" {
				return nil, ErrEncryptionNeeded.because("%s", why)
			}
			return &armorPart{a: armorChecker{strict: c.dir == outgoing}}, nil
		}
		return nil, ErrEncryptionNeeded.because("part %d is %s", i, pt.typ)
	})
}

// secureJoin checks the cleartext first message of SecureJoin: a
// "Secure-Join: vc-request" (or vg-request) field and a body that says the
// same in one non-multipart text/plain part, either the message itself or
// the only part of a multipart/mixed, as Delta Chat sends it.
func (c *checker) secureJoin(h *header, step string, ct mediaType, cte string) *Reply {
	if step != "vc-request" && step != "vg-request" {
		return ErrEncryptionNeeded.because("cleartext Secure-Join step")
	}
	if rep := h.mimeVersion(); rep != nil {
		return rep
	}
	want := "secure-join: " + step
	if ct.typ == "text/plain" {
		p, rep := secureJoinPart(want, ct, cte)
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
	if why := ct.allowedParams("boundary"); why != "" {
		return ErrEncryptionNeeded.because("%s", why)
	}
	return c.multipart(ct, 1, func(_ int, h *header) (partBody, *Reply) {
		if rep := checkPartHeader(h); rep != nil {
			return nil, rep
		}
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
		return secureJoinPart(want, pt, pcte)
	})
}

func secureJoinPart(want string, ct mediaType, cte string) (*textPart, *Reply) {
	if why := ct.allowedParams("charset", "format", "delsp"); why != "" {
		return nil, ErrEncryptionNeeded.because("Secure-Join %s", why)
	}
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

// maxPadLines bounds the lines of white space allowed where no text may
// be: the preamble and the epilogue of a multipart, around the text of a
// small part, around the armor. Delta Chat writes one empty line in each.
const maxPadLines = 4

// maxPadLine bounds the white space of one such blank line, and the
// white space around a line of text: spaces and tabs could carry text too.
const maxPadLine = 16

// isBlank reports whether l is empty or a little white space.
func isBlank(l []byte) bool {
	return len(l) <= maxPadLine && len(bytes.Trim(l, " \t")) == 0
}

// multipart streams the body of a multipart entity (RFC 2046 5.1.1) that
// must have exactly want parts, each checked by the partBody that part
// returns for its header section.
//
// The preamble and the epilogue may hold a few blank lines and nothing
// else: text there is cleartext that some readers show, and a preamble
// line that starts with "--" is taken for a delimiter by some parsers.
// Every line that starts with "--" and the boundary must be exactly a
// delimiter ("--b") or the close delimiter ("--b--"): mailparse takes any
// line with that prefix for one, so "--b--text", "--b " or "--bX" (a
// longer boundary) are refused rather than read one way here and another
// way there.
func (c *checker) multipart(ct mediaType, want int, part func(i int, h *header) (partBody, *Reply)) *Reply {
	boundary := ct.params["boundary"]
	if !validBoundary(boundary) {
		return ErrEncryptionNeeded.because("bad multipart boundary")
	}
	delim := make([]byte, 0, 2+len(boundary))
	delim = append(append(delim, "--"...), boundary...)

	var cur partBody
	parts, pad := 0, 0
	for {
		l, eof, rep := c.line()
		if rep != nil {
			return rep
		}
		if eof {
			return ErrEncryptionNeeded.because("multipart without close delimiter")
		}
		if !bytes.HasPrefix(l, delim) {
			if cur != nil {
				if rep := cur.line(l); rep != nil {
					return rep
				}
				continue
			}
			if !isBlank(l) {
				return ErrEncryptionNeeded.because("text in the preamble")
			}
			if pad++; pad > maxPadLines {
				return ErrEncryptionNeeded.because("preamble too long")
			}
			continue
		}
		var last bool
		switch rest := l[len(delim):]; {
		case len(rest) == 0:
		case string(rest) == "--":
			last = true
		default:
			return ErrEncryptionNeeded.because("line that starts with the boundary is not a delimiter")
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
			return c.epilogue()
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

// epilogue checks what follows the close delimiter: a few blank lines.
func (c *checker) epilogue() *Reply {
	for pad := 0; ; pad++ {
		l, eof, rep := c.line()
		if rep != nil || eof {
			return rep
		}
		if !isBlank(l) {
			return ErrEncryptionNeeded.because("text in the epilogue")
		}
		if pad >= maxPadLines {
			return ErrEncryptionNeeded.because("epilogue too long")
		}
	}
}

// textPart accepts a short body that is one line of text, want, with at
// most maxPadLines blank lines around it. Surrounding white space on the
// line is ignored.
type textPart struct {
	want     string
	fold     bool // compare case-insensitively
	noEquals bool // refuse "=" (quoted-printable escapes)
	got      []byte
	seen     bool
	pad      int
}

func (p *textPart) line(l []byte) *Reply {
	if isBlank(l) {
		if p.pad++; p.pad > maxPadLines {
			return ErrEncryptionNeeded.because("too many blank lines in a text part")
		}
		return nil
	}
	if p.seen {
		return ErrEncryptionNeeded.because("unexpected text part body")
	}
	if len(l) > len(p.want)+maxPadLine {
		return ErrEncryptionNeeded.because("part body too long")
	}
	p.seen = true
	p.got = append(p.got[:0], bytes.Trim(l, " \t")...)
	return nil
}

func (p *textPart) end() *Reply {
	got := string(p.got)
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
