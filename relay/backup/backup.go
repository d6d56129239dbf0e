// Package backup copies a running relay's data directory into a backup
// folder, checks such a folder, and puts it back in place of a stopped
// relay's store.
//
// It spells no other package's names: the store (mailbox) and the
// outbound queue (relay/queue) say which files are theirs and which of
// them an index refers to; every other regular file of the data directory
// (the password key, DKIM key, certificates and TLS ticket keys, the
// TURN secret, the proxy keys, downloads) is copied as it is. Invites and
// the push queue live in the index and come with it.
//
// The layout of a backup. The manifest is written last: a folder without
// one is an unfinished backup.
//
//	DIR/manifest.json    format, counts, SHA-256 of the index
//	DIR/index.db         snapshot of the bbolt index (one read transaction)
//	DIR/msgs/<id>/<file> the message files that snapshot refers to
//	DIR/queue/<id>       the outbound queue's spool files it refers to
//	DIR/files/...        the rest of the data directory
package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/safeio"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay/queue"
)

const (
	format         = "chatrelay-backup"
	version        = 1
	manifestName   = "manifest.json"
	otherFilesDir  = "files"
	restorePrefix  = ".restore-"
	maxBackupTries = 5
)

// The names a backup shares with the data directory, from their owners.
const (
	indexName = mailbox.IndexFile
	msgsDir   = mailbox.MessagesDir
	queueDir  = queue.SpoolDir
)

// Manifest describes a backup.
type Manifest struct {
	Format      string    `json:"format"`
	Version     int       `json:"version"`
	Created     time.Time `json:"created"`
	MailDomain  string    `json:"mail_domain"`
	IndexSHA256 string    `json:"index_sha256"`
	IndexSize   int64     `json:"index_size"`
	Accounts    int       `json:"accounts"`
	Messages    int       `json:"messages"`
	QueueItems  int       `json:"queue_items"`
	OtherFiles  []string  `json:"other_files"`
}

// Result describes a finished backup.
type Result struct {
	Dir                            string
	Accounts, Messages, QueueItems int
	OtherFiles                     int
	Bytes                          int64 // index and files
	IndexSHA256                    string
}

// Source is the running relay's store that Write copies.
type Source struct {
	// DB is the open index.
	DB *bolt.DB
	// DataDir is the data directory the index and files are in.
	DataDir string
	// MailDomain is recorded in the manifest.
	MailDomain string
}

// TargetError is a mistake of the caller (a bad target folder); the
// relay answers it as a bad request.
type TargetError struct{ msg string }

func (e *TargetError) Error() string { return e.msg }

