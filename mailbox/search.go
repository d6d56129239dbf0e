package mailbox

import (
	"bytes"
	"io"
	"net/mail"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"
)

func (c *imapSession) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	ts := c.resolve(imap.SeqSet{{Start: 1, Stop: 0}})
	var maxSeq uint32
	var maxUID imap.UID
	for _, t := range ts {
		maxSeq = max(maxSeq, c.sel.encode(t.seq))
		maxUID = max(maxUID, t.uid)
	}
	criteria = staticCriteria(criteria, maxSeq, maxUID)
	var data imap.SearchData
	var seqs imap.SeqSet
	var uids imap.UIDSet
	for len(ts) > 0 {
		chunk := ts
		if len(chunk) > fetchChunk {
			chunk = chunk[:fetchChunk]
		}
		ts = ts[len(chunk):]
		recs, err := c.loadRecords(chunk)
		if err != nil {
			return nil, c.internal("search", err)
		}
		for i, t := range chunk {
			seq := c.sel.encode(t.seq)
			if recs[i] == nil || seq == 0 {
				continue
			}
			m := &searchMsg{c: c, seq: seq, uid: t.uid, rec: recs[i]}
			ok := m.match(criteria)
			m.close()
			if !ok {
				continue
			}
			uids.AddNum(t.uid)
			num := uint32(t.uid)
			if kind == imapserver.NumKindSeq {
				seqs.AddNum(seq)
				num = seq
			}
			if data.Min == 0 || num < data.Min {
				data.Min = num
			}
			if num > data.Max {
				data.Max = num
			}
			data.Count++
		}
	}
	if kind == imapserver.NumKindSeq {
		data.All = seqs
	} else {
		data.All = uids
	}
	if options != nil && options.ReturnSave {
		c.sel.searchRes = uids
	}
	return &data, nil
}

// staticCriteria is cr with every "*" replaced by the last message's
// number: "*" is the last message in the mailbox (RFC 3501 section 9,
// "seq-number"), not a number larger than all others.
func staticCriteria(cr *imap.SearchCriteria, maxSeq uint32, maxUID imap.UID) *imap.SearchCriteria {
	out := *cr
	out.SeqNum = make([]imap.SeqSet, len(cr.SeqNum))
	for i, set := range cr.SeqNum {
		out.SeqNum[i] = staticSeqSet(set, maxSeq)
	}
	out.UID = make([]imap.UIDSet, len(cr.UID))
	for i, set := range cr.UID {
		out.UID[i] = staticUIDSet(set, maxUID)
	}
	out.Not = make([]imap.SearchCriteria, len(cr.Not))
	for i := range cr.Not {
		out.Not[i] = *staticCriteria(&cr.Not[i], maxSeq, maxUID)
	}
	out.Or = make([][2]imap.SearchCriteria, len(cr.Or))
	for i, or := range cr.Or {
		out.Or[i] = [2]imap.SearchCriteria{
			*staticCriteria(&or[0], maxSeq, maxUID),
			*staticCriteria(&or[1], maxSeq, maxUID),
		}
	}
	return &out
}

type searchMsg struct {
	c      *imapSession
	seq    uint32
	uid    imap.UID
	rec    *MessageRecord
	f      *os.File
	opened bool
	hdr    *textproto.Header
}

// file opens the message file once; nil if it cannot be read.
func (m *searchMsg) file() *os.File {
	if !m.opened {
		m.opened = true
		m.f, _ = os.Open(m.c.s.msgPath(m.c.acc.ID, m.rec.File))
	}
	return m.f
}

func (m *searchMsg) close() {
	if m.f != nil {
		m.f.Close()
	}
}

// content is the message as a fresh stream; the file is read in pieces,
// never whole (docs/SECURITY.md, "Memory exhaustion by FETCH").
func (m *searchMsg) content() io.Reader {
	f := m.file()
	if f == nil {
		return strings.NewReader("")
	}
	return io.NewSectionReader(f, 0, m.rec.Size)
}

func (m *searchMsg) header() textproto.Header {
	if m.hdr == nil {
		// A header past the bound of readHeader is searched as far as read.
		h, _, _ := readHeader(m.content())
		m.hdr = &h
	}
	return *m.hdr
}

// body is what follows the first empty line, or the whole message if
// there is none.
func (m *searchMsg) body() io.Reader {
	f := m.file()
	if f == nil {
		return strings.NewReader("")
	}
	if off := indexStream(m.content(), []byte("\r\n\r\n")); off >= 0 {
		return io.NewSectionReader(f, off+4, m.rec.Size-off-4)
	}
	return m.content()
}

