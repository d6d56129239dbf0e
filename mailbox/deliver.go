package mailbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/chatrelay/chatrelay/internal/safeio"
)

// ErrQuota is returned when a message does not fit in an account's quota.
var ErrQuota = errors.New("mailbox full")

// errNoMailbox is the Backend's ErrNoMailbox.
var errNoMailbox = ErrNoMailbox

// Incoming is a message being received: the caller writes it, then Delivers
// or Aborts. It lives in the store's tmp directory so that delivering it is
// a link, not a copy.
type Incoming struct {
	s    *Store
	f    *os.File
	size int64

	// Flags and Date are stored with the message (IMAP APPEND sets them);
	// the zero Date means now.
	Flags []imap.Flag
	Date  time.Time
}

// NewIncoming starts a message.
func (s *Store) NewIncoming() (*Incoming, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, tempDir), "in-*")
	if err != nil {
		return nil, fmt.Errorf("create incoming message: %w", err)
	}
	return &Incoming{s: s, f: f}, nil
}

func (in *Incoming) Write(p []byte) (int, error) {
	n, err := in.f.Write(p)
	in.size += int64(n)
	return n, err
}

// Size is the number of bytes written so far.
func (in *Incoming) Size() int64 { return in.size }

// Abort throws the message away.
func (in *Incoming) Abort() {
	in.f.Close()
	os.Remove(in.f.Name())
}

// Delivery is the outcome for one recipient.
type Delivery struct {
	Account     *Account
	UID         imap.UID
	UIDValidity uint32
	// Used is the account's stored bytes with this message.
	Used int64
}

// Deliver stores the message in mailbox for every recipient, durably: when it
// returns nil the message file and its directory are fsynced and the index is
// committed. On error nothing is stored for anyone. The Incoming is consumed
// either way.
//
// The fsyncs of the file and its directories run while the index commits
// (which fsyncs too): each waits for the disk, and waiting side by side
// instead of one after the other is most of a lone delivery's latency.
// Nobody hears of the message until all have finished. A crash in between
// can leave index entries whose file is short or missing; they were never
// acknowledged, and the sweep after an unclean shutdown drops them.
func (in *Incoming) Deliver(rcpts []*Account, mailbox string) ([]Delivery, error) {
	defer in.Abort()
	s := in.s
	mailbox = mailboxName(mailbox)
	files := make([]string, len(rcpts))
	dirs := map[string]bool{}
	cleanup := func() {
		for i, f := range files {
			if f != "" {
				os.Remove(s.msgPath(rcpts[i].ID, f))
			}
		}
	}
	for i, a := range rcpts {
		dir := s.accountDir(a.ID)
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				cleanup()
				return nil, err
			}
			dirs[filepath.Dir(dir)] = true
		}
		name := s.newFileName()
		if err := os.Link(in.f.Name(), filepath.Join(dir, name)); err != nil {
			cleanup()
			return nil, fmt.Errorf("link message: %w", err)
		}
		files[i] = name
		dirs[dir] = true
	}
	synced := make(chan error, 1+len(dirs))
	go func() {
		if err := in.f.Sync(); err != nil {
			synced <- fmt.Errorf("sync message: %w", err)
			return
		}
		synced <- nil
	}()
	for d := range dirs {
		go func() { synced <- safeio.SyncDir(d) }()
	}
	waitSynced := func() error {
		var first error
		for range 1 + len(dirs) {
			if err := <-synced; err != nil && first == nil {
				first = err
			}
		}
		return first
	}

	unlock := s.lockStripes(rcpts, mailbox)
	defer unlock()
	date := in.Date
	if date.IsZero() {
		date = s.now()
	}
	var flags []imap.Flag
	for _, f := range in.Flags {
		flags = append(flags, canonicalFlag(f))
	}
	ms := make([]NewMessage, len(rcpts))
	for i, a := range rcpts {
		ms[i] = NewMessage{AccountID: a.ID, Addr: a.Addr, Mailbox: mailbox, Record: MessageRecord{Size: in.size, Date: date, File: files[i], Flags: flags}}
	}
	var out []Delivery
	err := s.idx.Append(ms)
	if err == nil {
		out = make([]Delivery, len(rcpts))
		for i, m := range ms {
			out[i] = Delivery{Account: rcpts[i], UID: m.UID, UIDValidity: m.UIDValidity, Used: m.Used}
		}
	}
	if serr := waitSynced(); err == nil && serr != nil {
		if uerr := s.undeliver(out, mailbox); uerr != nil {
			s.log.Error("take back index entries of a message that could not be synced", "err", uerr)
		}
		err = serr
	}
	if err != nil {
		cleanup()
		return nil, err
	}
	for _, d := range out {
		s.idx.Publish(Change{Kind: ChangeAppended, Account: d.Account.ID, Mailbox: mailbox, UID: d.UID})
	}
	return out, nil
}

// undeliver removes the index entries Deliver committed when the message
// itself could not be made durable. The UIDs stay used.
func (s *Store) undeliver(ds []Delivery, mailbox string) error {
	for _, d := range ds {
		if _, _, err := s.idx.Remove(d.Account.ID, d.Account.Addr, mailbox, []imap.UID{d.UID}, false); err != nil {
			return err
		}
	}
	return nil
}

// lockStripes takes the stripe locks of one mailbox for several accounts, in
// a fixed order so that concurrent deliveries cannot deadlock.
func (s *Store) lockStripes(rcpts []*Account, mailbox string) func() {
	set := map[int]bool{}
	for _, a := range rcpts {
		set[stripeIndex(a.ID, mailbox)] = true
	}
	idx := make([]int, 0, len(set))
	for i := range set {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	locks := make([]*sync.Mutex, len(idx))
	for i, n := range idx {
		locks[i] = &s.stripes[n]
		locks[i].Lock()
	}
	return func() {
		for _, m := range locks {
			m.Unlock()
		}
	}
}

// QuotaFits tells whether size more bytes fit in the account's quota.
func (s *Store) QuotaFits(addr string, size int64) (bool, error) {
	if s.opts.QuotaBytes <= 0 {
		return true, nil
	}
	rec, err := s.account(normAddr(addr))
	if err != nil {
		return false, err
	}
	return rec.Used+size <= s.opts.QuotaBytes, nil
}

// Quota returns an account's used bytes and its limit (0: none).
func (s *Store) Quota(addr string) (used, limit int64, err error) {
	rec, err := s.account(normAddr(addr))
	if err != nil {
		return 0, 0, err
	}
	return rec.Used, s.opts.QuotaBytes, nil
}

// Open reads back what was written so far, e.g. to hand the message to the
// outbound queue before it is delivered locally.
func (in *Incoming) Open() (*os.File, error) {
	if err := in.f.Sync(); err != nil {
		return nil, err
	}
	return os.Open(in.f.Name())
}
