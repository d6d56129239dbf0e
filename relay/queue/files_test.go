package queue

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SpoolFiles names the spool file of each item as the backup lays it out,
// and refuses an item ID that would lead out of the spool directory (an
// index from a backup is not trusted).
func TestSpoolFilesNamesEachItemAndRefusesBadIDs(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "index.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	id := newID(time.Now())
	put := func(key string) {
		t.Helper()
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketItems)
			if err != nil {
				return err
			}
			return b.Put([]byte(key), []byte("{}"))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	list := func() ([]string, error) {
		var got []string
		err := db.View(func(tx *bolt.Tx) error {
			return SpoolFiles(tx, func(rel string) error {
				got = append(got, rel)
				return nil
			})
		})
		return got, err
	}
	if got, err := list(); err != nil || len(got) != 0 {
		t.Fatalf("no queue bucket: %v, %v", got, err)
	}
	put(id)
	if got, err := list(); err != nil || len(got) != 1 || got[0] != filepath.Join(SpoolDir, id) {
		t.Fatalf("one item: %v, %v; want %s", got, err, filepath.Join(SpoolDir, id))
	}
	put("../../password.key")
	if got, err := list(); err == nil {
		t.Fatalf("a traversing item id was listed: %v", got)
	}
}
