package mailbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// The store's names in the data directory. Backups and restores ask for
// them here, so that no other package spells them:
//
//	index.db               the index (IndexFile), shared with the packages
//	                       that keep their own buckets in it
//	msgs/<account id>/<f>  message files, immutable once written
//	tmp/                   deliveries being written
//	clean-shutdown         present only while a cleanly closed store rests
//	password.key           the key of generated passwords (PasswordKeyFile)
const (
	// MessagesDir holds one directory of message files per account.
	MessagesDir = "msgs"
	tempDir     = "tmp"
)

// Scratch is the top-level names in the data directory that hold nothing
// worth keeping: half-written deliveries and the clean-shutdown marker. A
// backup leaves them out.
func Scratch() []string { return []string{tempDir, cleanMarker} }

// ClearTemp removes the half-written deliveries left in dataDir, as a
// restore does once it has put another store in place.
func ClearTemp(dataDir string) error {
	tmp := filepath.Join(dataDir, tempDir)
	entries, err := os.ReadDir(tmp)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(tmp, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// MessageFiles calls f with every message file the index read by tx
// names, as a path relative to the data directory, for tools that read an
// index the store does not have open (backups). It reads either schema
// version: a backup may predate the current one. A name that would leave
// its account's directory is an error.
func MessageFiles(tx *bolt.Tx, f func(rel string) error) error {
	return ForEachFile(tx, func(accountID uint64, file string) error {
		if file == "" || strings.ContainsAny(file, "/\\") || file == "." || file == ".." {
			return fmt.Errorf("index: account %d: bad message file name %q", accountID, file)
		}
		return f(filepath.Join(MessagesDir, strconv.FormatUint(accountID, 10), file))
	})
}

// CountAccountsIn is the number of accounts in the index read by tx.
func CountAccountsIn(tx *bolt.Tx) int {
	if acc := tx.Bucket(bucketAccounts); acc != nil {
		return acc.Stats().KeyN
	}
	return 0
}
