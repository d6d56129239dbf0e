package mailbox

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

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
