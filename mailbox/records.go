package mailbox

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	bolt "go.etcd.io/bbolt"
)

// mailboxInfo is stored under keyInfo in a mailbox bucket.
type mailboxInfo struct {
	UIDValidity uint32 `json:"uidvalidity"`
	UIDNext     uint32 `json:"uidnext"`
	Subscribed  bool   `json:"subscribed"`
}

// msgRecord is one message's index entry, keyed by its UID.
type msgRecord struct {
	Size  int64
	Date  time.Time // internal date
	File  string    // name under the account's message directory
	Flags []imap.Flag
}

func (r *msgRecord) encode() []byte {
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

func (r *msgRecord) decode(b []byte) error {
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

// getRecord reads one message's entry; nil when the UID is gone.
func getRecord(msgs *bolt.Bucket, uid imap.UID) (*msgRecord, error) {
	v := msgs.Get(uidKey(uid))
	if v == nil {
		return nil, nil
	}
	var r msgRecord
	if err := r.decode(v); err != nil {
		return nil, err
	}
	return &r, nil
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

func uidKey(uid imap.UID) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(uid))
	return b[:]
}

func keyUID(k []byte) imap.UID {
	if len(k) != 4 {
		return 0
	}
	return imap.UID(binary.BigEndian.Uint32(k))
}

func (r *msgRecord) hasFlag(flag imap.Flag) bool {
	for _, f := range r.Flags {
		if strings.EqualFold(string(f), string(flag)) {
			return true
		}
	}
	return false
}

// canonicalFlag spells system flags the standard way (they are
// case-insensitive, RFC 3501 section 2.3.2) and keeps keywords as given.
func canonicalFlag(f imap.Flag) imap.Flag {
	for _, sys := range []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft, imap.FlagImportant} {
		if strings.EqualFold(string(f), string(sys)) {
			return sys
		}
	}
	return f
}

func (r *msgRecord) applyFlags(op imap.StoreFlagsOp, flags []imap.Flag) (changed bool) {
	set := map[imap.Flag]bool{}
	var order []imap.Flag
	if op != imap.StoreFlagsSet {
		for _, f := range r.Flags {
			set[f] = true
			order = append(order, f)
		}
	}
	for _, f := range flags {
		f = canonicalFlag(f)
		if strings.EqualFold(string(f), `\Recent`) || f == imap.FlagWildcard {
			continue
		}
		switch op {
		case imap.StoreFlagsSet, imap.StoreFlagsAdd:
			if !set[f] {
				set[f] = true
				order = append(order, f)
			}
		case imap.StoreFlagsDel:
			set[f] = false
		}
	}
	var out []imap.Flag
	for _, f := range order {
		if set[f] {
			out = append(out, f)
		}
	}
	changed = len(out) != len(r.Flags)
	if !changed {
		for i := range out {
			if out[i] != r.Flags[i] {
				changed = true
			}
		}
	}
	r.Flags = out
	return changed
}

// mailboxName canonicalises a mailbox name: INBOX is case-insensitive
// (RFC 3501 section 5.1).
func mailboxName(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	return name
}

func createMailbox(mboxes *bolt.Bucket, name string, now time.Time) error {
	b, err := mboxes.CreateBucket([]byte(name))
	if err != nil {
		return err
	}
	if _, err := b.CreateBucket(keyMsgs); err != nil {
		return err
	}
	return putInfo(b, &mailboxInfo{UIDValidity: uint32(now.Unix()), UIDNext: 1, Subscribed: true})
}

func getInfo(b *bolt.Bucket) (*mailboxInfo, error) {
	var info mailboxInfo
	if err := json.Unmarshal(b.Get(keyInfo), &info); err != nil {
		return nil, fmt.Errorf("mailbox info: %w", err)
	}
	return &info, nil
}

func putInfo(b *bolt.Bucket, info *mailboxInfo) error {
	v, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return b.Put(keyInfo, v)
}

func forEachMailbox(data *bolt.Bucket, f func(name string, b *bolt.Bucket) error) error {
	mboxes := data.Bucket(keyMailboxes)
	return mboxes.ForEachBucket(func(k []byte) error {
		return f(string(k), mboxes.Bucket(k))
	})
}

// mailboxBucket finds an account's mailbox inside a transaction.
func mailboxBucket(tx *bolt.Tx, accountID uint64, name string) *bolt.Bucket {
	data := tx.Bucket(bucketData).Bucket(u64key(accountID))
	if data == nil {
		return nil
	}
	return data.Bucket(keyMailboxes).Bucket([]byte(mailboxName(name)))
}
