package mailbox

import (
	"io"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	bolt "go.etcd.io/bbolt"
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
	err := c.s.db.Update(func(tx *bolt.Tx) error {
		acct := accountBucket(tx, c.acc.ID)
		if acct == nil {
			return ErrNoAccount
		}
		if openMailbox(acct, name) != nil {
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "Mailbox already exists"}
		}
		if countMailboxes(acct) >= maxMailboxes {
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit, Text: "Too many mailboxes"}
		}
		return createMailbox(acct, name, c.s.now())
	})
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
	var files []string
	err := c.s.db.Update(func(tx *bolt.Tx) error {
		m := findMailbox(tx, c.acc.ID, name)
		if m == nil {
			return errNoSuchMailbox
		}
		var freed int64
		err := m.forEach(func(_ imap.UID, v []byte) error {
			var r msgRecord
			if err := r.decode(v); err != nil {
				return err
			}
			freed += r.Size
			files = append(files, r.File)
			return nil
		})
		if err != nil {
			return err
		}
		if _, err := addUsed(tx, c.acc.Addr, -freed); err != nil {
			return err
		}
		return m.remove()
	})
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
	err := c.s.db.Update(func(tx *bolt.Tx) error {
		src := findMailbox(tx, c.acc.ID, oldName)
		if src == nil {
			return errNoSuchMailbox
		}
		if openMailbox(src.acct, newName) != nil {
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAlreadyExists, Text: "Mailbox already exists"}
		}
		return src.rename(newName)
	})
	if err != nil {
		return c.internal("rename", err)
	}
	return nil
}

func (c *imapSession) setSubscribed(name string, sub bool) error {
	err := c.s.db.Update(func(tx *bolt.Tx) error {
		m := findMailbox(tx, c.acc.ID, name)
		if m == nil {
			return errNoSuchMailbox
		}
		info, err := m.info()
		if err != nil {
			return err
		}
		info.Subscribed = sub
		return m.putInfo(info)
	})
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
	err := c.s.db.View(func(tx *bolt.Tx) error {
		acct := accountBucket(tx, c.acc.ID)
		if acct == nil {
			return ErrNoAccount
		}
		return forEachMailbox(acct, func(m *mbox) error {
			match := false
			for _, p := range patterns {
				if imapserver.MatchList(m.name, mailboxDelim, ref, p) {
					match = true
					break
				}
			}
			if !match {
				return nil
			}
			info, err := m.info()
			if err != nil {
				return err
			}
			if options != nil && options.SelectSubscribed && !info.Subscribed {
				return nil
			}
			d := imap.ListData{Mailbox: m.name, Delim: mailboxDelim}
			if info.Subscribed && options != nil && (options.ReturnSubscribed || options.SelectSubscribed) {
				d.Attrs = append(d.Attrs, imap.MailboxAttrSubscribed)
			}
			if options != nil && options.ReturnStatus != nil {
				d.Status = statusOf(m, options.ReturnStatus)
			}
			out = append(out, d)
			return nil
		})
	})
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

func statusOf(m *mbox, options *imap.StatusOptions) *imap.StatusData {
	d := &imap.StatusData{Mailbox: m.name}
	info, err := m.info()
	if err != nil {
		return d
	}
	n := uint32(m.count())
	if options.NumMessages {
		d.NumMessages = &n
	}
	if options.UIDNext {
		d.UIDNext = imap.UID(info.UIDNext)
	}
	if options.UIDValidity {
		d.UIDValidity = info.UIDValidity
	}
	if options.NumUnseen || options.NumDeleted || options.Size {
		var unseen, deleted uint32
		var size int64
		m.forEach(func(_ imap.UID, v []byte) error {
			var r msgRecord
			if r.decode(v) == nil {
				if !r.hasFlag(imap.FlagSeen) {
					unseen++
				}
				if r.hasFlag(imap.FlagDeleted) {
					deleted++
				}
				size += r.Size
			}
			return nil
		})
		if options.NumUnseen {
			d.NumUnseen = &unseen
		}
		if options.NumDeleted {
			d.NumDeleted = &deleted
		}
		if options.Size {
			d.Size = &size
		}
	}
	return d
}

func (c *imapSession) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	var d *imap.StatusData
	err := c.s.db.View(func(tx *bolt.Tx) error {
		m := findMailbox(tx, c.acc.ID, name)
		if m == nil {
			return errNoSuchMailbox
		}
		d = statusOf(m, options)
		return nil
	})
	if err != nil {
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
	var exists bool
	c.s.db.View(func(tx *bolt.Tx) error {
		exists = findMailbox(tx, c.acc.ID, name) != nil
		return nil
	})
	if !exists {
		return nil, errTryCreate
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
