package mailbox

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

// FETCH reads message files as streams: what a connection holds while it
// answers does not grow with the message, the part asked for or the number
// of parts (see docs/SECURITY.md, "Memory exhaustion by FETCH"). A literal
// announces its size before its bytes, so a section that is not a plain
// range of the file is extracted twice: once counting, once writing. The
// extraction follows go-imap's (imapserver.ExtractBodySection and friends)
// step by step, with the same go-message parsers, so the bytes are the
// same; what differs is that nothing is gathered in a buffer, and these
// bounds:
const (
	// maxHeaderRead bounds the bytes read to parse one header block (the
	// message's, a part's, an attached message's): the most the policy
	// accepts for a message's header. A header beyond it is treated like a
	// malformed one: the section is empty.
	maxHeaderRead = 1 << 20
	// maxPartDepth bounds the nesting followed: a part path longer than
	// this names no part, and BODYSTRUCTURE describes deeper multiparts
	// and attached messages as opaque parts.
	maxPartDepth = 32
	// maxStructParts and maxStructHeaders bound what one BODYSTRUCTURE
	// holds: further parts are left out of it.
	maxStructParts   = 1000
	maxStructHeaders = 1 << 20
)

// errHeaderTooBig is what a header read past maxHeaderRead meets.
var errHeaderTooBig = errors.New("mailbox: message header too big")

// headerGuard lets reads through; while armed, at most its budget, and
// once that is spent it fails for good (the readers above it are then in
// the middle of a header and of no further use).
type headerGuard struct {
	r     io.Reader
	armed bool
	left  int64
	err   error
}

func (g *headerGuard) arm()    { g.armed, g.left = true, maxHeaderRead }
func (g *headerGuard) disarm() { g.armed = false }

func (g *headerGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.armed {
		if g.left <= 0 {
			g.err = errHeaderTooBig
			return 0, g.err
		}
		if int64(len(p)) > g.left {
			p = p[:g.left]
		}
	}
	n, err := g.r.Read(p)
	if g.armed {
		g.left -= int64(n)
	}
	return n, err
}

// readHeader reads a header block from r as textproto.ReadHeader does
// from bufio.NewReader(r), reading at most maxHeaderRead bytes (plus one
// buffer) for it; the returned reader goes on with the body.
func readHeader(r io.Reader) (textproto.Header, *bufio.Reader, error) {
	g := &headerGuard{r: r}
	br := bufio.NewReader(g)
	g.arm()
	h, err := textproto.ReadHeader(br)
	g.disarm()
	if g.err != nil {
		err = g.err
	}
	return h, br, err
}

// multipart is textproto.MultipartReader with part headers read under the
// same bound.
type multipart struct {
	g   *headerGuard
	mr  *textproto.MultipartReader
	cur *textproto.Part
}

func newMultipart(r io.Reader, boundary string) *multipart {
	g := &headerGuard{r: r}
	return &multipart{g: g, mr: textproto.NewMultipartReader(g, boundary)}
}

func (m *multipart) next() (*textproto.Part, error) {
	if m.cur != nil {
		// What NextPart would skip itself, but not under the bound.
		m.cur.Close()
	}
	m.g.arm()
	p, err := m.mr.NextPart()
	m.g.disarm()
	if m.g.err != nil {
		return nil, m.g.err
	}
	m.cur = p
	return p, err
}

// findPart is go-imap's findMessagePart (section numbers, RFC 9051 section
// 6.4.5) with bounded headers and depth.
func findPart(header textproto.Header, body io.Reader, path []int) (string, textproto.Header, io.Reader, error) {
	mh := gomessage.Header{Header: header}
	mediaType, _, _ := mh.ContentType()
	if !strings.HasPrefix(mediaType, "multipart/") && len(path) > 0 && path[0] == 1 {
		path = path[1:]
	}
	if len(path) > maxPartDepth {
		return "", textproto.Header{}, nil, errNoPart
	}
	var parentType string
	for _, num := range path {
		var err error
		header, body, err = openAttached(header, body, parentType)
		if err != nil {
			return "", textproto.Header{}, nil, err
		}
		mh := gomessage.Header{Header: header}
		mediaType, params, _ := mh.ContentType()
		if !strings.HasPrefix(mediaType, "multipart/") {
			if num != 1 {
				return "", textproto.Header{}, nil, errNoPart
			}
			continue
		}
		mp := newMultipart(body, params["boundary"])
		var p *textproto.Part
		for j := 1; j <= num; j++ {
			if p, err = mp.next(); err != nil {
				return "", textproto.Header{}, nil, errNoPart
			}
		}
		parentType, header, body = mediaType, p.Header, p
	}
	return parentType, header, body, nil
}

var errNoPart = errors.New("mailbox: no such part")