// Write writes a consistent copy of src into dir while the relay runs.
// dir must be absent or empty and outside the data directory. created is
// the time recorded in the manifest; progress (may be nil) is told how
// many files are done.
//
// The index is copied inside one read transaction (bbolt's tx.WriteTo);
// the files it refers to are hard-linked (or copied, across file systems)
// around it. Message and spool files are immutable once written, are
// created before the index entry that names them and removed only after
// that entry is gone. So every file already present when the snapshot is
// taken survives in the links made before it; files the snapshot names
// that are newer are linked after it, and if one of those has been
// removed meanwhile the snapshot is taken again.
func Write(ctx context.Context, src Source, dir string, created time.Time, progress func(done, total int)) (*Result, error) {
	if progress == nil {
		progress = func(int, int) {}
	}
	dataDir, err := filepath.Abs(src.DataDir)
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	if dir == dataDir || strings.HasPrefix(dir, dataDir+string(filepath.Separator)) {
		return nil, &TargetError{fmt.Sprintf("backup directory %s is inside the data directory %s", dir, dataDir)}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, &TargetError{fmt.Sprintf("create backup directory: %v", err)}
	}
	if entries, err := os.ReadDir(dir); err != nil {
		return nil, &TargetError{fmt.Sprintf("read backup directory: %v", err)}
	} else if len(entries) > 0 {
		return nil, &TargetError{fmt.Sprintf("backup directory %s is not empty", dir)}
	}
	b := &run{ctx: ctx, src: dataDir, dst: dir, staged: map[string]bool{}, progress: progress}
	// Every file present now, before the snapshot.
	for _, sub := range []string{msgsDir, queueDir} {
		if err := b.stageAll(sub); err != nil {
			return nil, err
		}
	}
	var snap *snapshot
	for try := 1; ; try++ {
		snap, err = b.snapshot(src.DB)
		if err != nil {
			return nil, err
		}
		missing, err := b.linkReferenced(snap)
		if err != nil {
			return nil, err
		}
		if missing == "" {
			break
		}
		if try == maxBackupTries {
			return nil, fmt.Errorf("backup: message file %s vanished %d times in a row; try again when the relay is quieter", missing, try)
		}
	}
	if err := b.pruneUnreferenced(snap); err != nil {
		return nil, err
	}
	others, err := b.copyOtherFiles()
	if err != nil {
		return nil, err
	}
	for d := range b.dirs {
		if err := safeio.SyncDir(d); err != nil {
			return nil, err
		}
	}
	m := Manifest{
		Format: format, Version: version, Created: created.UTC(), MailDomain: src.MailDomain,
		IndexSHA256: snap.sha, IndexSize: snap.size, Accounts: snap.accounts, Messages: len(snap.msgs),
		QueueItems: len(snap.queue), OtherFiles: others,
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := safeio.WriteFile(filepath.Join(dir, manifestName), append(mb, '\n'), 0o600); err != nil {
		return nil, err
	}
	if err := safeio.SyncDir(filepath.Dir(dir)); err != nil {
		return nil, err
	}
	return &Result{
		Dir: dir, Accounts: m.Accounts, Messages: m.Messages, QueueItems: m.QueueItems,
		OtherFiles: len(others), Bytes: b.bytes + snap.size, IndexSHA256: m.IndexSHA256,
	}, nil
}

type run struct {
	ctx      context.Context
	src, dst string
	staged   map[string]bool     // relative paths linked into dst
	dirs     map[string]struct{} // directories to fsync at the end
	bytes    int64
	done     int
	total    int
	progress func(done, total int)
	lastSent time.Time
}

// snapshot is what one read transaction saw.
type snapshot struct {
	sha      string
	size     int64
	accounts int
	msgs     map[string]bool // "msgs/<id>/<file>"
	queue    map[string]bool // "queue/<id>"
}

func (b *run) tick(n int) {
	b.done += n
	if time.Since(b.lastSent) > 200*time.Millisecond || b.done == b.total {
		b.lastSent = time.Now()
		b.progress(b.done, b.total)
	}
}

func (b *run) mkdir(rel string) error {
	d := filepath.Join(b.dst, rel)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	if b.dirs == nil {
		b.dirs = map[string]struct{}{}
	}
	for ; d != filepath.Dir(b.dst); d = filepath.Dir(d) {
		b.dirs[d] = struct{}{}
	}
	return nil
}

// stageAll links every file under src/sub (one or two levels: msgs/<id>/f,
// queue/f) into dst. Names starting with "." are temporary files.
func (b *run) stageAll(sub string) error {
	var rels []string
	err := filepath.WalkDir(filepath.Join(b.src, sub), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
			rel, _ := filepath.Rel(b.src, p)
			rels = append(rels, rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("backup: list %s: %w", sub, err)
	}
	b.total += len(rels)
	for _, rel := range rels {
		if err := b.ctx.Err(); err != nil {
			return err
		}
		if err := b.link(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		b.tick(1)
	}
	return nil
}

// link hard-links (or copies) src/rel to dst/rel.
func (b *run) link(rel string) error {
	if b.staged[rel] {
		return nil
	}
	if err := b.mkdir(filepath.Dir(rel)); err != nil {
		return err
	}
	n, err := linkOrCopy(filepath.Join(b.src, rel), filepath.Join(b.dst, rel))
	if err != nil {
		return err
	}
	b.bytes += n
	b.staged[rel] = true
	return nil
}

// linkOrCopy hard-links src to dst, or copies it (fsynced) when the two
// are on different file systems. It returns the file's size.
func linkOrCopy(src, dst string) (int64, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return 0, err
	}
	err = os.Link(src, dst)
	if err == nil {
		return fi.Size(), nil
	}
	if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EMLINK) {
		return 0, err
	}
	return fi.Size(), copyFile(src, dst, fi.Mode().Perm())
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}

// snapshot copies the index in one read transaction and reads, in the same
// transaction, which files it refers to.
func (b *run) snapshot(db *bolt.DB) (*snapshot, error) {
	snap := &snapshot{msgs: map[string]bool{}, queue: map[string]bool{}}
	path := filepath.Join(b.dst, indexName)
	err := db.View(func(tx *bolt.Tx) error {
		err := safeio.WriteFrom(path, 0o600, func(w io.Writer) error {
			h := sha256.New()
			n, err := tx.WriteTo(io.MultiWriter(w, h))
			snap.size = n
			snap.sha = hex.EncodeToString(h.Sum(nil))
			return err
		})
		if err != nil {
			return err
		}
		return readReferences(tx, snap)
	})
	if err != nil {
		return nil, fmt.Errorf("backup: snapshot index: %w", err)
	}
	return snap, nil
}

// readReferences asks the owners of the files an index refers to which
// they are.
func readReferences(tx *bolt.Tx, snap *snapshot) error {
	snap.accounts = mailbox.CountAccountsIn(tx)
	err := mailbox.MessageFiles(tx, func(rel string) error {
		snap.msgs[rel] = true
		return nil
	})
	if err != nil {
		return err
	}
	return queue.SpoolFiles(tx, func(rel string) error {
		snap.queue[rel] = true
		return nil
	})
}

// linkReferenced links the files the snapshot names that were not staged
// before it. It returns the first that no longer exists, if any.
func (b *run) linkReferenced(snap *snapshot) (missing string, err error) {
	var todo []string
	for _, set := range []map[string]bool{snap.msgs, snap.queue} {
		for rel := range set {
			if !b.staged[rel] {
				todo = append(todo, rel)
			}
		}
	}
	b.total += len(todo)
	for _, rel := range todo {
		if err := b.link(rel); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return rel, nil
			}
			return "", err
		}
		b.tick(1)
	}
	return "", nil
}

