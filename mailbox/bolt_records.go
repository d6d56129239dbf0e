package mailbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/emersion/go-imap/v2"
	bolt "go.etcd.io/bbolt"
)

// The bbolt index's stored forms: message records, keys, and one mailbox's
// run of keys inside an account's bucket (the layout is in bolt.go).

func (r *MessageRecord) encode() []byte {
	b := make([]byte, 0, 32+len(r.File))
	b = append(b, 1) // record version
	b = binary.AppendUvarint(b, uint64(r.Size))
	b = binary.AppendVarint(b, r.Date.UnixNano())
	b = appendString(b, r.File)
	b = binary.AppendUvarint(b, uint64(len(r.Flags)))
	for _, f := range r.Flags {
		b = appendString(b, string(f))
	}
	return b
}

var errBadRecord = errors.New("corrupt message record")

func (r *MessageRecord) decode(b []byte) error {
	if len(b) == 0 || b[0] != 1 {
		return errBadRecord
	}
	b = b[1:]
	size, n := binary.Uvarint(b)
	if n <= 0 {
		return errBadRecord
	}
	b = b[n:]
	date, n := binary.Varint(b)
	if n <= 0 {
		return errBadRecord
	}
	b = b[n:]
	file, b, ok := readString(b)
	if !ok {
		return errBadRecord
	}
	nf, n := binary.Uvarint(b)
	if n <= 0 || nf > 1000 {
		return errBadRecord
	}
	b = b[n:]
	r.Size, r.Date, r.File, r.Flags = int64(size), time.Unix(0, date), file, nil
	for i := uint64(0); i < nf; i++ {
		var f string
		if f, b, ok = readString(b); !ok {
			return errBadRecord
		}
		r.Flags = append(r.Flags, imap.Flag(f))
	}
	return nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func readString(b []byte) (string, []byte, bool) {
	l, n := binary.Uvarint(b)
	if n <= 0 || uint64(len(b)-n) < l {
		return "", nil, false
	}
	return string(b[n : n+int(l)]), b[n+int(l):], true
}

func decodeU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func keyUID(k []byte) imap.UID {
	if len(k) != 4 {
		return 0
	}
	return imap.UID(binary.BigEndian.Uint32(k))
}

// The kinds of key in an account bucket (the layout is in bolt.go).
const (
	kindMailbox = 'b'
	kindMeta    = 'd'
	kindMsg     = 'm'
)

func mailboxKey(name string) []byte {
	return append([]byte{kindMailbox}, name...)
}

// msgPrefix starts the key of every message of one mailbox. The name's
// length before it keeps the prefix from matching a longer name's.
func msgPrefix(name string) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen16+len(name))
	b = append(b, kindMsg)
	b = binary.AppendUvarint(b, uint64(len(name)))
	return append(b, name...)
}

// mbox is one mailbox inside an account bucket: its info key and the run of
// message keys under its prefix, in UID order.
type mbox struct {
	acct   *bolt.Bucket
	name   string
	prefix []byte
}

func (m *mbox) key(uid imap.UID) []byte {
	k := make([]byte, len(m.prefix), len(m.prefix)+4)
	copy(k, m.prefix)
	return binary.BigEndian.AppendUint32(k, uint32(uid))
}

func (m *mbox) get(uid imap.UID) []byte { return m.acct.Get(m.key(uid)) }

func (m *mbox) put(uid imap.UID, r *MessageRecord) error { return m.acct.Put(m.key(uid), r.encode()) }

func (m *mbox) delete(uid imap.UID) error { return m.acct.Delete(m.key(uid)) }

// record reads one message's entry; nil when the UID is gone.
func (m *mbox) record(uid imap.UID) (*MessageRecord, error) {
	v := m.get(uid)
	if v == nil {
		return nil, nil
	}
	var r MessageRecord
	if err := r.decode(v); err != nil {
		return nil, err
	}
	return &r, nil
}

