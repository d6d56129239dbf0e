package mailbox

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrAuthFailed is returned for a wrong password, an unknown account that may
// not be created, or a blocked account. The client only ever learns this.
var ErrAuthFailed = errors.New("authentication failed")

// ErrUnavailable marks a refusal that may pass later (the machine is
// starved); clients get a temporary error instead of "wrong password".
var ErrUnavailable = errors.New("temporarily unavailable")

// ErrNoAccount is returned by lookups for an address that has no account.
var ErrNoAccount = errors.New("no such account")

// ErrExists is returned when creating an account that already exists.
var ErrExists = errors.New("account already exists")

// Account identifies a logged-in user.
type Account struct {
	ID   uint64
	Addr string
}

// AccountInfo is what the admin tools see of an account.
type AccountInfo struct {
	Addr      string
	Created   time.Time
	LastLogin string // day, YYYY-MM-DD; nothing finer is kept
	UsedBytes int64
	Blocked   bool
}

// CreateCheck decides whether an unknown address may be created at its
// first login; a nil CreateCheck means accounts are never created that way.
type CreateCheck func(addr, password string) error

// authCache remembers logins verified since start, keyed by address, as a
// fast salted digest, so that a client reconnecting costs one SHA-256.
type authCache struct {
	mu   sync.Mutex
	salt [32]byte
	m    map[string]cachedLogin
}

type cachedLogin struct {
	digest [32]byte
	id     uint64
	day    string // last login day already written to the index
}

func (c *authCache) init() {
	rand.Read(c.salt[:])
	c.m = map[string]cachedLogin{}
}

func (c *authCache) digest(addr, password string) [32]byte {
	h := sha256.New()
	h.Write(c.salt[:])
	h.Write([]byte(addr))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var d [32]byte
	h.Sum(d[:0])
	return d
}

func (c *authCache) lookup(addr, password string) (cachedLogin, bool) {
	d := c.digest(addr, password)
	c.mu.Lock()
	e, ok := c.m[addr]
	c.mu.Unlock()
	if !ok || subtle.ConstantTimeCompare(d[:], e.digest[:]) != 1 {
		return cachedLogin{}, false
	}
	return e, true
}

func (c *authCache) put(addr, password string, id uint64, day string) {
	d := c.digest(addr, password)
	c.mu.Lock()
	c.m[addr] = cachedLogin{digest: d, id: id, day: day}
	c.mu.Unlock()
}

func (c *authCache) forget(addr string) {
	c.mu.Lock()
	delete(c.m, addr)
	c.mu.Unlock()
}

func (s *Store) today() string { return s.now().UTC().Format("2006-01-02") }

// Login checks a password and returns the account. An unknown address is
// created when create allows it, its password stored as Chosen; concurrent
// first logins of one address create it once. A wrong password changes
// nothing that is stored. A record in a form the relay no longer makes is
// converted after a successful login.
func (s *Store) Login(addr, password string, create CreateCheck) (*Account, error) {
	addr = normAddr(addr)
	today := s.today()
	if e, ok := s.auth.lookup(addr, password); ok {
		if e.day != today {
			s.touchLogin(addr, password, e.id, today, "")
		}
		return &Account{ID: e.id, Addr: addr}, nil
	}
	rec, err := s.account(addr)
	switch {
	case err == nil:
		// The password is checked for a blocked account too, so that
		// timing does not tell it apart.
		ok, legacy := s.pw.verify(rec.Hash, password)
		if !ok || rec.Blocked {
			return nil, ErrAuthFailed
		}
		rehash := ""
		if legacy {
			kind := Chosen
			if looksGenerated(password) {
				kind = Generated
			}
			rehash = s.pw.hash(password, kind)
		}
		if rec.LastLogin == today && rehash == "" {
			// Nothing to record: cache the login without a write.
			s.auth.put(addr, password, rec.ID, today)
		} else {
			s.touchLogin(addr, password, rec.ID, today, rehash)
		}
		return &Account{ID: rec.ID, Addr: addr}, nil
	case errors.Is(err, ErrNoAccount):
		if create == nil {
			// Spend the same time as a wrong password, so that timing
			// does not tell which addresses exist.
			s.pw.fail(password)
			return nil, ErrAuthFailed
		}
		if err := create(addr, password); err != nil {
			if errors.Is(err, ErrUnavailable) {
				return nil, err
			}
			// A refused new name costs what a wrong password costs.
			s.pw.fail(password)
			return nil, fmt.Errorf("%w: %v", ErrAuthFailed, err)
		}
		id, err := s.createAccount(addr, password, Chosen, true)
		if err != nil {
			return nil, err
		}
		s.auth.put(addr, password, id, today)
		return &Account{ID: id, Addr: addr}, nil
	default:
		return nil, err
	}
}

