package mailbox

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/emersion/go-imap/v2"
)

// Lifecycle are the retention rules (SPEC section 7).
type Lifecycle struct {
	// MaxAge: every message goes after this long.
	MaxAge time.Duration
	// LargeRead: messages over LargeSize that were read go after this long.
	LargeRead time.Duration
	LargeSize int64
	// AccountIdle: accounts with no login for this long are deleted.
	AccountIdle time.Duration
	// QuotaHigh and QuotaLow: past QuotaHigh (a fraction of the quota) the
	// oldest messages go until usage is at QuotaLow, never one younger than
	// QuotaKeep.
	QuotaHigh, QuotaLow float64
	QuotaKeep           time.Duration
}

// DefaultLifecycle holds the SPEC defaults.
func DefaultLifecycle() Lifecycle {
	return Lifecycle{
		MaxAge:      20 * 24 * time.Hour,
		LargeRead:   7 * 24 * time.Hour,
		LargeSize:   200 * 1024,
		AccountIdle: 90 * 24 * time.Hour,
		QuotaHigh:   0.75,
		QuotaLow:    0.70,
		QuotaKeep:   24 * time.Hour,
	}
}

// ExpireStats says what one expiry pass removed.
type ExpireStats struct {
	Messages int
	Bytes    int64
	Accounts int
}

type msgRef struct {
	mailbox string
	uid     imap.UID
	size    int64
	date    time.Time
}

// Expire applies the retention rules to every account once. Sessions see
// the removals as expunges. Each account costs one read of its messages:
// its record comes from the walk over all of them, and the quota is trimmed
// only when that record says it is past the mark.
func (s *Store) Expire(lc Lifecycle) (ExpireStats, error) {
	var st ExpireStats
	now := s.now()
	type account struct {
		addr string
		rec  AccountRecord
	}
	var accounts []account
	err := s.idx.ForEachAccount(func(addr string, rec *AccountRecord) error {
		accounts = append(accounts, account{addr, *rec})
		return nil
	})
	if err != nil {
		return st, err
	}
	idleCutoff := now.Add(-lc.AccountIdle).UTC().Format("2006-01-02")
	for _, a := range accounts {
		if lc.AccountIdle > 0 && a.rec.LastLogin != "" && a.rec.LastLogin < idleCutoff {
			if err := s.DeleteAccount(a.addr); err != nil && !errors.Is(err, ErrNoAccount) {
				return st, err
			}
			st.Accounts++
			continue
		}
		acc := &Account{ID: a.rec.ID, Addr: a.addr}
		refs, err := s.messages(acc.ID)
		if errors.Is(err, ErrNoAccount) {
			continue // deleted meanwhile
		} else if err != nil {
			return st, err
		}
		var doomed []msgRef
		for _, m := range refs {
			age := now.Sub(m.date)
			switch {
			case lc.MaxAge > 0 && age > lc.MaxAge:
			case lc.LargeRead > 0 && m.size > lc.LargeSize && age > lc.LargeRead && m.seen:
			default:
				continue
			}
			doomed = append(doomed, m.msgRef)
		}
		n, b, err := s.removeRefs(acc, doomed)
		st.Messages += n
		st.Bytes += b
		if err != nil {
			return st, err
		}
		// Deliveries since the walk read the record trim the quota
		// themselves (relay), or the next pass does.
		if !s.overQuota(a.rec.Used-b, lc) {
			continue
		}
		n, b, err = s.TrimQuota(a.addr, lc)
		st.Messages += n
		st.Bytes += b
		if err != nil {
			return st, err
		}
	}
	return st, nil
}

func (s *Store) overQuota(used int64, lc Lifecycle) bool {
	return s.opts.QuotaBytes > 0 && lc.QuotaHigh > 0 && float64(used) > lc.QuotaHigh*float64(s.opts.QuotaBytes)
}

type msgInfo struct {
	msgRef
	seen bool
}

// messages lists an account's messages, oldest first.
func (s *Store) messages(accountID uint64) ([]msgInfo, error) {
	var out []msgInfo
	err := s.idx.ForEachMessage(accountID, "", func(mailbox string, uid imap.UID, r *MessageRecord) error {
		out = append(out, msgInfo{msgRef{mailbox, uid, r.Size, r.Date}, r.HasFlag(imap.FlagSeen)})
		return nil
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].date.Before(out[j].date) })
	return out, err
}

func (s *Store) removeRefs(acc *Account, refs []msgRef) (n int, bytes int64, err error) {
	byMailbox := map[string][]imap.UID{}
	for _, r := range refs {
		byMailbox[r.mailbox] = append(byMailbox[r.mailbox], r.uid)
		bytes += r.size
	}
	for mbox, uids := range byMailbox {
		if err := s.Remove(acc, mbox, uids, false); err != nil {
			return n, bytes, err
		}
		n += len(uids)
	}
	return n, bytes, nil
}

// TrimQuota removes an account's oldest messages when its usage is past
// lc.QuotaHigh of the quota, down to lc.QuotaLow, sparing messages younger
// than lc.QuotaKeep.
func (s *Store) TrimQuota(addr string, lc Lifecycle) (int, int64, error) {
	if s.opts.QuotaBytes <= 0 || lc.QuotaHigh <= 0 {
		return 0, 0, nil
	}
	used, _, err := s.Quota(addr)
	if err != nil || !s.overQuota(used, lc) {
		return 0, 0, err
	}
	acc, err := s.Lookup(addr)
	if err != nil {
		return 0, 0, err
	}
	refs, err := s.messages(acc.ID)
	if err != nil {
		return 0, 0, err
	}
	target := int64(lc.QuotaLow * float64(s.opts.QuotaBytes))
	keepAfter := s.now().Add(-lc.QuotaKeep)
	var doomed []msgRef
	for _, m := range refs {
		if used <= target || m.date.After(keepAfter) {
			break
		}
		doomed = append(doomed, m.msgRef)
		used -= m.size
	}
	n, b, err := s.removeRefs(acc, doomed)
	if n > 0 {
		s.log.Info("quota trimmed", "messages", n, "bytes", b)
	}
	return n, b, err
}

// DeleteAccount removes an account and everything it owns: index entries,
// message files, metadata and push tokens. Open sessions of the account see
// their mailboxes emptied.
func (s *Store) DeleteAccount(addr string) error {
	addr = normAddr(addr)
	rec, err := s.account(addr)
	if err != nil {
		return err
	}
	// Empty the mailboxes first, so that live sessions hear of it.
	acc := &Account{ID: rec.ID, Addr: addr}
	refs, err := s.messages(rec.ID)
	if err != nil && !errors.Is(err, ErrNoAccount) {
		return err
	}
	var all []msgRef
	for _, m := range refs {
		all = append(all, m.msgRef)
	}
	if _, _, err := s.removeRefs(acc, all); err != nil {
		return err
	}
	err = s.idx.DeleteAccount(addr)
	if err != nil {
		return fmt.Errorf("delete account: %w", err)
	}
	s.auth.forget(addr)
	// Whatever files remain (a crash mid-way) go with the directory.
	os.RemoveAll(s.accountDir(rec.ID))
	s.log.Info("account deleted", "id", rec.ID)
	return nil
}
