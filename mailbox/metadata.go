package mailbox

import (
	"encoding/json"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
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

// keyPushTokens is a METADATA key no entry has: entry names start with "/".
var keyPushTokens = append([]byte{kindMeta}, "\x00push-tokens"...)

type pushToken struct {
	Token string `json:"t"`
	Set   int64  `json:"s"` // unix seconds of the last SETMETADATA
}

func metaKey(mailbox, entry string) []byte {
	return append([]byte{kindMeta}, mailboxName(mailbox)+"\x00"+entry...)
}

// metaAccount returns the bucket of addr's account, where its METADATA
// entries and push tokens are.
func (s *Store) metaAccount(tx *bolt.Tx, addr string) (*bolt.Bucket, error) {
	rec, err := getAccount(tx.Bucket(bucketAccounts), normAddr(addr))
	if err != nil {
		return nil, err
	}
	acct := accountBucket(tx, rec.ID)
	if acct == nil {
		return nil, ErrNoAccount
	}
	return acct, nil
}

// GetPrivate returns a private METADATA entry of an account's mailbox ("" for
// server entries), or nil.
func (s *Store) GetPrivate(addr, mailbox, entry string) (*string, error) {
	var out *string
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := s.metaAccount(tx, addr)
		if err != nil {
			return err
		}
		if v := b.Get(metaKey(mailbox, entry)); v != nil {
			str := string(v)
			out = &str
		}
		return nil
	})
	return out, err
}

// SetPrivate sets (or with nil, deletes) a private METADATA entry.
func (s *Store) SetPrivate(addr, mailbox, entry string, value *string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := s.metaAccount(tx, addr)
		if err != nil {
			return err
		}
		k := metaKey(mailbox, entry)
		if value == nil {
			return b.Delete(k)
		}
		if b.Get(k) == nil && countPrefix(b, []byte{kindMeta}) >= MaxPrivateEntries {
			return ErrTooMany
		}
		return b.Put(k, []byte(*value))
	})
}

// AddPushToken remembers a device token for an account; setting a known
// token again refreshes it. The oldest tokens go beyond MaxPushTokens.
func (s *Store) AddPushToken(addr, token string) error {
	now := s.now().Unix()
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := s.metaAccount(tx, addr)
		if err != nil {
			return err
		}
		// Newest first: the token just set leads.
		kept := []pushToken{{Token: token, Set: now}}
		for _, t := range readTokens(b) {
			if t.Token != token {
				kept = append(kept, t)
			}
		}
		if len(kept) > MaxPushTokens {
			kept = kept[:MaxPushTokens]
		}
		return writeTokens(b, kept)
	})
}

// PushTokens returns an account's live tokens, newest first.
func (s *Store) PushTokens(addr string) ([]string, error) {
	cutoff := s.now().Add(-PushTokenTTL).Unix()
	var out []string
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := s.metaAccount(tx, addr)
		if err != nil {
			return err
		}
		for _, t := range readTokens(b) {
			if t.Set >= cutoff {
				out = append(out, t.Token)
			}
		}
		return nil
	})
	return out, err
}

// DropPushToken forgets a token (the notification service said it is gone).
func (s *Store) DropPushToken(addr, token string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := s.metaAccount(tx, addr)
		if err != nil {
			return err
		}
		tokens := readTokens(b)
		kept := tokens[:0]
		for _, t := range tokens {
			if t.Token != token {
				kept = append(kept, t)
			}
		}
		return writeTokens(b, kept)
	})
	if errors.Is(err, ErrNoAccount) {
		return nil
	}
	return err
}

func readTokens(b *bolt.Bucket) []pushToken {
	var tokens []pushToken
	if v := b.Get(keyPushTokens); v != nil {
		json.Unmarshal(v, &tokens)
	}
	return tokens
}

func writeTokens(b *bolt.Bucket, tokens []pushToken) error {
	if len(tokens) == 0 {
		return b.Delete(keyPushTokens)
	}
	v, err := json.Marshal(tokens)
	if err != nil {
		return err
	}
	return b.Put(keyPushTokens, v)
}