// forEach calls f for every message in UID order. f must not change the
// bucket.
func (m *mbox) forEach(f func(uid imap.UID, v []byte) error) error {
	c := m.acct.Cursor()
	for k, v := c.Seek(m.prefix); k != nil && bytes.HasPrefix(k, m.prefix); k, v = c.Next() {
		uid := keyUID(k[len(m.prefix):])
		if uid == 0 {
			return fmt.Errorf("mailbox %q: bad message key %x", m.name, k)
		}
		if err := f(uid, v); err != nil {
			return err
		}
	}
	return nil
}

func (m *mbox) count() int {
	return countPrefix(m.acct, m.prefix)
}

func (m *mbox) info() (*MailboxInfo, error) {
	var info MailboxInfo
	if err := json.Unmarshal(m.acct.Get(mailboxKey(m.name)), &info); err != nil {
		return nil, fmt.Errorf("mailbox %q info: %w", m.name, err)
	}
	return &info, nil
}

func (m *mbox) putInfo(info *MailboxInfo) error {
	v, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return m.acct.Put(mailboxKey(m.name), v)
}

// remove deletes the mailbox with its messages.
func (m *mbox) remove() error {
	for _, k := range prefixKeys(m.acct, m.prefix) {
		if err := m.acct.Delete(k); err != nil {
			return err
		}
	}
	return m.acct.Delete(mailboxKey(m.name))
}

// rename moves the mailbox with its messages to a name that must be free.
func (m *mbox) rename(name string) error {
	dst := &mbox{acct: m.acct, name: name, prefix: msgPrefix(name)}
	if err := m.acct.Put(mailboxKey(name), bytes.Clone(m.acct.Get(mailboxKey(m.name)))); err != nil {
		return err
	}
	for _, k := range prefixKeys(m.acct, m.prefix) {
		uid := keyUID(k[len(m.prefix):])
		if err := m.acct.Put(dst.key(uid), bytes.Clone(m.acct.Get(k))); err != nil {
			return err
		}
		if err := m.acct.Delete(k); err != nil {
			return err
		}
	}
	return m.acct.Delete(mailboxKey(m.name))
}

// prefixKeys copies the keys under prefix, for a caller that changes the
// bucket: a cursor skips keys when the bucket changes under it.
func prefixKeys(b *bolt.Bucket, prefix []byte) [][]byte {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	return keys
}

func countPrefix(b *bolt.Bucket, prefix []byte) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	return n
}

// accountBucket finds an account's bucket inside a transaction; nil once
// the account is deleted.
func accountBucket(tx *bolt.Tx, accountID uint64) *bolt.Bucket {
	return tx.Bucket(bucketData).Bucket(u64key(accountID))
}

// openMailbox finds a mailbox in an account bucket; nil if there is none.
func openMailbox(acct *bolt.Bucket, name string) *mbox {
	if acct == nil {
		return nil
	}
	name = mailboxName(name)
	if acct.Get(mailboxKey(name)) == nil {
		return nil
	}
	return &mbox{acct: acct, name: name, prefix: msgPrefix(name)}
}

// findMailbox finds an account's mailbox inside a transaction.
func findMailbox(tx *bolt.Tx, accountID uint64, name string) *mbox {
	return openMailbox(accountBucket(tx, accountID), name)
}

func createMailbox(acct *bolt.Bucket, name string, info *MailboxInfo) error {
	m := &mbox{acct: acct, name: name, prefix: msgPrefix(name)}
	return m.putInfo(info)
}

// forEachMailbox calls f for every mailbox of an account, in name order.
// f must not add or remove mailboxes.
func forEachMailbox(acct *bolt.Bucket, f func(m *mbox) error) error {
	c := acct.Cursor()
	for k, _ := c.Seek([]byte{kindMailbox}); k != nil && k[0] == kindMailbox; k, _ = c.Next() {
		name := string(k[1:])
		if err := f(&mbox{acct: acct, name: name, prefix: msgPrefix(name)}); err != nil {
			return err
		}
	}
	return nil
}

func countMailboxes(acct *bolt.Bucket) int {
	return countPrefix(acct, []byte{kindMailbox})
}
