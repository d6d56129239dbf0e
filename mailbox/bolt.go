package mailbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	bolt "go.etcd.io/bbolt"
)

// The embedded index, DATA/index.db (IndexFile), is one bbolt file:
//
//	accounts  address -> AccountRecord (JSON)
//	meta      store-level counters and settings, the schema version
//	data      account id (8 bytes) -> the account's bucket
//
// An account's bucket has no sub-buckets, so that bbolt keeps a small one
// inline in the data bucket's leaf pages, many accounts to a page. A bucket
// with sub-buckets always takes pages of its own: nested, an empty account
// took three, and a login with SELECT paged them all in. The keys start
// with the kind of entry:
//
//	'b' name                        -> MailboxInfo (JSON)
//	'm' uvarint(len(name)) name uid -> MessageRecord (uid: 4 bytes big endian)
//	'd' key                         -> METADATA entry, push tokens
//
// The name's length before it keeps one mailbox's message keys together
// and in UID order under their prefix, apart from every other mailbox's.
// Version 1 of the layout nested buckets instead (migrate.go). Other
// packages keep their own buckets in the same file (Store.DB).
var (
	bucketAccounts = []byte("accounts")
	bucketData     = []byte("data")
	bucketMeta     = []byte("meta")

	keyNextAccountID = []byte("next-account-id")
	keySchema        = []byte("schema") // the layout version, in meta
)

// keyPushTokens is a METADATA key no entry has: entry names start with "/".
var keyPushTokens = append([]byte{kindMeta}, "\x00push-tokens"...)

// boltBackend is the embedded Backend. bbolt allows one writer at a time;
// Append groups concurrent deliveries into one transaction (commit.go).
type boltBackend struct {
	db      *bolt.DB
	log     *slog.Logger
	commits committer

	subMu sync.RWMutex
	subs  []func(Change)
}

var _ Backend = (*boltBackend)(nil)

// OpenBolt opens (creating if needed) the embedded index in dir, as Open
// does when Options.Index is nil, and brings it to the current schema. It
// holds the file's lock until closed.
func OpenBolt(dir string, log *slog.Logger) (Backend, error) {
	if log == nil {
		log = slog.Default()
	}
	return openBolt(dir, log)
}

func openBolt(dir string, log *slog.Logger) (*boltBackend, error) {
	db, err := bolt.Open(filepath.Join(dir, IndexFile), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: locked by another process (is chatrelay already running?)", dir)
		}
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	b := &boltBackend{db: db, log: log}
	b.commits.db = db
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketAccounts, bucketData, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init store %s: %w", dir, err)
	}
	if err := b.migrate(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return b, nil
}

// DB exposes the embedded index for packages that keep their own buckets in
// the same file (the outbound queue, push queue, invites, backups); they
// must not touch the store's buckets. It is nil with another backend.
func (s *Store) DB() *bolt.DB {
	if b, ok := s.idx.(*boltBackend); ok {
		return b.db
	}
	return nil
}

func (b *boltBackend) Close() error { return b.db.Close() }

func (b *boltBackend) Setting(key string) ([]byte, error) {
	var v []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		v = bytes.Clone(tx.Bucket(bucketMeta).Get([]byte(key)))
		return nil
	})
	return v, err
}

func (b *boltBackend) SetSetting(key string, value []byte) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte(key), value)
	})
}

func (b *boltBackend) Account(addr string) (*AccountRecord, error) {
	var rec *AccountRecord
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = getAccount(tx.Bucket(bucketAccounts), addr)
		return err
	})
	return rec, err
}

func (b *boltBackend) CreateAccount(addr string, rec AccountRecord, inbox MailboxInfo) (uint64, *AccountRecord, error) {
	var id uint64
	var existing *AccountRecord
	err := b.db.Update(func(tx *bolt.Tx) error {
		if r, err := getAccount(tx.Bucket(bucketAccounts), addr); err == nil {
			existing = r
			return nil
		}
		meta := tx.Bucket(bucketMeta)
		id = 1
		if v := meta.Get(keyNextAccountID); v != nil {
			id = decodeU64(v)
		}
		if err := meta.Put(keyNextAccountID, u64key(id+1)); err != nil {
			return err
		}
		data := tx.Bucket(bucketData)
		// Ids only grow, so a new account goes last: a full leaf split in
		// halves would leave every leaf behind half empty.
		data.FillPercent = 0.9
		acct, err := data.CreateBucket(u64key(id))
		if err != nil {
			return err
		}
		if err := createMailbox(acct, "INBOX", &inbox); err != nil {
			return err
		}
		rec.ID = id
		return putAccount(tx.Bucket(bucketAccounts), addr, &rec)
	})
	if err != nil {
		return 0, nil, err
	}
	if existing != nil {
		return existing.ID, existing, ErrExists
	}
	return id, nil, nil
}

