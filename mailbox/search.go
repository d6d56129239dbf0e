package mailbox

import (
	"bufio"
	"bytes"
	"io"
	"net/mail"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"
)

// maxSearchRead bounds how much of one message a text search reads.
const maxSearchRead = 1 << 20

func (c *imapSession) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	ts := c.resolve(imap.SeqSet{{Start: 1, Stop: 0}})
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
			if !m.match(criteria) {
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

type searchMsg struct {
	c      *imapSession
	seq    uint32
	uid    imap.UID
	rec    *msgRecord
	raw    []byte
	loaded bool
}

func (m *searchMsg) content() []byte {
	if !m.loaded {
		m.loaded = true
		f, err := os.Open(m.c.s.msgPath(m.c.acc.ID, m.rec.File))
		if err == nil {
			m.raw, _ = io.ReadAll(io.LimitReader(f, maxSearchRead))
			f.Close()
		}
	}
	return m.raw
}

func (m *searchMsg) header() textproto.Header {
	h, _ := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(m.content())))
	return h
}

func containsFold(hay []byte, needle string) bool {
	return bytes.Contains(bytes.ToLower(hay), []byte(strings.ToLower(needle)))
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
		if !m.rec.hasFlag(f) {
			return false
		}
	}
	for _, f := range cr.NotFlag {
		if m.rec.hasFlag(f) {
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
		raw := m.content()
		if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
			raw = raw[i+4:]
		}
		if !containsFold(raw, s) {
			return false
		}
	}
	for _, s := range cr.Text {
		if !containsFold(m.content(), s) {
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
