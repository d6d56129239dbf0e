package mailbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/emersion/go-imap/v2"
	bolt "go.etcd.io/bbolt"
)

// schemaVersion is the index layout this code reads and writes (bolt.go),
// recorded under keySchema. Version 1 had no such key and nested buckets in
// each account's: metadata/<key> and mailboxes/<name>/{info, msgs/<uid>}.
const schemaVersion = 2

// The sub-buckets of version 1.
var (
	v1Mailboxes = []byte("mailboxes")
	v1Metadata  = []byte("metadata")
	v1Info      = []byte("info")
	v1Msgs      = []byte("msgs")
)

// migrateBatch bounds the accounts one transaction converts, and with them
// the memory a large index's conversion needs.
const migrateBatch = 256

// migrate brings the index to schemaVersion. Accounts are converted in
// batches of one transaction each. A version 1 account is one with a
// mailboxes bucket, so a conversion cut short goes on where it stopped at
// the next start; the version is recorded with the last batch.
func (b *boltBackend) migrate() error {
	var version uint64
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		version, err = schemaOf(tx)
		return err
	})
	if err != nil {
		return err
	}
	if version == schemaVersion {
		return nil
	}
	if version > schemaVersion {
		return fmt.Errorf("index schema version %d is newer than this chatrelay's (%d): run a newer chatrelay", version, schemaVersion)
	}
	var after []byte // the last account key looked at
	converted := 0
	for done := false; !done; {
		err := b.db.Update(func(tx *bolt.Tx) error {
			data := tx.Bucket(bucketData)
			var batch [][]byte
			c := data.Cursor()
			k, v := c.First()
			if after != nil {
				k, v = c.Seek(after)
				if bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(batch) < migrateBatch; k, v = c.Next() {
				if v == nil && data.Bucket(k).Bucket(v1Mailboxes) != nil {
					batch = append(batch, bytes.Clone(k))
				}
				after = bytes.Clone(k)
			}
			for _, id := range batch {
				if err := flattenAccount(data.Bucket(id)); err != nil {
					return fmt.Errorf("convert account %x: %w", id, err)
				}
			}
			converted += len(batch)
			if k != nil {
				return nil
			}
			done = true
			return tx.Bucket(bucketMeta).Put(keySchema, u64key(schemaVersion))
		})
		if err != nil {
			return fmt.Errorf("convert index to schema version %d: %w", schemaVersion, err)
		}
	}
	if converted > 0 {
		b.log.Info("index converted", "schema", schemaVersion, "accounts", converted)
	}
	return nil
}

func schemaOf(tx *bolt.Tx) (uint64, error) {
	v := tx.Bucket(bucketMeta).Get(keySchema)
	if v == nil {
		return 1, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("index schema version: bad value %x", v)
	}
	return binary.BigEndian.Uint64(v), nil
}

// flattenAccount converts a version 1 account bucket in place: the entries
// of its sub-buckets move into it, unchanged, and the sub-buckets go.
func flattenAccount(acct *bolt.Bucket) error {
	type entry struct{ k, v []byte }
	var out []entry
	if meta := acct.Bucket(v1Metadata); meta != nil {
		err := meta.ForEach(func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("metadata: unexpected bucket %q", k)
			}
			out = append(out, entry{append([]byte{kindMeta}, k...), bytes.Clone(v)})
			return nil
		})
		if err != nil {
			return err
		}
	}
	mboxes := acct.Bucket(v1Mailboxes)
	err := mboxes.ForEachBucket(func(name []byte) error {
		mb := mboxes.Bucket(name)
		info := mb.Get(v1Info)
		if info == nil {
			return fmt.Errorf("mailbox %q has no info", name)
		}
		out = append(out, entry{mailboxKey(string(name)), bytes.Clone(info)})
		m := &mbox{name: string(name), prefix: msgPrefix(string(name))}
		return forEachV1Msg(mb, func(uid, v []byte) error {
			out = append(out, entry{m.key(keyUID(uid)), bytes.Clone(v)})
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, b := range [][]byte{v1Metadata, v1Mailboxes} {
		if err := acct.DeleteBucket(b); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return err
		}
	}
	for _, e := range out {
		if err := acct.Put(e.k, e.v); err != nil {
			return err
		}
	}
	return nil
}

// forEachV1Msg calls f for every message record of a version 1 mailbox
// bucket.
func forEachV1Msg(mb *bolt.Bucket, f func(uid, v []byte) error) error {
	msgs := mb.Bucket(v1Msgs)
	if msgs == nil {
		return nil
	}
	return msgs.ForEach(func(k, v []byte) error {
		if keyUID(k) == 0 || v == nil {
			return fmt.Errorf("bad message key %x", k)
		}
		return f(k, v)
	})
}

// ForEachFile calls f with every message file an index names, for tools
// that read an index the store does not have open (backups). It reads
// either schema version: a backup may predate the current one.
func ForEachFile(tx *bolt.Tx, f func(accountID uint64, file string) error) error {
	data := tx.Bucket(bucketData)
	if data == nil {
		return nil
	}
	return data.ForEachBucket(func(id []byte) error {
		if len(id) != 8 {
			return fmt.Errorf("index: bad account key %x", id)
		}
		accountID := binary.BigEndian.Uint64(id)
		file := func(mailbox string, uid imap.UID, v []byte) error {
			var r MessageRecord
			if err := r.decode(v); err != nil {
				return fmt.Errorf("index: account %d mailbox %q uid %d: %w", accountID, mailbox, uid, err)
			}
			return f(accountID, r.File)
		}
		acct := data.Bucket(id)
		if mboxes := acct.Bucket(v1Mailboxes); mboxes != nil {
			return mboxes.ForEachBucket(func(name []byte) error {
				return forEachV1Msg(mboxes.Bucket(name), func(uid, v []byte) error {
					return file(string(name), keyUID(uid), v)
				})
			})
		}
		return forEachMailbox(acct, func(m *mbox) error {
			return m.forEach(func(uid imap.UID, v []byte) error { return file(m.name, uid, v) })
		})
	})
}

// SchemaVersion is the index layout this chatrelay reads and writes. A
// release records it beside its version (release.Meta), so an upgrade can
// tell an index conversion before it runs the new binary.
const SchemaVersion uint64 = schemaVersion

// IndexFile is the index's name in the data directory.
const IndexFile = "index.db"

// IndexSchema reads the schema version of the index in dataDir without
// opening the store: read-only, waiting at most timeout for a running
// relay's lock. A data directory without an index says 0.
func IndexSchema(dataDir string, timeout time.Duration) (uint64, error) {
	path := filepath.Join(dataDir, IndexFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return 0, fmt.Errorf("open index %s: %w", path, err)
	}
	defer db.Close()
	var v uint64
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			return fmt.Errorf("index %s has no meta bucket", path)
		}
		v, err = schemaOf(tx)
		return err
	})
	return v, err
}
