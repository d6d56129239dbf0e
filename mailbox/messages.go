package mailbox

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/chatrelay/chatrelay/internal/safeio"
)

// flagsSeen is what a FETCH of a body sets; shared, never changed.
var flagsSeen = []imap.Flag{imap.FlagSeen}

// target is a message picked by a sequence or UID set: its server-side
// sequence number and its UID.
type target struct {
	seq uint32
	uid imap.UID
}

// resolve turns a number set into messages, in sequence order, as this
// session sees them.
func (c *imapSession) resolve(numSet imap.NumSet) []target {
	sel := c.sel
	if imap.IsSearchRes(numSet) {
		numSet = sel.searchRes
	}
	l := sel.live
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []target
	switch set := numSet.(type) {
	case imap.SeqSet:
		max := uint32(len(l.uids))
		set = staticSeqSet(set, max)
		for i, uid := range l.uids {
			seq := sel.tracker.EncodeSeqNum(uint32(i + 1))
			if seq != 0 && set.Contains(seq) {
				out = append(out, target{uint32(i + 1), uid})
			}
		}
	case imap.UIDSet:
		var max imap.UID
		if n := len(l.uids); n > 0 {
			max = l.uids[n-1]
		}
		set = staticUIDSet(set, max)
		for i, uid := range l.uids {
			if set.Contains(uid) {
				out = append(out, target{uint32(i + 1), uid})
			}
		}
	}
	return out
}

// "*" stands for the largest number in use (RFC 3501 section 6.4.8), so a
// range like 5:* with a largest UID of 3 means 3:5.
func staticSeqSet(set imap.SeqSet, max uint32) imap.SeqSet {
	out := make(imap.SeqSet, len(set))
	for i, r := range set {
		staticRange(&r.Start, &r.Stop, max)
		out[i] = r
	}
	return out
}

func staticUIDSet(set imap.UIDSet, max imap.UID) imap.UIDSet {
	out := make(imap.UIDSet, len(set))
	for i, r := range set {
		staticRange((*uint32)(&r.Start), (*uint32)(&r.Stop), uint32(max))
		out[i] = r
	}
	return out
}

func staticRange(start, stop *uint32, max uint32) {
	dyn := *start == 0 || *stop == 0
	if *start == 0 {
		*start = max
	}
	if *stop == 0 {
		*stop = max
	}
	if dyn && *start > *stop {
		*start, *stop = *stop, *start
	}
}

// loadRecords reads the index entries of targets in one read transaction.
// Targets whose entry vanished (expunged meanwhile) get a nil record.
func (c *imapSession) loadRecords(ts []target) ([]*MessageRecord, error) {
	uids := make([]imap.UID, len(ts))
	for i, t := range ts {
		uids[i] = t.uid
	}
	recs, err := c.s.idx.Messages(c.acc.ID, c.sel.live.key.mailbox, uids)
	if errors.Is(err, ErrNoMailbox) {
		return make([]*MessageRecord, len(ts)), nil
	}
	return recs, err
}

