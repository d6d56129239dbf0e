package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Verify checks a backup without changing anything: the manifest,
// the index's hash and integrity, and that every file the index names is
// there. It returns the manifest.
func Verify(dir string) (*Manifest, error) {
	mb, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s has no %s: not a chatrelay backup, or an unfinished one", dir, manifestName)
		}
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("backup manifest: %w", err)
	}
	if m.Format != format || m.Version != version {
		return nil, fmt.Errorf("backup manifest: format %q version %d, this chatrelay reads %q version %d", m.Format, m.Version, format, version)
	}
	index := filepath.Join(dir, indexName)
	sum, size, err := fileSHA256(index)
	if err != nil {
		return nil, fmt.Errorf("backup index: %w", err)
	}
	if sum != m.IndexSHA256 || size != m.IndexSize {
		return nil, fmt.Errorf("backup index %s does not match the manifest (sha256 %s, %d bytes; manifest says %s, %d bytes)", index, sum, size, m.IndexSHA256, m.IndexSize)
	}
	db, err := bolt.Open(index, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("backup index: %w", err)
	}
	defer db.Close()
	snap := &snapshot{msgs: map[string]bool{}, queue: map[string]bool{}}
	err = db.View(func(tx *bolt.Tx) error {
		var first error
		for err := range tx.Check() {
			// Drain the channel: the checker stops only at its end.
			if first == nil {
				first = err
			}
		}
		if first != nil {
			return fmt.Errorf("index check: %w", first)
		}
		return readReferences(tx, snap)
	})
	if err != nil {
		return nil, fmt.Errorf("backup index: %w", err)
	}
	if snap.accounts != m.Accounts || len(snap.msgs) != m.Messages || len(snap.queue) != m.QueueItems {
		return nil, fmt.Errorf("backup index holds %d accounts, %d messages, %d queued; the manifest says %d, %d, %d",
			snap.accounts, len(snap.msgs), len(snap.queue), m.Accounts, m.Messages, m.QueueItems)
	}
	for _, set := range []map[string]bool{snap.msgs, snap.queue} {
		for rel := range set {
			if fi, err := os.Stat(filepath.Join(dir, rel)); err != nil || !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("backup is missing %s, which its index refers to", rel)
			}
		}
	}
	for _, rel := range m.OtherFiles {
		if _, err := os.Stat(filepath.Join(dir, otherFilesDir, filepath.FromSlash(rel))); err != nil {
			return nil, fmt.Errorf("backup is missing %s/%s", otherFilesDir, rel)
		}
	}
	return &m, nil
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