// touchLogin records the day of a successful login, once per day, and a
// converted password record when rehash is set.
func (s *Store) touchLogin(addr, password string, id uint64, today, rehash string) {
	err := s.idx.UpdateAccount(addr, func(rec *AccountRecord) bool {
		if rec.LastLogin == today && rehash == "" {
			return false
		}
		rec.LastLogin = today
		if rehash != "" {
			rec.Hash = rehash
		}
		return true
	})
	if err != nil {
		s.log.Warn("record last login", "err", err)
		return
	}
	if rehash != "" {
		s.log.Info("password record converted", "id", id)
	}
	s.auth.put(addr, password, id, today)
}

// CreateAccount adds an account (admin tools, /new), storing the password
// as kind says. It fails with ErrExists when the address is taken.
func (s *Store) CreateAccount(addr, password string, kind PasswordKind) error {
	_, err := s.createAccount(normAddr(addr), password, kind, false)
	return err
}

// createAccount hashes outside the write transaction. With loginRace set, an
// account created meanwhile by a concurrent first login is accepted when the
// password matches it.
func (s *Store) createAccount(addr, password string, kind PasswordKind, loginRace bool) (uint64, error) {
	hash := s.pw.hash(password, kind)
	now := s.now()
	rec := AccountRecord{Hash: hash, Created: now.Unix(), LastLogin: s.today()}
	inbox := MailboxInfo{UIDValidity: uint32(now.Unix()), UIDNext: 1, Subscribed: true}
	id, existing, err := s.idx.CreateAccount(addr, rec, inbox)
	if err != nil && !errors.Is(err, ErrExists) {
		return 0, fmt.Errorf("create account: %w", err)
	}
	if existing != nil {
		if !loginRace {
			return 0, ErrExists
		}
		if ok, _ := s.pw.verify(existing.Hash, password); !ok || existing.Blocked {
			return 0, ErrAuthFailed
		}
		return existing.ID, nil
	}
	s.log.Info("account created", "id", id)
	return id, nil
}

// AccountExists tells whether addr has an account (blocked ones included).
func (s *Store) AccountExists(addr string) (bool, error) {
	_, err := s.account(normAddr(addr))
	if errors.Is(err, ErrNoAccount) {
		return false, nil
	}
	return err == nil, err
}

// Lookup returns the account of addr, or ErrNoAccount.
func (s *Store) Lookup(addr string) (*Account, error) {
	addr = normAddr(addr)
	rec, err := s.account(addr)
	if err != nil {
		return nil, err
	}
	return &Account{ID: rec.ID, Addr: addr}, nil
}

func (s *Store) account(addr string) (*AccountRecord, error) {
	return s.idx.Account(addr)
}

// Info returns what the admin tools show of one account.
func (s *Store) Info(addr string) (*AccountInfo, error) {
	addr = normAddr(addr)
	rec, err := s.account(addr)
	if err != nil {
		return nil, err
	}
	return rec.info(addr), nil
}

// Accounts lists every account in address order.
func (s *Store) Accounts() ([]AccountInfo, error) {
	var out []AccountInfo
	err := s.idx.ForEachAccount(func(addr string, rec *AccountRecord) error {
		out = append(out, *rec.info(addr))
		return nil
	})
	return out, err
}

// CountAccounts returns the number of accounts.
func (s *Store) CountAccounts() (int, error) { return s.idx.CountAccounts() }

func (r *AccountRecord) info(addr string) *AccountInfo {
	return &AccountInfo{Addr: addr, Created: time.Unix(r.Created, 0).UTC(), LastLogin: r.LastLogin, UsedBytes: r.Used, Blocked: r.Blocked}
}

// SetPassword replaces an account's password (admin tools), storing it as
// kind says.
func (s *Store) SetPassword(addr, password string, kind PasswordKind) error {
	addr = normAddr(addr)
	hash := s.pw.hash(password, kind)
	err := s.updateAccount(addr, func(r *AccountRecord) { r.Hash = hash })
	s.auth.forget(addr)
	return err
}

// SetBlocked blocks or unblocks logins for an account (admin tools).
func (s *Store) SetBlocked(addr string, blocked bool) error {
	addr = normAddr(addr)
	err := s.updateAccount(addr, func(r *AccountRecord) { r.Blocked = blocked })
	s.auth.forget(addr)
	return err
}

func (s *Store) updateAccount(addr string, f func(*AccountRecord)) error {
	return s.idx.UpdateAccount(addr, func(r *AccountRecord) bool {
		f(r)
		return true
	})
}
