// Package mailbox is chatrelay's store: a bbolt index plus one file per
// message, the accounts that own them, and the IMAP backend that serves them.
//
// Durability: a message file is written to tmp/ and linked into the
// account's directory; the fsyncs of the file and of that directory run
// side by side with the index commit (see Deliver), and the message is
// acknowledged only when all three are done. A crash before then can leave
// a file no index entry names, or an index entry whose file is missing or
// short; neither was acknowledged, and the sweep that Open runs after an
// unclean shutdown removes both.
package mailbox

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/safeio"
)

// The index, index.db:
//
//	accounts  address -> accountRecord (JSON)
//	meta      store-level counters and settings, the schema version
//	data      account id (8 bytes) -> the account's bucket
//
// An account's bucket has no sub-buckets, so that bbolt keeps a small one
// inline in the data bucket's leaf pages, many accounts to a page. A bucket
// with sub-buckets always takes pages of its own: nested, an empty account
// took three, and a login with SELECT paged them all in. The keys start
// with the kind of entry:
//
//	'b' name                        -> mailboxInfo (JSON)
//	'm' uvarint(len(name)) name uid -> msgRecord (uid: 4 bytes big endian)
//	'd' key                         -> METADATA entry, push tokens (metadata.go)
//
// The name's length before it keeps one mailbox's message keys together
// and in UID order under their prefix, apart from every other mailbox's.
// Version 1 of the layout nested buckets instead (migrate.go).
var (
	bucketAccounts = []byte("accounts")
	bucketData     = []byte("data")
	bucketMeta     = []byte("meta")

	keyNextAccountID = []byte("next-account-id")
	keySchema        = []byte("schema") // the layout version, in meta
)

// Options configure a Store.
type Options struct {
	// QuotaBytes is the storage limit per account; 0 means no limit.
	QuotaBytes int64
	// Now returns the current time; tests move it. Defaults to time.Now.
	Now func() time.Time
	// Logger receives store events; defaults to slog.Default().
	Logger *slog.Logger
	// SlowHashes is how many slow password hashes (argon2id, 19 MiB each)
	// may run at once; 0 means GOMAXPROCS-1, at least 1, read at Open.
	SlowHashes int
}

// Store is the message store of one relay. It holds the data directory's
// lock for as long as it is open.
type Store struct {
	dir  string
	db   *bolt.DB
	opts Options
	log  *slog.Logger

	hub    hub
	auth   authCache
	pw     passwords
	fileID atomic.Uint64

	// commits groups the index changes of concurrent deliveries.
	commits committer

	// stripes serialise index changes and live-view updates per mailbox, so
	// that IMAP sessions see UIDs appear in order.
	stripes [64]sync.Mutex
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	for _, d := range []string{dir, filepath.Join(dir, MessagesDir), filepath.Join(dir, tempDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create store directory: %w", err)
		}
	}
	db, err := bolt.Open(filepath.Join(dir, IndexFile), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: locked by another process (is chatrelay already running?)", dir)
		}
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	s := &Store{dir: dir, db: db, opts: opts, log: opts.Logger}
	s.commits.db = db
	s.hub.init()
	s.auth.init()
	s.fileID.Store(uint64(time.Now().UnixNano()))
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketAccounts, bucketData, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init store %s: %w", dir, err)
	}
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	key, err := loadPasswordKey(dir, db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	s.pw.init(key, opts.SlowHashes)
	// Only a crash leaves orphans: after a clean shutdown the walk over
	// the whole index is skipped.
	clean := filepath.Join(dir, cleanMarker)
	if _, err := os.Stat(clean); err != nil {
		if err := s.sweep(); err != nil {
			db.Close()
			return nil, fmt.Errorf("sweep store %s: %w", dir, err)
		}
	}
	if err := os.Remove(clean); err != nil && !errors.Is(err, os.ErrNotExist) {
		db.Close()
		return nil, err
	}
	if err := safeio.SyncDir(dir); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// cleanMarker exists only while the store is closed after a clean shutdown.
const cleanMarker = "clean-shutdown"

// Close closes the index and marks the shutdown clean. Sessions must be
// closed first.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return err
	}
	// Temp files of aborted deliveries would be swept at the next start;
	// without a sweep they must go now.
	tmp := filepath.Join(s.dir, tempDir)
	if entries, err := os.ReadDir(tmp); err == nil && len(entries) > 0 {
		return nil
	}
	return safeio.WriteFile(filepath.Join(s.dir, cleanMarker), nil, 0o600)
}

// Dir is the store's data directory.
func (s *Store) Dir() string { return s.dir }