func (b *boltBackend) UpdateAccount(addr string, f func(*AccountRecord) bool) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketAccounts)
		rec, err := getAccount(bk, addr)
		if err != nil {
			return err
		}
		if !f(rec) {
			return nil
		}
		return putAccount(bk, addr, rec)
	})
}

func (b *boltBackend) DeleteAccount(addr string) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		rec, err := getAccount(tx.Bucket(bucketAccounts), addr)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketAccounts).Delete([]byte(addr)); err != nil {
			return err
		}
		if tx.Bucket(bucketData).Bucket(u64key(rec.ID)) != nil {
			return tx.Bucket(bucketData).DeleteBucket(u64key(rec.ID))
		}
		return nil
	})
}

func (b *boltBackend) ForEachAccount(f func(addr string, rec *AccountRecord) error) error {
	return b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAccounts).ForEach(func(k, v []byte) error {
			var rec AccountRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("account %s: %w", k, err)
			}
			return f(string(k), &rec)
		})
	})
}

func (b *boltBackend) CountAccounts() (int, error) {
	n := 0
	err := b.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketAccounts).Stats().KeyN
		return nil
	})
	return n, err
}

// mailboxView runs f on a mailbox in a read transaction.
func (b *boltBackend) mailboxView(accountID uint64, name string, f func(m *mbox) error) error {
	return b.db.View(func(tx *bolt.Tx) error {
		m := findMailbox(tx, accountID, name)
		if m == nil {
			return ErrNoMailbox
		}
		return f(m)
	})
}

func (b *boltBackend) Mailbox(accountID uint64, name string) (*MailboxInfo, error) {
	var info *MailboxInfo
	err := b.mailboxView(accountID, name, func(m *mbox) error {
		var err error
		info, err = m.info()
		return err
	})
	return info, err
}

func (b *boltBackend) ForEachMailbox(accountID uint64, f func(name string, info *MailboxInfo) error) error {
	return b.db.View(func(tx *bolt.Tx) error {
		acct := accountBucket(tx, accountID)
		if acct == nil {
			return ErrNoAccount
		}
		return forEachMailbox(acct, func(m *mbox) error {
			info, err := m.info()
			if err != nil {
				return err
			}
			return f(m.name, info)
		})
	})
}

func (b *boltBackend) CreateMailbox(accountID uint64, name string, info MailboxInfo, max int) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		acct := accountBucket(tx, accountID)
		if acct == nil {
			return ErrNoAccount
		}
		if openMailbox(acct, name) != nil {
			return ErrMailboxExists
		}
		if countMailboxes(acct) >= max {
			return ErrTooManyMailboxes
		}
		return createMailbox(acct, name, &info)
	})
}

func (b *boltBackend) DeleteMailbox(accountID uint64, addr, name string) ([]string, error) {
	var files []string
	err := b.db.Update(func(tx *bolt.Tx) error {
		files = nil
		m := findMailbox(tx, accountID, name)
		if m == nil {
			return ErrNoMailbox
		}
		var freed int64
		err := m.forEach(func(_ imap.UID, v []byte) error {
			var r MessageRecord
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
		if _, err := addUsed(tx, addr, -freed); err != nil {
			return err
		}
		return m.remove()
	})
	return files, err
}

func (b *boltBackend) RenameMailbox(accountID uint64, from, to string) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		src := findMailbox(tx, accountID, from)
		if src == nil {
			return ErrNoMailbox
		}
		if openMailbox(src.acct, to) != nil {
			return ErrMailboxExists
		}
		return src.rename(to)
	})
}

func (b *boltBackend) SetSubscribed(accountID uint64, name string, subscribed bool) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		m := findMailbox(tx, accountID, name)
		if m == nil {
			return ErrNoMailbox
		}
		info, err := m.info()
		if err != nil {
			return err
		}
		info.Subscribed = subscribed
		return m.putInfo(info)
	})
}

