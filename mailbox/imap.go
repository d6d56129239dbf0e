package mailbox

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/safeio"
	"github.com/chatrelay/chatrelay/mailbox/imapext"
)

// IMAPOptions connect the IMAP backend to the rest of the relay.
type IMAPOptions struct {
	// Authenticate checks a login (throttling, registration rules, account
	// creation). conn is the client connection, for its address.
	Authenticate func(conn net.Conn, user, password string) (*Account, error)
	// CheckAppend streams an APPENDed message from r to w, or refuses it
	// (the encrypted-only policy applies to APPEND too).
	CheckAppend func(acc *Account, r io.Reader, w io.Writer) error
	// MaxMessageSize bounds APPEND.
	MaxMessageSize int64
	// OnLogin is told of every successful login, e.g. to tell the
	// connection layer which user it serves.
	OnLogin func(conn net.Conn, acc *Account)
	// OnIdle is called when a session starts IDLE; it returns the function
	// called when IDLE ends (metrics).
	OnIdle func() (done func())
}

const mailboxDelim = '/'

// fetchChunk bounds how many index records one read transaction loads;
// writing to the client happens with no transaction open.
const fetchChunk = 256

var (
	errNoSuchMailbox = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNonExistent, Text: "No such mailbox"}
	errTryCreate     = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: "No such mailbox"}
	errOverQuota     = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeOverQuota, Text: "Mailbox is full"}
	errTooBig        = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTooBig, Text: "Message too big"}
	errServer        = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeServerBug, Text: "Internal server error"}
)

type imapSession struct {
	s     *Store
	opts  *IMAPOptions
	conn  *imapserver.Conn
	acc   *Account
	selMu sync.Mutex // guards sel against Close during IDLE
	sel   *selected
	// resuming is set when the session serves a new imapserver connection
	// after hibernation: the next Select restores the kept selection.
	resuming bool
}

type selected struct {
	name      string
	live      *live
	tracker   *imapserver.SessionTracker
	notifier  notifier // registered with live, if the connection is one
	readOnly  bool
	searchRes imap.UIDSet
}

var _ imapserver.SessionIMAP4rev2 = (*imapSession)(nil)

// NewIMAPSession serves one IMAP connection from the store.
func (s *Store) NewIMAPSession(conn *imapserver.Conn, opts *IMAPOptions) imapserver.Session {
	return &imapSession{s: s, opts: opts, conn: conn}
}

func (c *imapSession) internal(op string, err error) error {
	var imapErr *imap.Error
	if errors.As(err, &imapErr) {
		return err
	}
	c.s.log.Error("imap "+op, "err", err)
	return errServer
}

// encode maps a server sequence number to this session's view.
func (sel *selected) encode(seq uint32) uint32 {
	sel.live.mu.Lock()
	defer sel.live.mu.Unlock()
	return sel.tracker.EncodeSeqNum(seq)
}

// Close ends the session, unless its connection hibernates: then the
// session keeps its account, selection, tracker and notifier, and the
// connection closes it later (or hands it to ResumeIMAPSession).
func (c *imapSession) Close() error {
	if c.conn == nil {
		// Kept, and now closed by the connection.
		c.unselect()
		return nil
	}
	if k, ok := c.conn.NetConn().(imapext.Keeper); ok && c.acc != nil {
		// Kept, the session must not hold on to imapserver's connection
		// (its buffers); ResumeIMAPSession gives it the next one.
		conn := c.conn
		c.conn = nil
		if k.Keep(c) {
			return nil
		}
		c.conn = conn
	}
	c.unselect()
	return nil
}

// Selection returns the selected mailbox (imapext.KeptSession).
func (c *imapSession) Selection() (mailbox string, readOnly, ok bool) {
	c.selMu.Lock()
	defer c.selMu.Unlock()
	if c.sel == nil {
		return "", false, false
	}
	return c.sel.name, c.sel.readOnly, true
}

// ResumeIMAPSession returns the session kept while conn hibernated
// (imapext.Kept), now serving conn, or nil if conn does not resume one.
// NewSession returns it with imapserver.GreetingData{PreAuth: true}.
func ResumeIMAPSession(conn *imapserver.Conn) imapserver.Session {
	c, ok := imapext.Kept(conn.NetConn()).(*imapSession)
	if !ok {
		return nil
	}
	c.conn = conn
	c.resuming = true
	return c
}