func containsFold(hay []byte, needle string) bool {
	return bytes.Contains(bytes.ToLower(hay), []byte(strings.ToLower(needle)))
}

// searchChunk is how much of a message a text search holds at once.
const searchChunk = 32 << 10

// indexStream returns the offset of the first sep in r, or -1.
func indexStream(r io.Reader, sep []byte) int64 {
	buf := make([]byte, searchChunk)
	var base int64 // offset of buf[0] in r
	keep := 0
	for {
		n, err := io.ReadFull(r, buf[keep:])
		data := buf[:keep+n]
		if i := bytes.Index(data, sep); i >= 0 {
			return base + int64(i)
		}
		if err != nil {
			return -1
		}
		keep = min(len(sep)-1, len(data))
		base += int64(len(data) - keep)
		copy(buf, data[len(data)-keep:])
	}
}

// containsFoldStream reports whether r holds needle, ignoring case as
// containsFold does, reading r in pieces.
func containsFoldStream(r io.Reader, needle string) bool {
	n := []byte(strings.ToLower(needle))
	if len(n) == 0 {
		return true
	}
	buf := make([]byte, searchChunk)
	var carry []byte // the lowered end of what was searched, len(n)-1 at most
	pending := 0     // the start of a character cut off at the end of buf
	for {
		k, err := io.ReadFull(r, buf[pending:])
		data := buf[:pending+k]
		cut := len(data)
		if err == nil {
			// Lower whole characters only: keep an incomplete one back.
			for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
				if utf8.RuneStart(data[i]) {
					if !utf8.FullRune(data[i:]) {
						cut = i
					}
					break
				}
			}
		}
		hay := append(carry, bytes.ToLower(data[:cut])...)
		if bytes.Contains(hay, n) {
			return true
		}
		if err != nil {
			return false
		}
		carry = append(carry[:0:0], hay[max(0, len(hay)-(len(n)-1)):]...)
		pending = copy(buf, data[cut:])
	}
}

func (m *searchMsg) match(cr *imap.SearchCriteria) bool {
	for _, set := range cr.SeqNum {
		if !set.Contains(m.seq) {
			return false
		}
	}
	for _, set := range cr.UID {
		if !set.Contains(m.uid) {
			return false
		}
	}
	day := func(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC) }
	if !cr.Since.IsZero() && day(m.rec.Date).Before(cr.Since) {
		return false
	}
	if !cr.Before.IsZero() && !day(m.rec.Date).Before(cr.Before) {
		return false
	}
	if !cr.SentSince.IsZero() || !cr.SentBefore.IsZero() {
		h := m.header()
		t, err := mailDate(h.Get("Date"))
		if err != nil {
			return false
		}
		if !cr.SentSince.IsZero() && day(t).Before(cr.SentSince) {
			return false
		}
		if !cr.SentBefore.IsZero() && !day(t).Before(cr.SentBefore) {
			return false
		}
	}
	for _, f := range cr.Flag {
		if !m.rec.HasFlag(f) {
			return false
		}
	}
	for _, f := range cr.NotFlag {
		if m.rec.HasFlag(f) {
			return false
		}
	}
	if cr.Larger > 0 && m.rec.Size <= cr.Larger {
		return false
	}
	if cr.Smaller > 0 && m.rec.Size >= cr.Smaller {
		return false
	}
	if len(cr.Header) > 0 {
		h := m.header()
		for _, hf := range cr.Header {
			vals := h.Values(hf.Key)
			if len(vals) == 0 {
				return false
			}
			found := hf.Value == ""
			for _, v := range vals {
				if containsFold([]byte(v), hf.Value) {
					found = true
				}
			}
			if !found {
				return false
			}
		}
	}
	for _, s := range cr.Body {
		if !containsFoldStream(m.body(), s) {
			return false
		}
	}
	for _, s := range cr.Text {
		if !containsFoldStream(m.content(), s) {
			return false
		}
	}
	for i := range cr.Not {
		if m.match(&cr.Not[i]) {
			return false
		}
	}
	for _, or := range cr.Or {
		if !m.match(&or[0]) && !m.match(&or[1]) {
			return false
		}
	}
	return true
}

func mailDate(s string) (time.Time, error) { return mail.ParseDate(s) }
