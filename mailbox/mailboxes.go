package mailbox

import (
	"errors"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

func validMailboxName(name string) error {
	if name == "" || len(name) > 255 || !utf8.ValidString(name) || strings.ContainsAny(name, "*%") ||
		strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Invalid mailbox name"}
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Invalid mailbox name"}
		}
	}
	return nil
}

func (c *imapSession) Create(name string, options *imap.CreateOptions) error {
	name = mailboxName(name)
	if err := validMailboxName(name); err != nil {
		return err
	}
	now := c.s.now()
	err := c.s.idx.CreateMailbox(c.acc.ID, name, MailboxInfo{UIDValidity: uint32(now.Unix()), UIDNext: 1, Subscribed: true}, maxMailboxes)
	switch {
	case errors.Is(err, ErrMailboxExists):
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "Mailbox already exists"}
	case errors.Is(err, ErrTooManyMailboxes):
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit, Text: "Too many mailboxes"}
	}
	if err != nil {
		return c.internal("create", err)
	}
	return nil
}

func (c *imapSession) Delete(name string) error {
	name = mailboxName(name)
	if name == "INBOX" {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "INBOX cannot be deleted"}
	}
	if c.s.hub.get(liveKey{c.acc.ID, name}) != nil {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeInUse, Text: "Mailbox is selected"}
	}
	files, err := c.s.idx.DeleteMailbox(c.acc.ID, c.acc.Addr, name)
	if errors.Is(err, ErrNoMailbox) {
		return errNoSuchMailbox
	}
	if err != nil {
		return c.internal("delete", err)
	}
	c.s.removeFiles(c.acc.ID, files)
	return nil
}

func (c *imapSession) Rename(oldName, newName string, options *imap.RenameOptions) error {
	oldName, newName = mailboxName(oldName), mailboxName(newName)
	if oldName == "INBOX" {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Renaming INBOX is not supported"}
	}
	if err := validMailboxName(newName); err != nil {
		return err
	}
	if c.s.hub.get(liveKey{c.acc.ID, oldName}) != nil {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeInUse, Text: "Mailbox is selected"}
	}
	err := c.s.idx.RenameMailbox(c.acc.ID, oldName, newName)
	switch {
	case errors.Is(err, ErrNoMailbox):
		return errNoSuchMailbox
	case errors.Is(err, ErrMailboxExists):
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "Mailbox already exists"}
	}
	if err != nil {
		return c.internal("rename", err)
	}
	return nil
}

func (c *imapSession) setSubscribed(name string, sub bool) error {
	err := c.s.idx.SetSubscribed(c.acc.ID, mailboxName(name), sub)
	if errors.Is(err, ErrNoMailbox) {
		return errNoSuchMailbox
	}
	if err != nil {
		return c.internal("subscribe", err)
	}
	return nil
}

func (c *imapSession) Subscribe(name string) error   { return c.setSubscribed(name, true) }
func (c *imapSession) Unsubscribe(name string) error { return c.setSubscribed(name, false) }

func (c *imapSession) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	if len(patterns) == 0 {
		// RFC 3501 section 6.3.8: an empty pattern asks for the delimiter.
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: mailboxDelim})
	}
	var out []imap.ListData
	err := c.s.idx.ForEachMailbox(c.acc.ID, func(name string, info *MailboxInfo) error {
		match := false
		for _, p := range patterns {
			if imapserver.MatchList(name, mailboxDelim, ref, p) {
				match = true
				break
			}
		}
		if !match {
			return nil
		}
		if options != nil && options.SelectSubscribed && !info.Subscribed {
			return nil
		}
		d := imap.ListData{Mailbox: name, Delim: mailboxDelim}
		if info.Subscribed && options != nil && (options.ReturnSubscribed || options.SelectSubscribed) {
			d.Attrs = append(d.Attrs, imap.MailboxAttrSubscribed)
		}
		out = append(out, d)
		return nil
	})
	if err == nil && options != nil && options.ReturnStatus != nil {
		// After the walk: a status reads the index again.
		for i := range out {
			out[i].Status = c.s.status(c.acc.ID, out[i].Mailbox, options.ReturnStatus)
		}
	}
	if err != nil {
		return c.internal("list", err)
	}
	for i := range out {
		if err := w.WriteList(&out[i]); err != nil {
			return err
		}
	}
	return nil
}

// status answers STATUS for a mailbox; what it cannot read stays unset.
func (s *Store) status(accountID uint64, name string, options *imap.StatusOptions) *imap.StatusData {
	d, _ := s.statusOf(accountID, name, options)
	return d
}

func (s *Store) statusOf(accountID uint64, name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	d := &imap.StatusData{Mailbox: name}
	info, err := s.idx.Mailbox(accountID, name)
	if err != nil {
		return d, err
	}
	if options.UIDNext {
		d.UIDNext = imap.UID(info.UIDNext)
	}
	if options.UIDValidity {
		d.UIDValidity = info.UIDValidity
	}
	var n uint32
	if options.NumUnseen || options.NumDeleted || options.Size {
		var unseen, deleted uint32
		var size int64
		err := s.idx.ForEachMessage(accountID, name, func(_ string, _ imap.UID, r *MessageRecord) error {
			n++
			if !r.HasFlag(imap.FlagSeen) {
				unseen++
			}
			if r.HasFlag(imap.FlagDeleted) {
				deleted++
			}
			size += r.Size
			return nil
		})
		if err != nil {
			return d, err
		}
		if options.NumUnseen {
			d.NumUnseen = &unseen
		}
		if options.NumDeleted {
			d.NumDeleted = &deleted
		}
		if options.Size {
			d.Size = &size
		}
	} else if options.NumMessages {
		count, err := s.idx.CountMessages(accountID, name)
		if err != nil {
			return d, err
		}
		n = uint32(count)
	}
	if options.NumMessages {
		d.NumMessages = &n
	}
	return d, nil
}

func (c *imapSession) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	d, err := c.s.statusOf(c.acc.ID, mailboxName(name), options)
	if errors.Is(err, ErrNoMailbox) {
		return nil, errNoSuchMailbox
	} else if err != nil {
		return nil, c.internal("status", err)
	}
	return d, nil
}

func (c *imapSession) Append(name string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	if c.opts.MaxMessageSize > 0 && r.Size() > c.opts.MaxMessageSize {
		return nil, errTooBig
	}
	if ok, err := c.s.QuotaFits(c.acc.Addr, r.Size()); err != nil {
		return nil, c.internal("append", err)
	} else if !ok {
		return nil, errOverQuota
	}
	if _, err := c.s.idx.Mailbox(c.acc.ID, mailboxName(name)); errors.Is(err, ErrNoMailbox) {
		return nil, errTryCreate
	} else if err != nil {
		return nil, c.internal("append", err)
	}
	in, err := c.s.NewIncoming()
	if err != nil {
		return nil, c.internal("append", err)
	}
	if c.opts.CheckAppend != nil {
		err = c.opts.CheckAppend(c.acc, r, in)
	} else {
		_, err = io.Copy(in, r)
	}
	if err != nil {
		in.Abort()
		io.Copy(io.Discard, r) // the literal must be consumed to keep the stream in sync
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: err.Error()}
	}
	if options != nil {
		in.Flags, in.Date = options.Flags, options.Time
	}
	ds, err := in.Deliver([]*Account{c.acc}, name)
	if err != nil {
		return nil, c.internal("append", err)
	}
	return &imap.AppendData{UID: ds[0].UID, UIDValidity: ds[0].UIDValidity}, nil
}