func (c *imapSession) Login(username, password string) error {
	acc, err := c.opts.Authenticate(c.conn.NetConn(), username, password)
	if errors.Is(err, ErrUnavailable) {
		// RFC 5530 section 3: a temporary failure, try again later.
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "Try again later"}
	} else if err != nil {
		// A public account rule the new address breaks is said in the NO.
		var reason interface{ ClientText() string }
		if errors.As(err, &reason) {
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed, Text: reason.ClientText()}
		}
		return imapserver.ErrAuthFailed
	}
	c.acc = acc
	if c.opts.OnLogin != nil {
		c.opts.OnLogin(c.conn.NetConn(), acc)
	}
	return nil
}

func (c *imapSession) unselect() {
	c.selMu.Lock()
	sel := c.sel
	c.sel = nil
	c.selMu.Unlock()
	if sel != nil {
		if sel.notifier != nil {
			sel.live.removeNotifier(sel.notifier)
		}
		sel.tracker.Close()
		c.s.closeLive(sel.live)
	}
}

func (c *imapSession) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	if c.resuming {
		// The replay of a resumed connection: the selection, its tracker
		// and its notifier stay, with what they have queued.
		c.resuming = false
		c.selMu.Lock()
		sel := c.sel
		c.selMu.Unlock()
		if sel != nil && sel.name == name {
			sel.live.mu.Lock()
			defer sel.live.mu.Unlock()
			return selectData(sel.live), nil
		}
	}
	c.unselect()
	l, err := c.s.openLive(c.acc.ID, name)
	if errors.Is(err, errNoMailbox) {
		return nil, errNoSuchMailbox
	} else if err != nil {
		return nil, c.internal("select", err)
	}
	sel := &selected{name: name, live: l, tracker: l.tracker.NewSession(), readOnly: options != nil && options.ReadOnly}
	sel.notifier, _ = c.conn.NetConn().(notifier)
	l.mu.Lock()
	defer l.mu.Unlock()
	if sel.notifier != nil {
		// Registered with the snapshot below: no change falls in between.
		l.addNotifier(sel.notifier)
	}
	c.selMu.Lock()
	c.sel = sel
	c.selMu.Unlock()
	return selectData(l), nil
}

// selectData answers SELECT for l; the caller holds l.mu.
func selectData(l *live) *imap.SelectData {
	flags := []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft}
	return &imap.SelectData{
		Flags:          flags,
		PermanentFlags: append(append([]imap.Flag{}, flags...), imap.FlagWildcard),
		NumMessages:    uint32(len(l.uids)),
		UIDNext:        l.uidNext,
		UIDValidity:    l.uidValidity,
	}
}

func (c *imapSession) Unselect() error {
	c.unselect()
	return nil
}

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

func (c *imapSession) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if c.sel == nil {
		return nil
	}
	return c.sel.tracker.Poll(w, allowExpunge)
}

func (c *imapSession) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	if c.opts.OnIdle != nil {
		defer c.opts.OnIdle()()
	}
	// go-imap runs Idle in its own goroutine and, when the client drops
	// the connection, may call Close before Idle has returned: read the
	// selection once, under the lock Close takes.
	c.selMu.Lock()
	sel := c.sel
	c.selMu.Unlock()
	if sel == nil {
		<-stop
		return nil
	}
	return sel.live.idle(sel.tracker, w, stop)
}

