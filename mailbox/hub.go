package mailbox

import (
	"sort"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// The hub keeps, for each mailbox some IMAP session has selected, the list
// of UIDs in sequence order and the tracker that fans changes out to every
// session (IDLE included). Deliveries and expunges update it right after
// their transaction commits, under the mailbox's stripe lock, so sessions see
// UIDs in order and hear of new mail at once: no polling anywhere.
type hub struct {
	mu sync.Mutex
	m  map[liveKey]*live
}

type liveKey struct {
	account uint64
	mailbox string
}

// live.mu also guards calls into tracker: go-imap's SessionTracker reads
// the mailbox's message count in EncodeSeqNum without the tracker's lock, so
// queueing updates and encoding sequence numbers must not overlap.
type live struct {
	key     liveKey
	refs    int
	tracker *imapserver.MailboxTracker

	mu          sync.Mutex
	waiters     map[chan struct{}]struct{} // IDLE sessions to wake
	notifiers   map[notifier]struct{}      // connections told of changes
	uids        []imap.UID
	uidValidity uint32
	uidNext     imap.UID
}

func (h *hub) init() { h.m = map[liveKey]*live{} }

func (h *hub) get(k liveKey) *live {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.m[k]
}

// openLive returns the live view of a mailbox, loading it from the index if
// no session has it yet. Callers release it with closeLive.
func (s *Store) openLive(accountID uint64, name string) (*live, error) {
	k := liveKey{accountID, mailboxName(name)}
	stripe := s.stripe(k.account, k.mailbox)
	stripe.Lock()
	defer stripe.Unlock()
	s.hub.mu.Lock()
	if l := s.hub.m[k]; l != nil {
		l.refs++
		s.hub.mu.Unlock()
		return l, nil
	}
	s.hub.mu.Unlock()

	l := &live{key: k, refs: 1}
	info, uids, err := s.idx.UIDs(k.account, k.mailbox)
	if err != nil {
		return nil, err
	}
	l.uidValidity, l.uidNext, l.uids = info.UIDValidity, imap.UID(info.UIDNext), uids
	l.tracker = imapserver.NewMailboxTracker(uint32(len(l.uids)))
	s.hub.mu.Lock()
	s.hub.m[k] = l
	s.hub.mu.Unlock()
	return l, nil
}

func (s *Store) closeLive(l *live) {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	l.refs--
	if l.refs == 0 {
		delete(s.hub.m, l.key)
	}
}

// applyChange brings the live view of a changed mailbox up to date and tells
// its sessions (Backend.Subscribe). The publisher holds the mailbox's stripe
// lock.
func (s *Store) applyChange(c Change) {
	k := liveKey{c.Account, c.Mailbox}
	switch c.Kind {
	case ChangeAppended:
		s.appended(k, c.UID)
	case ChangeExpunged:
		s.expunged(k, c.UIDs)
	case ChangeFlags:
		source, _ := c.Origin.(*imapserver.SessionTracker)
		s.flagsChanged(k, c.UID, c.Flags, source)
	}
}

// appended tells sessions of a mailbox about a committed new message. The
// caller holds the mailbox's stripe lock.
func (s *Store) appended(k liveKey, uid imap.UID) {
	l := s.hub.get(k)
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.uids = append(l.uids, uid)
	if uid >= l.uidNext {
		l.uidNext = uid + 1
	}
	l.tracker.QueueNumMessages(uint32(len(l.uids)))
	l.wake()
}

// expunged tells sessions of a mailbox about committed removals. The caller
// holds the mailbox's stripe lock.
func (s *Store) expunged(k liveKey, uids []imap.UID) {
	l := s.hub.get(k)
	if l == nil || len(uids) == 0 {
		return
	}
	gone := make(map[imap.UID]bool, len(uids))
	for _, u := range uids {
		gone[u] = true
	}
	l.mu.Lock()
	var seqs []uint32
	kept := l.uids[:0:0]
	for i, u := range l.uids {
		if gone[u] {
			seqs = append(seqs, uint32(i+1))
		} else {
			kept = append(kept, u)
		}
	}
	l.uids = kept
	defer l.mu.Unlock()
	// Highest first, so each number is valid in the state it describes.
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] > seqs[j] })
	for _, seq := range seqs {
		l.tracker.QueueExpunge(seq)
	}
	l.wake()
}

// flagsChanged tells other sessions of a mailbox that a message's flags
// changed (RFC 3501 section 7.4.2: unsolicited FETCH).
func (s *Store) flagsChanged(k liveKey, uid imap.UID, flags []imap.Flag, source *imapserver.SessionTracker) {
	l := s.hub.get(k)
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	i := sort.Search(len(l.uids), func(i int) bool { return l.uids[i] >= uid })
	if i < len(l.uids) && l.uids[i] == uid {
		l.tracker.QueueMessageFlags(uint32(i+1), uid, flags, source)
		l.wake()
	}
}

// A notifier is a connection that answers IDLE without calling
// Session.Idle (imapext.Conn with imapext.Options.IdleNotify): the session
// registers it while a mailbox is selected, and wake tells it of every
// change. Notify must not block.
type notifier interface{ Notify() }

// wake signals every IDLE session of the mailbox; the caller holds l.mu.
func (l *live) wake() {
	for ch := range l.waiters {
		select {
		case ch <- struct{}{}:
		default: // already signalled
		}
	}
	for n := range l.notifiers {
		n.Notify()
	}
}

// addNotifier registers n; the caller holds l.mu.
func (l *live) addNotifier(n notifier) {
	if l.notifiers == nil {
		l.notifiers = map[notifier]struct{}{}
	}
	l.notifiers[n] = struct{}{}
}

func (l *live) removeNotifier(n notifier) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.notifiers, n)
	if len(l.notifiers) == 0 {
		l.notifiers = nil
	}
}

// idle writes updates to an IDLE session until stop is closed. Unlike
// go-imap's SessionTracker.Idle, it registers for wake-ups before flushing
// what is already queued, so an update that lands between the previous
// command and IDLE is not held back until the next one.
func (l *live) idle(t *imapserver.SessionTracker, w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	ch := make(chan struct{}, 1)
	l.mu.Lock()
	if l.waiters == nil {
		l.waiters = map[chan struct{}]struct{}{}
	}
	l.waiters[ch] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.waiters, ch)
		l.mu.Unlock()
	}()
	for {
		if err := t.Poll(w, true); err != nil {
			return err
		}
		select {
		case <-ch:
		case <-stop:
			return nil
		}
	}
}
