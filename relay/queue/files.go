package queue

import (
	"fmt"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// SpoolDir is the spool directory's name in the data directory (the
// relay's Options.Dir); backups keep the same layout.
const SpoolDir = "queue"

// SpoolFiles calls f with the spool file of every item the index read by
// tx holds, as a path relative to the data directory, for tools that read
// an index the queue does not have open (backups). An item ID that is not
// a file name the queue makes is an error.
func SpoolFiles(tx *bolt.Tx, f func(rel string) error) error {
	items := tx.Bucket(bucketItems)
	if items == nil {
		return nil
	}
	return items.ForEach(func(k, _ []byte) error {
		if !validID(string(k)) {
			return fmt.Errorf("index: bad queue item id %q", k)
		}
		return f(filepath.Join(SpoolDir, string(k)))
	})
}