func (c *imapSession) Namespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "", Delim: mailboxDelim}}}, nil
}

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
func (c *imapSession) loadRecords(ts []target) ([]*msgRecord, error) {
	recs := make([]*msgRecord, len(ts))
	err := c.s.db.View(func(tx *bolt.Tx) error {
		m := findMailbox(tx, c.acc.ID, c.sel.live.key.mailbox)
		if m == nil {
			return nil
		}
		for i, t := range ts {
			r, err := m.record(t.uid)
			if err != nil {
				return err
			}
			recs[i] = r
		}
		return nil
	})
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
		var recs []*msgRecord
		var err error
		if markSeen {
			recs, err = c.updateFlags(chunk, imap.StoreFlagsAdd, []imap.Flag{imap.FlagSeen})
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

func (c *imapSession) fetchOne(w *imapserver.FetchResponseWriter, uid imap.UID, rec *msgRecord, options *imap.FetchOptions) error {
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
func (c *imapSession) updateFlags(ts []target, op imap.StoreFlagsOp, flags []imap.Flag) ([]*msgRecord, error) {
	recs := make([]*msgRecord, len(ts))
	changed := make([]bool, len(ts))
	k := c.sel.live.key
	stripe := c.s.stripe(k.account, k.mailbox)
	stripe.Lock()
	defer stripe.Unlock()
	err := c.s.db.Update(func(tx *bolt.Tx) error {
		m := findMailbox(tx, k.account, k.mailbox)
		if m == nil {
			return errNoSuchMailbox
		}
		for i, t := range ts {
			changed[i] = false
			r, err := m.record(t.uid)
			if err != nil {
				return err
			}
			if recs[i] = r; r == nil {
				continue
			}
			if r.applyFlags(op, flags) {
				changed[i] = true
				if err := m.put(t.uid, r); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, t := range ts {
		if changed[i] {
			c.s.flagsChanged(k, t.uid, recs[i].Flags, c.sel.tracker)
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
	err := c.s.db.View(func(tx *bolt.Tx) error {
		m := findMailbox(tx, c.acc.ID, c.sel.live.key.mailbox)
		if m == nil {
			return nil
		}
		return m.forEach(func(uid imap.UID, v []byte) error {
			if uids != nil && !uids.Contains(uid) {
				return nil
			}
			var r msgRecord
			if err := r.decode(v); err != nil {
				return err
			}
			if r.hasFlag(imap.FlagDeleted) {
				pick = append(pick, uid)
			}
			return nil
		})
	})
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
	var files []string
	var gone []imap.UID
	err := s.db.Update(func(tx *bolt.Tx) error {
		files, gone = nil, nil
		m := findMailbox(tx, acc.ID, mailbox)
		if m == nil {
			return nil
		}
		var freed int64
		for _, uid := range uids {
			r, err := m.record(uid)
			if err != nil {
				return err
			}
			if r == nil || onlyDeleted && !r.hasFlag(imap.FlagDeleted) {
				continue
			}
			if err := m.delete(uid); err != nil {
				return err
			}
			freed += r.Size
			files = append(files, r.File)
			gone = append(gone, uid)
		}
		_, err := addUsed(tx, acc.Addr, -freed)
		return err
	})
	if err != nil {
		return err
	}
	s.expunged(liveKey{acc.ID, mailbox}, gone)
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
	var exists bool
	c.s.db.View(func(tx *bolt.Tx) error {
		exists = findMailbox(tx, c.acc.ID, dest) != nil
		return nil
	})
	if !exists {
		return nil, nil, errTryCreate
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
	var data imap.CopyData
	var srcUIDs []imap.UID
	var destUIDs []imap.UID
	err = c.s.db.Update(func(tx *bolt.Tx) error {
		data, srcUIDs, destUIDs = imap.CopyData{}, nil, nil
		m := findMailbox(tx, c.acc.ID, dest)
		if m == nil {
			return errTryCreate
		}
		info, err := m.info()
		if err != nil {
			return err
		}
		data.UIDValidity = info.UIDValidity
		var added int64
		for i, r := range recs {
			if r == nil {
				continue
			}
			uid := imap.UID(info.UIDNext)
			info.UIDNext++
			nr := *r
			nr.File = newFiles[i]
			if err := m.put(uid, &nr); err != nil {
				return err
			}
			added += r.Size
			data.SourceUIDs.AddNum(ts[i].uid)
			data.DestUIDs.AddNum(uid)
			srcUIDs = append(srcUIDs, ts[i].uid)
			destUIDs = append(destUIDs, uid)
		}
		if err := m.putInfo(info); err != nil {
			return err
		}
		_, err = addUsed(tx, c.acc.Addr, added)
		return err
	})
	if err != nil {
		cleanup()
		return nil, nil, c.internal("copy", err)
	}
	for _, uid := range destUIDs {
		c.s.appended(liveKey{c.acc.ID, dest}, uid)
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
