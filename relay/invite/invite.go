// Package invite keeps the tokens of invite-only registration (SPEC
// section 4): the admin makes a token with `chatrelay invite create`, the
// link DCACCOUNT:https://D/new?token=T hands it to a person, and /new
// creates an account only when Use accepts the token.
//
// Tokens live in the bbolt file shared with the store, in the bucket
// "invites": token -> record (JSON). A token is 128 random bits in
// lower-case base32, so it survives URLs and QR codes unchanged.
package invite

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucket = []byte("invites")

// The ways Use refuses a token.
var (
	ErrUnknown = errors.New("unknown invite token")
	ErrExpired = errors.New("invite expired")
	ErrUsedUp  = errors.New("invite used up")
)

// Invite is one token and what is left of it.
type Invite struct {
	Token string `json:"-"`
	// Uses is how many accounts the token may create; 0 is unlimited.
	Uses    int       `json:"uses"`
	Used    int       `json:"used"`
	Created time.Time `json:"created"`
	// Expires is zero for a token that does not expire.
	Expires time.Time `json:"expires,omitzero"`
}

// Check says why the invite cannot be used at now, or nil.
func (inv *Invite) Check(now time.Time) error {
	if !inv.Expires.IsZero() && !now.Before(inv.Expires) {
		return ErrExpired
	}
	if inv.Uses > 0 && inv.Used >= inv.Uses {
		return ErrUsedUp
	}
	return nil
}

// Store holds the invites. It is safe for concurrent use.
type Store struct {
	db  *bolt.DB
	now func() time.Time
}

// Open uses db (the store's index, mailbox.Store.DB()) and creates the
// bucket if needed. now may be nil (time.Now).
func Open(db *bolt.DB, now func() time.Time) (*Store, error) {
	if now == nil {
		now = time.Now
	}
	err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("invites: %w", err)
	}
	return &Store{db: db, now: now}, nil
}

var tokenEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

func newToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return strings.ToLower(tokenEncoding.EncodeToString(b))
}

// normToken accepts a token as typed back by a person: case and
// surrounding space do not matter.
func normToken(t string) string { return strings.ToLower(strings.TrimSpace(t)) }

// Create makes a token good for uses accounts (0: unlimited) until ttl has
// passed (0: no expiry).
func (s *Store) Create(uses int, ttl time.Duration) (Invite, error) {
	if uses < 0 || ttl < 0 {
		return Invite{}, errors.New("invites: uses and ttl must not be negative")
	}
	now := s.now().UTC().Truncate(time.Second)
	inv := Invite{Token: newToken(), Uses: uses, Created: now}
	if ttl > 0 {
		inv.Expires = now.Add(ttl)
	}
	v, err := json.Marshal(&inv)
	if err != nil {
		return Invite{}, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Put([]byte(inv.Token), v)
	})
	if err != nil {
		return Invite{}, fmt.Errorf("invites: create: %w", err)
	}
	return inv, nil
}

// List returns every invite, usable or not, oldest first.
func (s *Store) List() ([]Invite, error) {
	var out []Invite
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			var inv Invite
			if err := json.Unmarshal(v, &inv); err != nil {
				return fmt.Errorf("invite record: %w", err)
			}
			inv.Token = string(k)
			out = append(out, inv)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("invites: list: %w", err)
	}
	slices.SortStableFunc(out, func(a, b Invite) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// Revoke deletes a token; ErrUnknown if there is none.
func (s *Store) Revoke(token string) error {
	token = normToken(token)
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b.Get([]byte(token)) == nil {
			return ErrUnknown
		}
		return b.Delete([]byte(token))
	})
}

// Use takes one use of a token, atomically: of concurrent calls on a token
// with one use left, exactly one succeeds. It returns ErrUnknown,
// ErrExpired or ErrUsedUp when the token may not be used.
func (s *Store) Use(token string) error {
	token = normToken(token)
	if token == "" {
		return ErrUnknown
	}
	now := s.now()
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		v := b.Get([]byte(token))
		if v == nil {
			return ErrUnknown
		}
		var inv Invite
		if err := json.Unmarshal(v, &inv); err != nil {
			return fmt.Errorf("invite record: %w", err)
		}
		if err := inv.Check(now); err != nil {
			return err
		}
		inv.Used++
		nv, err := json.Marshal(&inv)
		if err != nil {
			return err
		}
		return b.Put([]byte(token), nv)
	})
}

// Valid tells whether token could be used now, without using it.
func (s *Store) Valid(token string) bool {
	token = normToken(token)
	if token == "" {
		return false
	}
	var ok bool
	s.db.View(func(tx *bolt.Tx) error {
		var inv Invite
		if v := tx.Bucket(bucket).Get([]byte(token)); v != nil && json.Unmarshal(v, &inv) == nil {
			ok = inv.Check(s.now()) == nil
		}
		return nil
	})
	return ok
}

// UseInvite is Use under the name the web side's interface asks for.
func (s *Store) UseInvite(token string) error { return s.Use(token) }