// openAttached is go-imap's openMessagePart: the header and body of an
// attached message (or of a digest's default part); other parts as they
// are. A header it cannot read whole leaves the body unreadable.
func openAttached(header textproto.Header, body io.Reader, parentType string) (textproto.Header, io.Reader, error) {
	mh := gomessage.Header{Header: header}
	mediaType, _, _ := mh.ContentType()
	if !mh.Has("Content-Type") && parentType == "multipart/digest" {
		mediaType = "message/rfc822"
	}
	if mediaType == "message/rfc822" || mediaType == "message/global" {
		h, br, err := readHeader(body)
		if errors.Is(err, errHeaderTooBig) {
			return h, nil, err
		}
		// go-imap goes on after other header errors, with what was read.
		return h, br, nil
	}
	return header, body, nil
}

// writeBodySection writes what imapserver.ExtractBodySection returns for
// item, without its partial range, from the message in r.
func writeBodySection(w io.Writer, r io.Reader, item *imap.FetchItemBodySection) error {
	header, br, err := readHeader(r)
	if err != nil {
		return err
	}
	parentType, header, body, err := findPart(header, br, item.Part)
	if err != nil {
		return err
	}
	if len(item.Part) > 0 {
		switch item.Specifier {
		case imap.PartSpecifierHeader, imap.PartSpecifierText:
			if header, body, err = openAttached(header, body, parentType); err != nil {
				return err
			}
		}
	}
	if len(item.HeaderFields) > 0 {
		keep := make(map[string]struct{}, len(item.HeaderFields))
		for _, k := range item.HeaderFields {
			keep[strings.ToLower(k)] = struct{}{}
		}
		for f := header.Fields(); f.Next(); {
			if _, ok := keep[strings.ToLower(f.Key())]; !ok {
				f.Del()
			}
		}
	}
	for _, k := range item.HeaderFieldsNot {
		header.Del(k)
	}
	writeHeader := true
	switch item.Specifier {
	case imap.PartSpecifierNone:
		writeHeader = len(item.Part) == 0
	case imap.PartSpecifierText:
		writeHeader = false
	}
	if writeHeader {
		if err := textproto.WriteHeader(w, header); err != nil {
			return err
		}
	}
	switch item.Specifier {
	case imap.PartSpecifierNone, imap.PartSpecifierText:
		if _, err := copyBuffered(w, body); err != nil {
			return err
		}
	}
	return nil
}

// writeBinarySection writes what imapserver.ExtractBinarySection returns
// for item, without its partial range: the part with its
// Content-Transfer-Encoding undone (RFC 3516).
func writeBinarySection(w io.Writer, r io.Reader, part []int) error {
	header, br, err := readHeader(r)
	if err != nil {
		return err
	}
	_, header, body, err := findPart(header, br, part)
	if err != nil {
		return err
	}
	e, err := gomessage.New(gomessage.Header{Header: header}, body)
	if err != nil {
		return err
	}
	if len(part) == 0 {
		if err := textproto.WriteHeader(w, e.Header.Header); err != nil {
			return err
		}
	}
	_, err = copyBuffered(w, e.Body)
	return err
}

var copyBufs = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// copyBuffered is io.Copy with a pooled buffer.
func copyBuffered(w io.Writer, r io.Reader) (int64, error) {
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	return io.CopyBuffer(w, r, buf[:])
}

// counter is a writer that only counts.
type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// errWindowDone ends a write once the partial range is written.
var errWindowDone = errors.New("mailbox: partial range written")

// window passes on the bytes of [off, off+n) of what is written to it.
type window struct {
	w      io.Writer
	off, n int64
}

func (win *window) Write(p []byte) (int, error) {
	total := len(p)
	if win.off >= int64(len(p)) {
		win.off -= int64(len(p))
		return total, nil
	}
	p = p[win.off:]
	win.off = 0
	if int64(len(p)) > win.n {
		p = p[:win.n]
	}
	if _, err := win.w.Write(p); err != nil {
		return 0, err
	}
	win.n -= int64(len(p))
	if win.n == 0 {
		return total, errWindowDone
	}
	return total, nil
}

// partialRange is the part of a section of size total that partial asks
// for, as go-imap cuts it.
func partialRange(total int64, partial *imap.SectionPartial) (off, n int64) {
	if partial == nil {
		return 0, total
	}
	if partial.Offset > total {
		return 0, 0
	}
	end := partial.Offset + partial.Size
	if end > total || end < partial.Offset {
		end = total
	}
	return partial.Offset, end - partial.Offset
}

// streamSection writes a section as a literal: extract counts it, then
// writes it into the literal that literal opens. An extraction that fails
// is an empty section, as in go-imap.
func streamSection(open func() io.Reader, extract func(w io.Writer, r io.Reader) error, partial *imap.SectionPartial, literal func(size int64) io.WriteCloser) error {
	var c counter
	if err := extract(&c, open()); err != nil {
		c.n = 0
	}
	off, n := partialRange(c.n, partial)
	wc := literal(n)
	var err error
	if n > 0 {
		err = extract(&window{w: wc, off: off, n: n}, open())
		if errors.Is(err, errWindowDone) {
			err = nil
		}
	}
	if cerr := wc.Close(); err == nil {
		err = cerr
	}
	return err
}

