package mailbox

import (
	"errors"
	"time"
)

// Limits on what one account may keep as METADATA: a client cannot fill the
// index through it.
const (
	MaxPrivateEntries = 64
	MaxPushTokens     = 16
	// PushTokenTTL is how long a push token lives without being set again
	// (SPEC section 7).
	PushTokenTTL = 90 * 24 * time.Hour
)

// ErrTooMany is returned when an account has too many METADATA entries.
var ErrTooMany = errors.New("too many metadata entries")

// GetPrivate returns a private METADATA entry of an account's mailbox ("" for
// server entries), or nil.
func (s *Store) GetPrivate(addr, mailbox, entry string) (*string, error) {
	return s.idx.Metadata(normAddr(addr), mailboxName(mailbox), entry)
}

// SetPrivate sets (or with nil, deletes) a private METADATA entry.
func (s *Store) SetPrivate(addr, mailbox, entry string, value *string) error {
	return s.idx.SetMetadata(normAddr(addr), mailboxName(mailbox), entry, value, MaxPrivateEntries)
}

// AddPushToken remembers a device token for an account; setting a known
// token again refreshes it. The oldest tokens go beyond MaxPushTokens.
func (s *Store) AddPushToken(addr, token string) error {
	now := s.now().Unix()
	return s.idx.UpdatePushTokens(normAddr(addr), func(tokens []PushToken) []PushToken {
		// Newest first: the token just set leads.
		kept := []PushToken{{Token: token, Set: now}}
		for _, t := range tokens {
			if t.Token != token {
				kept = append(kept, t)
			}
		}
		if len(kept) > MaxPushTokens {
			kept = kept[:MaxPushTokens]
		}
		return kept
	})
}

// PushTokens returns an account's live tokens, newest first.
func (s *Store) PushTokens(addr string) ([]string, error) {
	cutoff := s.now().Add(-PushTokenTTL).Unix()
	tokens, err := s.idx.PushTokens(normAddr(addr))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range tokens {
		if t.Set >= cutoff {
			out = append(out, t.Token)
		}
	}
	return out, nil
}

// DropPushToken forgets a token (the notification service said it is gone).
func (s *Store) DropPushToken(addr, token string) error {
	err := s.idx.UpdatePushTokens(normAddr(addr), func(tokens []PushToken) []PushToken {
		kept := tokens[:0]
		for _, t := range tokens {
			if t.Token != token {
				kept = append(kept, t)
			}
		}
		return kept
	})
	if errors.Is(err, ErrNoAccount) {
		return nil
	}
	return err
}