func (c *imapSession) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	markSeen := false
	for _, bs := range options.BodySection {
		if !bs.Peek {
			markSeen = true
		}
	}
	markSeen = markSeen && !c.sel.readOnly
	ts := c.resolve(numSet)
	for len(ts) > 0 {
		chunk := ts
		if len(chunk) > fetchChunk {
			chunk = chunk[:fetchChunk]
		}
		ts = ts[len(chunk):]
		var recs []*MessageRecord
		var err error
		if markSeen {
			recs, err = c.updateFlags(chunk, imap.StoreFlagsAdd, flagsSeen)
		} else {
			recs, err = c.loadRecords(chunk)
		}
		if err != nil {
			return c.internal("fetch", err)
		}
		for i, t := range chunk {
			if recs[i] == nil {
				continue
			}
			seq := c.sel.encode(t.seq)
			if seq == 0 {
				continue
			}
			if err := c.fetchOne(w.CreateMessage(seq), t.uid, recs[i], options); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *imapSession) fetchOne(w *imapserver.FetchResponseWriter, uid imap.UID, rec *MessageRecord, options *imap.FetchOptions) error {
	w.WriteUID(uid)
	if options.Flags {
		w.WriteFlags(rec.Flags)
	}
	if options.InternalDate {
		w.WriteInternalDate(rec.Date)
	}
	if options.RFC822Size {
		w.WriteRFC822Size(rec.Size)
	}
	needFile := options.Envelope || options.BodyStructure != nil || len(options.BodySection) > 0 ||
		len(options.BinarySection) > 0 || len(options.BinarySectionSize) > 0
	if !needFile {
		return w.Close()
	}
	f, err := os.Open(c.s.msgPath(c.acc.ID, rec.File))
	if err == nil {
		// A literal announces its size: a file shorter than its record
		// could only be sent by breaking the protocol.
		var st os.FileInfo
		if st, err = f.Stat(); err == nil && st.Size() != rec.Size {
			err = fmt.Errorf("message file %s: %d bytes, index says %d", rec.File, st.Size(), rec.Size)
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		w.Close()
		return c.internal("fetch", err)
	}
	defer f.Close()
	// Each read of the message is a fresh stream over the file; nothing of
	// it is gathered in memory (section.go).
	open := func() io.Reader { return io.NewSectionReader(f, 0, rec.Size) }
	if options.Envelope {
		if h, _, err := readHeader(open()); err == nil {
			w.WriteEnvelope(imapserver.ExtractEnvelope(h))
		} else {
			w.WriteEnvelope(&imap.Envelope{})
		}
	}
	if options.BodyStructure != nil {
		w.WriteBodyStructure(bodyStructure(open()))
	}
	for _, bs := range options.BodySection {
		var err error
		if bs.Specifier == imap.PartSpecifierNone && len(bs.Part) == 0 {
			// The whole message, or a range of it: bytes of the file.
			off, n := partialRange(rec.Size, bs.Partial)
			wc := w.WriteBodySection(bs, n)
			_, err = copyBuffered(wc, io.NewSectionReader(f, off, n))
			if cerr := wc.Close(); err == nil {
				err = cerr
			}
		} else {
			err = streamSection(open, func(w io.Writer, r io.Reader) error {
				return writeBodySection(w, r, bs)
			}, bs.Partial, func(size int64) io.WriteCloser {
				return w.WriteBodySection(bs, size)
			})
		}
		if err != nil {
			w.Close() // imapserver's writer holds the connection until then
			return err
		}
	}
	for _, bs := range options.BinarySection {
		err := streamSection(open, func(w io.Writer, r io.Reader) error {
			return writeBinarySection(w, r, bs.Part)
		}, bs.Partial, func(size int64) io.WriteCloser {
			return w.WriteBinarySection(bs, size)
		})
		if err != nil {
			w.Close()
			return err
		}
	}
	for _, bss := range options.BinarySectionSize {
		var c counter
		if err := writeBinarySection(&c, open(), bss.Part); err != nil {
			c.n = 0
		}
		w.WriteBinarySectionSize(bss, uint32(c.n))
	}
	return w.Close()
}

// updateFlags changes flags of targets in one write transaction, tells the
// other sessions, and returns the updated records.
func (c *imapSession) updateFlags(ts []target, op imap.StoreFlagsOp, flags []imap.Flag) ([]*MessageRecord, error) {
	uids := make([]imap.UID, len(ts))
	for i, t := range ts {
		uids[i] = t.uid
	}
	k := c.sel.live.key
	stripe := c.s.stripe(k.account, k.mailbox)
	stripe.Lock()
	defer stripe.Unlock()
	recs, changed, err := c.s.idx.SetFlags(k.account, k.mailbox, uids, op, flags)
	if errors.Is(err, ErrNoMailbox) {
		return nil, errNoSuchMailbox
	} else if err != nil {
		return nil, err
	}
	for i, t := range ts {
		if changed[i] {
			c.s.idx.Publish(Change{Kind: ChangeFlags, Account: k.account, Mailbox: k.mailbox, UID: t.uid, Flags: recs[i].Flags, Origin: c.sel.tracker})
		}
	}
	return recs, nil
}

func (c *imapSession) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	if c.sel.readOnly {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Mailbox is read-only"}
	}
	ts := c.resolve(numSet)
	recs, err := c.updateFlags(ts, flags.Op, flags.Flags)
	if err != nil {
		return c.internal("store", err)
	}
	if flags.Silent {
		return nil
	}
	for i, t := range ts {
		if recs[i] == nil {
			continue
		}
		if seq := c.sel.encode(t.seq); seq != 0 {
			mw := w.CreateMessage(seq)
			mw.WriteUID(t.uid)
			mw.WriteFlags(recs[i].Flags)
			if err := mw.Close(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *imapSession) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	if c.sel.readOnly {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Mailbox is read-only"}
	}
	var pick []imap.UID
	err := c.s.idx.ForEachMessage(c.acc.ID, c.sel.live.key.mailbox, func(_ string, uid imap.UID, r *MessageRecord) error {
		if uids != nil && !uids.Contains(uid) {
			return nil
		}
		if r.HasFlag(imap.FlagDeleted) {
			pick = append(pick, uid)
		}
		return nil
	})
	if errors.Is(err, ErrNoMailbox) {
		err = nil
	}
	if err != nil {
		return c.internal("expunge", err)
	}
	// Expunges reach this session through its tracker, like everyone
	// else's, and are written by the Poll that follows the command.
	if err := c.s.Remove(c.acc, c.sel.live.key.mailbox, pick, true); err != nil {
		return c.internal("expunge", err)
	}
	return nil
}

// Remove deletes messages by UID from an account's mailbox, telling every
// session. With onlyDeleted, messages that lost their \Deleted flag
// meanwhile are kept.
func (s *Store) Remove(acc *Account, mailbox string, uids []imap.UID, onlyDeleted bool) error {
	if len(uids) == 0 {
		return nil
	}
	mailbox = mailboxName(mailbox)
	stripe := s.stripe(acc.ID, mailbox)
	stripe.Lock()
	defer stripe.Unlock()
	gone, files, err := s.idx.Remove(acc.ID, acc.Addr, mailbox, uids, onlyDeleted)
	if err != nil {
		return err
	}
	if len(gone) > 0 {
		s.idx.Publish(Change{Kind: ChangeExpunged, Account: acc.ID, Mailbox: mailbox, UIDs: gone})
	}
	s.removeFiles(acc.ID, files)
	return nil
}

// removeFiles deletes message files after their index entries are gone; a
// crash before this leaves orphans that the next start sweeps.
func (s *Store) removeFiles(accountID uint64, files []string) {
	for _, f := range files {
		if err := os.Remove(s.msgPath(accountID, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("remove message file", "err", err)
		}
	}
}

func (c *imapSession) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	data, _, err := c.copy(numSet, dest)
	return data, err
}

func (c *imapSession) copy(numSet imap.NumSet, dest string) (*imap.CopyData, []imap.UID, error) {
	dest = mailboxName(dest)
	ts := c.resolve(numSet)
	recs, err := c.loadRecords(ts)
	if err != nil {
		return nil, nil, c.internal("copy", err)
	}
	destInfo, err := c.s.idx.Mailbox(c.acc.ID, dest)
	if errors.Is(err, ErrNoMailbox) {
		return nil, nil, errTryCreate
	} else if err != nil {
		return nil, nil, c.internal("copy", err)
	}
	if len(ts) == 0 {
		// A UID set naming no message (e.g. "*" on an empty mailbox) copies
		// nothing and is not an error (RFC 3501 section 6.4.8); there is no
		// COPYUID to report (RFC 4315 section 3).
		return nil, nil, nil
	}
	var total int64
	for _, r := range recs {
		if r != nil {
			total += r.Size
		}
	}
	if ok, err := c.s.QuotaFits(c.acc.Addr, total); err != nil {
		return nil, nil, c.internal("copy", err)
	} else if !ok {
		return nil, nil, errOverQuota
	}
	// New names for the copies: hard links, so no bytes are copied and each
	// index entry owns its own file.
	newFiles := make([]string, len(recs))
	for i, r := range recs {
		if r == nil {
			continue
		}
		newFiles[i] = c.s.newFileName()
		if err := os.Link(c.s.msgPath(c.acc.ID, r.File), c.s.msgPath(c.acc.ID, newFiles[i])); err != nil {
			c.s.removeFiles(c.acc.ID, newFiles[:i])
			return nil, nil, c.internal("copy", err)
		}
	}
	cleanup := func() { c.s.removeFiles(c.acc.ID, newFiles) }
	if err := safeio.SyncDir(c.s.accountDir(c.acc.ID)); err != nil {
		cleanup()
		return nil, nil, c.internal("copy", err)
	}
	stripe := c.s.stripe(c.acc.ID, dest)
	stripe.Lock()
	defer stripe.Unlock()
	var ms []NewMessage
	var srcUIDs []imap.UID
	for i, r := range recs {
		if r == nil {
			continue
		}
		nr := *r
		nr.File = newFiles[i]
		ms = append(ms, NewMessage{AccountID: c.acc.ID, Addr: c.acc.Addr, Mailbox: dest, Record: nr})
		srcUIDs = append(srcUIDs, ts[i].uid)
	}
	err = c.s.idx.Append(ms)
	if errors.Is(err, ErrNoMailbox) {
		cleanup()
		return nil, nil, errTryCreate
	}
	if err != nil {
		cleanup()
		return nil, nil, c.internal("copy", err)
	}
	data := imap.CopyData{UIDValidity: destInfo.UIDValidity}
	for i, n := range ms {
		data.UIDValidity = n.UIDValidity
		data.SourceUIDs.AddNum(srcUIDs[i])
		data.DestUIDs.AddNum(n.UID)
		c.s.idx.Publish(Change{Kind: ChangeAppended, Account: c.acc.ID, Mailbox: dest, UID: n.UID})
	}
	return &data, srcUIDs, nil
}

func (c *imapSession) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	if mailboxName(dest) == c.sel.live.key.mailbox {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Source and destination are the same mailbox"}
	}
	data, src, err := c.copy(numSet, dest)
	if err != nil {
		return err
	}
	if data == nil {
		return nil
	}
	if err := w.WriteCopyData(data); err != nil {
		return err
	}
	// The EXPUNGE responses (RFC 6851 section 4.3) come from this session's
	// tracker in the Poll after the command.
	if err := c.s.Remove(c.acc, c.sel.live.key.mailbox, src, false); err != nil {
		return c.internal("move", err)
	}
	return nil
}