// DB exposes the index for packages that keep their own buckets in the same
// file (the outbound queue); they must not touch the store's buckets.
func (s *Store) DB() *bolt.DB { return s.db }

func (s *Store) now() time.Time { return s.opts.Now() }

func (s *Store) stripe(accountID uint64, mailbox string) *sync.Mutex {
	return &s.stripes[stripeIndex(accountID, mailbox)]
}

func stripeIndex(accountID uint64, mailbox string) int {
	h := uint32(accountID)
	for i := 0; i < len(mailbox); i++ {
		h = h*31 + uint32(mailbox[i])
	}
	return int(h % 64)
}

func (s *Store) accountDir(id uint64) string {
	return filepath.Join(s.dir, MessagesDir, strconv.FormatUint(id, 10))
}

func (s *Store) msgPath(accountID uint64, file string) string {
	return filepath.Join(s.accountDir(accountID), file)
}

// newFileName returns a name no other message file has: a strictly
// increasing counter seeded from the clock at start.
func (s *Store) newFileName() string {
	return strconv.FormatUint(s.fileID.Add(1), 36)
}

// sweep removes what a crash can leave behind: temporary files, message
// files that no index entry refers to, and index entries whose file is
// missing or shorter than recorded (a delivery that was cut short before it
// was acknowledged; see Deliver).
func (s *Store) sweep() error {
	tmp := filepath.Join(s.dir, tempDir)
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range entries {
		os.Remove(filepath.Join(tmp, e.Name()))
	}
	type entry struct {
		mailbox string
		uid     imap.UID
		size    int64
	}
	referenced := map[uint64]map[string]entry{}
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketData).ForEachBucket(func(k []byte) error {
			id := binary.BigEndian.Uint64(k)
			files := map[string]entry{}
			referenced[id] = files
			return forEachMailbox(tx.Bucket(bucketData).Bucket(k), func(m *mbox) error {
				return m.forEach(func(uid imap.UID, v []byte) error {
					var r msgRecord
					if err := r.decode(v); err != nil {
						return err
					}
					files[r.File] = entry{m.name, uid, r.Size}
					return nil
				})
			})
		})
	})
	if err != nil {
		return err
	}
	accts, err := os.ReadDir(filepath.Join(s.dir, MessagesDir))
	if err != nil {
		return err
	}
	removed := 0
	whole := map[uint64]map[string]bool{} // files present and long enough
	for _, a := range accts {
		id, err := strconv.ParseUint(a.Name(), 10, 64)
		if err != nil || !a.IsDir() {
			continue
		}
		files := referenced[id]
		dir := s.accountDir(id)
		msgs, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		whole[id] = seen
		for _, m := range msgs {
			e, ok := files[m.Name()]
			if !ok {
				os.Remove(filepath.Join(dir, m.Name()))
				removed++
				continue
			}
			if fi, err := m.Info(); err == nil && fi.Size() >= e.size {
				seen[m.Name()] = true
			}
		}
		for name := range files {
			if !seen[name] {
				os.Remove(filepath.Join(dir, name))
			}
		}
		if files == nil {
			os.Remove(dir)
		}
	}
	// Index entries without a whole file (their account's directory may be
	// missing altogether).
	broken := map[uint64][]entry{}
	n := 0
	for id, files := range referenced {
		for name, e := range files {
			if !whole[id][name] {
				broken[id] = append(broken[id], e)
				n++
			}
		}
	}
	if n > 0 {
		err := s.db.Update(func(tx *bolt.Tx) error {
			addrs := map[uint64]string{}
			err := tx.Bucket(bucketAccounts).ForEach(func(k, v []byte) error {
				var rec accountRecord
				if err := json.Unmarshal(v, &rec); err != nil {
					return err
				}
				if broken[rec.ID] != nil {
					addrs[rec.ID] = string(k)
				}
				return nil
			})
			if err != nil {
				return err
			}
			for id, es := range broken {
				var size int64
				for _, e := range es {
					if m := findMailbox(tx, id, e.mailbox); m != nil {
						if err := m.delete(e.uid); err != nil {
							return err
						}
					}
					size += e.size
				}
				if addr := addrs[id]; addr != "" {
					if _, err := addUsed(tx, addr, -size); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		s.log.Warn("dropped index entries of unacknowledged deliveries cut short by a crash", "count", n)
	}
	if removed > 0 {
		s.log.Info("removed orphan message files left by a crash", "count", removed)
	}
	return nil
}

func u64key(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// normAddr lower-cases an address; relay code passes addresses through it
// before any lookup.
func normAddr(addr string) string { return strings.ToLower(strings.TrimSpace(addr)) }