func (b *boltBackend) CountMessages(accountID uint64, mailbox string) (int, error) {
	n := 0
	err := b.mailboxView(accountID, mailbox, func(m *mbox) error {
		n = m.count()
		return nil
	})
	return n, err
}

func (b *boltBackend) UIDs(accountID uint64, mailbox string) (*MailboxInfo, []imap.UID, error) {
	var info *MailboxInfo
	var uids []imap.UID
	err := b.mailboxView(accountID, mailbox, func(m *mbox) error {
		var err error
		if info, err = m.info(); err != nil {
			return err
		}
		uids = make([]imap.UID, 0, m.count())
		return m.forEach(func(uid imap.UID, _ []byte) error {
			uids = append(uids, uid)
			return nil
		})
	})
	return info, uids, err
}

func (b *boltBackend) Messages(accountID uint64, mailbox string, uids []imap.UID) ([]*MessageRecord, error) {
	recs := make([]*MessageRecord, len(uids))
	err := b.mailboxView(accountID, mailbox, func(m *mbox) error {
		for i, uid := range uids {
			r, err := m.record(uid)
			if err != nil {
				return err
			}
			recs[i] = r
		}
		return nil
	})
	return recs, err
}

func (b *boltBackend) ForEachMessage(accountID uint64, mailbox string, f func(mailbox string, uid imap.UID, r *MessageRecord) error) error {
	var r MessageRecord
	each := func(m *mbox) error {
		return m.forEach(func(uid imap.UID, v []byte) error {
			if err := r.decode(v); err != nil {
				return fmt.Errorf("account %d mailbox %q uid %d: %w", accountID, m.name, uid, err)
			}
			return f(m.name, uid, &r)
		})
	}
	if mailbox != "" {
		return b.mailboxView(accountID, mailbox, each)
	}
	return b.db.View(func(tx *bolt.Tx) error {
		acct := accountBucket(tx, accountID)
		if acct == nil {
			return ErrNoAccount
		}
		return forEachMailbox(acct, each)
	})
}

func (b *boltBackend) Append(ms []NewMessage) error {
	return b.commits.do(func(tx *bolt.Tx) error {
		for i := range ms {
			n := &ms[i]
			m := findMailbox(tx, n.AccountID, n.Mailbox)
			if m == nil {
				return fmt.Errorf("append to %s: %w", n.Addr, ErrNoMailbox)
			}
			info, err := m.info()
			if err != nil {
				return err
			}
			uid := imap.UID(info.UIDNext)
			info.UIDNext++
			if err := m.putInfo(info); err != nil {
				return err
			}
			if err := m.put(uid, &n.Record); err != nil {
				return err
			}
			used, err := addUsed(tx, n.Addr, n.Record.Size)
			if err != nil {
				return err
			}
			n.UID, n.UIDValidity, n.Used = uid, info.UIDValidity, used
		}
		return nil
	})
}