// pruneUnreferenced removes staged files the final snapshot does not name
// (removed from the index before it was taken).
func (b *run) pruneUnreferenced(snap *snapshot) error {
	for rel := range b.staged {
		if snap.msgs[rel] || snap.queue[rel] {
			continue
		}
		if err := os.Remove(filepath.Join(b.dst, rel)); err != nil {
			return err
		}
		delete(b.staged, rel)
	}
	// Account directories left empty.
	entries, _ := os.ReadDir(filepath.Join(b.dst, msgsDir))
	for _, e := range entries {
		os.Remove(filepath.Join(b.dst, msgsDir, e.Name())) // fails unless empty
	}
	return nil
}

// skipOther tells which top-level entries of the data directory are not
// "other files": the store, the queue, the store's scratch and leftovers
// of restores. Sockets (the control socket) are not regular files and are
// never copied.
func skipOther(name string) bool {
	switch name {
	case indexName, msgsDir, queueDir:
		return true
	}
	return slices.Contains(mailbox.Scratch(), name) || strings.HasPrefix(name, restorePrefix)
}

// copyOtherFiles copies the regular files of the data directory that are
// not the store (keys, certificates, downloads) into dst/files.
func (b *run) copyOtherFiles() ([]string, error) {
	var out []string
	err := filepath.WalkDir(b.src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(b.src, p)
		if rel == "." {
			return nil
		}
		if !strings.Contains(rel, string(filepath.Separator)) && skipOther(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if err := b.mkdir(filepath.Join(otherFilesDir, filepath.Dir(rel))); err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if err := copyFile(p, filepath.Join(b.dst, otherFilesDir, rel), fi.Mode().Perm()); err != nil {
			return fmt.Errorf("backup: copy %s: %w", rel, err)
		}
		b.bytes += fi.Size()
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	return out, err
}
