package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/safeio"
	"github.com/chatrelay/chatrelay/mailbox"
)

// ErrRelayRunning is a restore refused because a relay holds the store.
var ErrRelayRunning = errors.New("a relay is running on it: stop the relay first")

// Restore replaces the store in dataDir with the backup in backupDir. The
// relay must be stopped: the index lock is taken for the whole swap. The
// backup is verified first; then the new index, messages and queue are
// prepared next to the old ones, the old ones moved aside, the new ones
// moved in, and the old ones removed. Other files (keys, certificates)
// are put back only where missing, so a restore does not undo a key
// rotation; say is told about each step.
func Restore(dataDir, backupDir string, say func(format string, args ...any)) error {
	if say == nil {
		say = func(string, ...any) {}
	}
	m, err := Verify(backupDir)
	if err != nil {
		return err
	}
	say("backup verified: %d accounts, %d messages, %d queued, taken %s for %s", m.Accounts, m.Messages, m.QueueItems, m.Created.Format(time.RFC3339), m.MailDomain)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	// Hold the lock the relay takes, shared, so that a relay cannot start
	// in the middle of the swap, and so that a running one stops us.
	live := filepath.Join(dataDir, indexName)
	if _, err := os.Stat(live); err == nil {
		db, err := bolt.Open(live, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if errors.Is(err, bolt.ErrTimeout) {
			return fmt.Errorf("the store in %s is locked: %w", dataDir, ErrRelayRunning)
		} else if err != nil {
			return fmt.Errorf("open current store: %w", err)
		}
		defer db.Close()
	}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	stage := filepath.Join(dataDir, restorePrefix+"new-"+stamp)
	old := filepath.Join(dataDir, restorePrefix+"old-"+stamp)
	if err := os.Mkdir(stage, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := copyFile(filepath.Join(backupDir, indexName), filepath.Join(stage, indexName), 0o600); err != nil {
		return fmt.Errorf("restore index: %w", err)
	}
	n := 0
	for _, sub := range []string{msgsDir, queueDir} {
		k, err := linkTree(filepath.Join(backupDir, sub), filepath.Join(stage, sub))
		if err != nil {
			return fmt.Errorf("restore %s: %w", sub, err)
		}
		n += k
	}
	if err := safeio.SyncDir(stage); err != nil {
		return err
	}
	say("prepared %d files in %s", n, stage)

	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	names := []string{indexName, msgsDir, queueDir}
	var movedAside []string
	undo := func() {
		for _, name := range movedAside {
			os.RemoveAll(filepath.Join(dataDir, name))
			os.Rename(filepath.Join(old, name), filepath.Join(dataDir, name))
		}
		safeio.SyncDir(dataDir)
	}
	for _, name := range names {
		err := os.Rename(filepath.Join(dataDir, name), filepath.Join(old, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			undo()
			return fmt.Errorf("move aside %s: %w", name, err)
		}
		movedAside = append(movedAside, name)
	}
	for _, name := range names {
		err := os.Rename(filepath.Join(stage, name), filepath.Join(dataDir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			undo()
			return fmt.Errorf("move in %s: %w", name, err)
		}
	}
	if err := safeio.SyncDir(dataDir); err != nil {
		return err
	}
	if len(movedAside) > 0 {
		say("replaced %s (the previous ones are removed)", strings.Join(movedAside, ", "))
	}
	if err := os.RemoveAll(old); err != nil {
		say("could not remove the previous store in %s: %v; remove it by hand", old, err)
	}
	// Half-written incoming files of the old store.
	if err := mailbox.ClearTemp(dataDir); err != nil {
		say("could not remove the previous store's unfinished deliveries: %v; the relay sweeps them at start", err)
	}
	restored, kept := 0, 0
	for _, rel := range m.OtherFiles {
		dst := filepath.Join(dataDir, filepath.FromSlash(rel))
		if _, err := os.Stat(dst); err == nil {
			kept++
			continue
		}
		src := filepath.Join(backupDir, otherFilesDir, filepath.FromSlash(rel))
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		if err := copyFile(src, dst, fi.Mode().Perm()); err != nil {
			return fmt.Errorf("restore %s: %w", rel, err)
		}
		if err := safeio.SyncDir(filepath.Dir(dst)); err != nil {
			return err
		}
		restored++
	}
	if len(m.OtherFiles) > 0 {
		say("other files (keys, certificates): %d restored, %d already present and kept", restored, kept)
	}
	say("restored %d accounts and %d messages into %s", m.Accounts, m.Messages, dataDir)
	return nil
}

// linkTree hard-links (or copies) every regular file under src into dst,
// keeping the layout, and fsyncs the directories. A missing src is an
// empty tree.
func linkTree(src, dst string) (int, error) {
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == src && errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipAll
			}
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if _, err := linkOrCopy(p, target); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return n, err
	}
	// Directories bottom-up are not needed: each is synced once its
	// entries exist.
	err = filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipAll
			}
			return err
		}
		if d.IsDir() {
			return safeio.SyncDir(p)
		}
		return nil
	})
	return n, err
}