func (b *boltBackend) SetFlags(accountID uint64, mailbox string, uids []imap.UID, op imap.StoreFlagsOp, flags []imap.Flag) ([]*MessageRecord, []bool, error) {
	recs := make([]*MessageRecord, len(uids))
	changed := make([]bool, len(uids))
	err := b.db.Update(func(tx *bolt.Tx) error {
		m := findMailbox(tx, accountID, mailbox)
		if m == nil {
			return ErrNoMailbox
		}
		for i, uid := range uids {
			changed[i] = false
			r, err := m.record(uid)
			if err != nil {
				return err
			}
			if recs[i] = r; r == nil {
				continue
			}
			if r.ApplyFlags(op, flags) {
				changed[i] = true
				if err := m.put(uid, r); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return recs, changed, nil
}

func (b *boltBackend) Remove(accountID uint64, addr, mailbox string, uids []imap.UID, onlyDeleted bool) ([]imap.UID, []string, error) {
	var files []string
	var gone []imap.UID
	err := b.db.Update(func(tx *bolt.Tx) error {
		files, gone = nil, nil
		m := findMailbox(tx, accountID, mailbox)
		if m == nil {
			return nil
		}
		var freed int64
		for _, uid := range uids {
			r, err := m.record(uid)
			if err != nil {
				return err
			}
			if r == nil || onlyDeleted && !r.HasFlag(imap.FlagDeleted) {
				continue
			}
			if err := m.delete(uid); err != nil {
				return err
			}
			freed += r.Size
			files = append(files, r.File)
			gone = append(gone, uid)
		}
		_, err := addUsed(tx, addr, -freed)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return gone, files, nil
}

func metaKey(mailbox, entry string) []byte {
	return append([]byte{kindMeta}, mailbox+"\x00"+entry...)
}

// metaAccount returns the bucket of addr's account, where its METADATA
// entries and push tokens are.
func metaAccount(tx *bolt.Tx, addr string) (*bolt.Bucket, error) {
	rec, err := getAccount(tx.Bucket(bucketAccounts), addr)
	if err != nil {
		return nil, err
	}
	acct := accountBucket(tx, rec.ID)
	if acct == nil {
		return nil, ErrNoAccount
	}
	return acct, nil
}

func (b *boltBackend) Metadata(addr, mailbox, entry string) (*string, error) {
	var out *string
	err := b.db.View(func(tx *bolt.Tx) error {
		bk, err := metaAccount(tx, addr)
		if err != nil {
			return err
		}
		if v := bk.Get(metaKey(mailbox, entry)); v != nil {
			str := string(v)
			out = &str
		}
		return nil
	})
	return out, err
}

func (b *boltBackend) SetMetadata(addr, mailbox, entry string, value *string, max int) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk, err := metaAccount(tx, addr)
		if err != nil {
			return err
		}
		k := metaKey(mailbox, entry)
		if value == nil {
			return bk.Delete(k)
		}
		// The push tokens' key shares the prefix: it counts as one entry,
		// as it always has.
		if bk.Get(k) == nil && countPrefix(bk, []byte{kindMeta}) >= max {
			return ErrTooMany
		}
		return bk.Put(k, []byte(*value))
	})
}

func (b *boltBackend) PushTokens(addr string) ([]PushToken, error) {
	var out []PushToken
	err := b.db.View(func(tx *bolt.Tx) error {
		bk, err := metaAccount(tx, addr)
		if err != nil {
			return err
		}
		out = readTokens(bk)
		return nil
	})
	return out, err
}

func (b *boltBackend) UpdatePushTokens(addr string, f func([]PushToken) []PushToken) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk, err := metaAccount(tx, addr)
		if err != nil {
			return err
		}
		return writeTokens(bk, f(readTokens(bk)))
	})
}

func readTokens(b *bolt.Bucket) []PushToken {
	var tokens []PushToken
	if v := b.Get(keyPushTokens); v != nil {
		json.Unmarshal(v, &tokens)
	}
	return tokens
}

func writeTokens(b *bolt.Bucket, tokens []PushToken) error {
	if len(tokens) == 0 {
		return b.Delete(keyPushTokens)
	}
	v, err := json.Marshal(tokens)
	if err != nil {
		return err
	}
	return b.Put(keyPushTokens, v)
}

// Publish calls the subscribers in this process: one process holds the
// file's lock, so there are no others.
func (b *boltBackend) Publish(c Change) {
	b.subMu.RLock()
	defer b.subMu.RUnlock()
	for _, f := range b.subs {
		f(c)
	}
}

func (b *boltBackend) Subscribe(f func(Change)) {
	b.subMu.Lock()
	b.subs = append(b.subs, f)
	b.subMu.Unlock()
}

func getAccount(b *bolt.Bucket, addr string) (*AccountRecord, error) {
	v := b.Get([]byte(addr))
	if v == nil {
		return nil, ErrNoAccount
	}
	var rec AccountRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("account %s: %w", addr, err)
	}
	return &rec, nil
}

func putAccount(b *bolt.Bucket, addr string, rec *AccountRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return b.Put([]byte(addr), v)
}

// addUsed adjusts an account's stored byte count inside a write
// transaction and returns the new count.
func addUsed(tx *bolt.Tx, addr string, delta int64) (int64, error) {
	b := tx.Bucket(bucketAccounts)
	rec, err := getAccount(b, addr)
	if err != nil {
		return 0, err
	}
	rec.Used = max(rec.Used+delta, 0)
	return rec.Used, putAccount(b, addr, rec)
}

func u64key(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}
