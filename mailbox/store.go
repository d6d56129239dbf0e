// Package mailbox is chatrelay's store: an index (Backend; a bbolt file by
// default, bolt.go) plus one file per message, the accounts that own them,
// and the IMAP backend that serves them.
//
// Durability: a message file is written to tmp/ and linked into the
// account's directory; its fsync and its directories' run while the index
// commits, and the message is acknowledged and announced only when all
// have finished (Deliver). A crash before that can leave a file no index
// entry names, or an entry whose file is short or missing; Open's sweep
// after an unclean shutdown removes both.
package mailbox

import (
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

	"github.com/chatrelay/chatrelay/internal/safeio"
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
	// Index is the index to use; nil opens the embedded one, a bbolt file
	// in the data directory (bolt.go). The Store closes it.
	Index Backend
}

// Store is the message store of one relay. It holds the data directory's
// lock for as long as it is open.
type Store struct {
	dir  string
	idx  Backend
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
	idx := opts.Index
	if idx == nil {
		b, err := openBolt(dir, opts.Logger)
		if err != nil {
			return nil, err
		}
		idx = b
	}
	s := &Store{dir: dir, idx: idx, opts: opts, log: opts.Logger}
	s.hub.init()
	s.auth.init()
	s.fileID.Store(uint64(time.Now().UnixNano()))
	idx.Subscribe(s.applyChange)
	key, err := loadPasswordKey(dir, idx)
	if err != nil {
		idx.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	s.pw.init(key, opts.SlowHashes)
	// Only a crash leaves orphans: after a clean shutdown the walk over
	// the whole index is skipped.
	clean := filepath.Join(dir, cleanMarker)
	if _, err := os.Stat(clean); err != nil {
		if err := s.sweep(); err != nil {
			idx.Close()
			return nil, fmt.Errorf("sweep store %s: %w", dir, err)
		}
	}
	if err := os.Remove(clean); err != nil && !errors.Is(err, os.ErrNotExist) {
		idx.Close()
		return nil, err
	}
	if err := safeio.SyncDir(dir); err != nil {
		idx.Close()
		return nil, err
	}
	return s, nil
}

// cleanMarker exists only while the store is closed after a clean shutdown.
const cleanMarker = "clean-shutdown"

// Close closes the index and marks the shutdown clean. Sessions must be
// closed first.
func (s *Store) Close() error {
	if err := s.idx.Close(); err != nil {
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

// Index is the store's index, for tools that fill or inspect it in bulk
// (benchmarks); changes made through it bypass the Store's locks, live
// views and message files.
func (s *Store) Index() Backend { return s.idx }

// Dir is the store's data directory.
func (s *Store) Dir() string { return s.dir }

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
	addrs := map[uint64]string{}
	err = s.idx.ForEachAccount(func(addr string, rec *AccountRecord) error {
		addrs[rec.ID] = addr
		return nil
	})
	if err != nil {
		return err
	}
	for id := range addrs {
		files := map[string]entry{}
		referenced[id] = files
		err := s.idx.ForEachMessage(id, "", func(mailbox string, uid imap.UID, r *MessageRecord) error {
			files[r.File] = entry{mailbox, uid, r.Size}
			return nil
		})
		if err != nil && !errors.Is(err, ErrNoAccount) {
			return err
		}
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
		for id, es := range broken {
			byMailbox := map[string][]imap.UID{}
			for _, e := range es {
				byMailbox[e.mailbox] = append(byMailbox[e.mailbox], e.uid)
			}
			for mailbox, uids := range byMailbox {
				if _, _, err := s.idx.Remove(id, addrs[id], mailbox, uids, false); err != nil {
					return err
				}
			}
		}
		s.log.Warn("dropped index entries of unacknowledged deliveries cut short by a crash", "count", n)
	}
	if removed > 0 {
		s.log.Info("removed orphan message files left by a crash", "count", removed)
	}
	return nil
}

// normAddr lower-cases an address; relay code passes addresses through it
// before any lookup.
func normAddr(addr string) string { return strings.ToLower(strings.TrimSpace(addr)) }