// structBudget is what one BODYSTRUCTURE may still hold.
type structBudget struct {
	parts   int
	headers int64
}

// take accounts for a part with header h; false when the structure is
// full.
func (b *structBudget) take(h textproto.Header) bool {
	var c counter
	textproto.WriteHeader(&c, h)
	if b.parts <= 0 || b.headers < c.n {
		b.parts = 0
		return false
	}
	b.parts--
	b.headers -= c.n
	return true
}

// bodyStructure is what imapserver.ExtractBodyStructure returns for the
// message in r, read as a stream: part sizes and line counts are counted,
// not buffered, and the bounds above apply.
func bodyStructure(r io.Reader) imap.BodyStructure {
	header, br, err := readHeader(r)
	b := &structBudget{parts: maxStructParts, headers: maxStructHeaders}
	b.take(header)
	if errors.Is(err, errHeaderTooBig) {
		return partStructure(header, eofReader{}, b, maxPartDepth)
	}
	// go-imap goes on after other header errors.
	return partStructure(header, br, b, 0)
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// emptyPart stands for the children of a multipart that has none that can
// be read (imapserver refuses to write a multipart without children).
func emptyPart() imap.BodyStructure {
	return &imap.BodyStructureSinglePart{
		Type: "text", Subtype: "plain", Params: map[string]string{"charset": "us-ascii"},
		Text:     &imap.BodyStructureText{},
		Extended: &imap.BodyStructureSinglePartExt{},
	}
}

func partStructure(rawHeader textproto.Header, r io.Reader, b *structBudget, depth int) imap.BodyStructure {
	header := gomessage.Header{Header: rawHeader}
	mediaType, typeParams, _ := header.ContentType()
	primaryType, subType, _ := strings.Cut(mediaType, "/")

	if primaryType == "multipart" && depth < maxPartDepth {
		bs := &imap.BodyStructureMultiPart{Subtype: subType}
		mp := newMultipart(r, typeParams["boundary"])
		for {
			part, _ := mp.next()
			if part == nil || !b.take(part.Header) {
				break
			}
			bs.Children = append(bs.Children, partStructure(part.Header, part, b, depth+1))
		}
		// Parts left out still count in the sizes of the parts around.
		io.Copy(io.Discard, r)
		if len(bs.Children) == 0 {
			bs.Children = []imap.BodyStructure{emptyPart()}
		}
		bs.Extended = &imap.BodyStructureMultiPartExt{
			Params:      typeParams,
			Disposition: disposition(header),
			Language:    language(header),
			Location:    header.Get("Content-Location"),
		}
		return bs
	}

	cr := &lineCounter{r: r}
	bs := &imap.BodyStructureSinglePart{
		Type:        primaryType,
		Subtype:     subType,
		Params:      typeParams,
		ID:          header.Get("Content-Id"),
		Description: header.Get("Content-Description"),
		Encoding:    header.Get("Content-Transfer-Encoding"),
	}
	var msg *imap.BodyStructureMessageRFC822
	if (mediaType == "message/rfc822" || mediaType == "message/global") && depth < maxPartDepth {
		childHeader, br, err := readHeader(cr)
		msg = &imap.BodyStructureMessageRFC822{Envelope: imapserver.ExtractEnvelope(childHeader)}
		if errors.Is(err, errHeaderTooBig) || !b.take(childHeader) {
			msg.BodyStructure = partStructure(textproto.Header{}, eofReader{}, b, maxPartDepth)
		} else {
			msg.BodyStructure = partStructure(childHeader, br, b, depth+1)
		}
	}
	copyBuffered(io.Discard, cr)
	bs.Size = uint32(cr.n)
	if msg != nil {
		msg.NumLines = cr.lines
		bs.MessageRFC822 = msg
	}
	if primaryType == "text" {
		bs.Text = &imap.BodyStructureText{NumLines: cr.lines}
	}
	bs.Extended = &imap.BodyStructureSinglePartExt{
		Disposition: disposition(header),
		Language:    language(header),
		Location:    header.Get("Content-Location"),
	}
	return bs
}

// lineCounter counts the bytes and line feeds read through it.
type lineCounter struct {
	r     io.Reader
	n     int64
	lines int64
}

func (c *lineCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.lines += int64(bytes.Count(p[:n], []byte{'\n'}))
	return n, err
}

func disposition(h gomessage.Header) *imap.BodyStructureDisposition {
	value, params, _ := h.ContentDisposition()
	if value == "" {
		return nil
	}
	return &imap.BodyStructureDisposition{Value: value, Params: params}
}

// language is Content-Language as a list (RFC 3282), split at commas.
func language(h gomessage.Header) []string {
	v := h.Get("Content-Language")
	if v == "" {
		return nil
	}
	l := strings.Split(v, ",")
	for i := range l {
		l[i] = strings.TrimSpace(l[i])
	}
	return l
}
