package mailbox

import (
	"errors"
	"time"

	"github.com/emersion/go-imap/v2"
)

// Backend is the store's index: accounts, their mailboxes and message
// records, private METADATA entries, push tokens, a few store-wide settings,
// and the change notifications that reach IMAP sessions. The embedded
// default keeps it in one bbolt file (bolt.go); a backend shared by several
// relay processes (PostgreSQL, docs/SCALING.md) implements the same methods.
// Every backend must pass the conformance suite in mailbox/storetest.
//
// Message bodies are not in the index. They are files under the data
// directory, msgs/<account id>/<file>, named by MessageRecord.File; the
// Store writes, fsyncs and links them before the index names them, and
// removes them after the index has let go of them (a crash in between
// leaves orphans that the start-up sweep removes).
//
// Each method that changes something is one atomic step, committed (durable)
// when it returns nil; on error nothing changed. The Store serialises the
// changes of one mailbox (its stripe locks), so that UIDs reach sessions in
// order; a backend must still be safe for concurrent use. Names of
// mailboxes are canonical (mailboxName) when they reach a backend, and
// addresses normalised (normAddr).
type Backend interface {
	// Setting returns a store-wide value, nil when unset.
	Setting(key string) ([]byte, error)
	// SetSetting records a store-wide value.
	SetSetting(key string, value []byte) error

	// Account returns addr's record, or ErrNoAccount.
	Account(addr string) (*AccountRecord, error)
	// CreateAccount adds addr with a new id (ids only grow and are never
	// reused) and an INBOX described by inbox; rec.ID is ignored. If addr
	// exists already it changes nothing and returns that record with
	// ErrExists.
	CreateAccount(addr string, rec AccountRecord, inbox MailboxInfo) (id uint64, existing *AccountRecord, err error)
	// UpdateAccount changes addr's record with f, which says whether it
	// changed anything (nothing is written otherwise); ErrNoAccount.
	UpdateAccount(addr string, f func(*AccountRecord) bool) error
	// DeleteAccount removes addr's record with its mailboxes, message
	// records, METADATA entries and push tokens; ErrNoAccount.
	DeleteAccount(addr string) error
	// ForEachAccount calls f for every account in address order. rec is
	// f's to keep.
	ForEachAccount(f func(addr string, rec *AccountRecord) error) error
	// CountAccounts returns the number of accounts, without walking them.
	CountAccounts() (int, error)

	// Mailbox returns a mailbox's info, or ErrNoMailbox (also when the
	// account is gone).
	Mailbox(accountID uint64, name string) (*MailboxInfo, error)
	// ForEachMailbox calls f for an account's mailboxes in name order
	// (bytewise); ErrNoAccount.
	ForEachMailbox(accountID uint64, f func(name string, info *MailboxInfo) error) error
	// CreateMailbox adds a mailbox: ErrMailboxExists, or
	// ErrTooManyMailboxes when the account has max already; ErrNoAccount.
	CreateMailbox(accountID uint64, name string, info MailboxInfo, max int) error
	// DeleteMailbox removes a mailbox with its messages, takes their size
	// off the account's Used (addr), and returns their files for the
	// caller to remove; ErrNoMailbox.
	DeleteMailbox(accountID uint64, addr, name string) (files []string, err error)
	// RenameMailbox moves a mailbox with its messages, UIDs, UIDVALIDITY
	// and UIDNEXT to a free name: ErrNoMailbox, ErrMailboxExists.
	RenameMailbox(accountID uint64, from, to string) error
	// SetSubscribed sets a mailbox's subscription; ErrNoMailbox.
	SetSubscribed(accountID uint64, name string, subscribed bool) error

	// CountMessages returns the number of messages in a mailbox;
	// ErrNoMailbox.
	CountMessages(accountID uint64, mailbox string) (int, error)
	// UIDs returns a mailbox's info and its UIDs in ascending order;
	// ErrNoMailbox.
	UIDs(accountID uint64, mailbox string) (*MailboxInfo, []imap.UID, error)
	// Messages returns the records of uids, nil for a UID that is not
	// there; ErrNoMailbox.
	Messages(accountID uint64, mailbox string, uids []imap.UID) ([]*MessageRecord, error)
	// ForEachMessage calls f for every message of a mailbox in UID order,
	// or with mailbox "" of every mailbox, mailbox by mailbox in name
	// order; ErrNoMailbox, ErrNoAccount. r is valid only during the call
	// (a backend may reuse it), f must not change the store.
	ForEachMessage(accountID uint64, mailbox string, f func(mailbox string, uid imap.UID, r *MessageRecord) error) error
	// Append adds messages, each to its account's mailbox with that
	// mailbox's next UID, and adds each one's size to its account's Used.
	// All or nothing: ErrNoMailbox (wrapped, with the address) if one
	// mailbox is missing. It sets each one's UID, UIDValidity and Used.
	Append(ms []NewMessage) error
	// SetFlags changes the flags of uids (MessageRecord.ApplyFlags) and
	// returns their records after the change (nil for a UID that is not
	// there) and which changed; ErrNoMailbox.
	SetFlags(accountID uint64, mailbox string, uids []imap.UID, op imap.StoreFlagsOp, flags []imap.Flag) (recs []*MessageRecord, changed []bool, err error)
	// Remove deletes messages and takes their size off the account's Used
	// (addr). With onlyDeleted, messages without \Deleted stay. It returns
	// the UIDs it removed and their files, for the caller to remove. A
	// missing mailbox removes nothing and is no error.
	Remove(accountID uint64, addr, mailbox string, uids []imap.UID, onlyDeleted bool) (gone []imap.UID, files []string, err error)

	// Metadata returns a private METADATA entry of an account's mailbox
	// ("" for server entries), nil when unset; ErrNoAccount.
	Metadata(addr, mailbox, entry string) (*string, error)
	// SetMetadata sets an entry, or deletes it when value is nil. Setting
	// a new entry when the account has max entries already is ErrTooMany;
	// ErrNoAccount.
	SetMetadata(addr, mailbox, entry string, value *string, max int) error
	// PushTokens returns an account's push tokens as last stored;
	// ErrNoAccount.
	PushTokens(addr string) ([]PushToken, error)
	// UpdatePushTokens replaces an account's tokens with what f makes of
	// them; ErrNoAccount.
	UpdatePushTokens(addr string, f func([]PushToken) []PushToken) error

	// Publish tells every Store sharing this index of a committed change,
	// synchronously to the functions given to Subscribe in this process
	// (the Store calls it holding the mailbox's stripe lock, which keeps
	// UIDs in order) and, for a shared backend, to the other processes.
	// It must not block on them. The embedded backend has no others.
	Publish(c Change)
	// Subscribe registers f for every change published from now on.
	Subscribe(f func(Change))

	// Close releases the index. The Store calls it once.
	Close() error
}

// Errors of a Backend. ErrNoAccount, ErrExists and ErrTooMany are the
// Store's own.
var (
	ErrNoMailbox        = errors.New("no such mailbox")
	ErrMailboxExists    = errors.New("mailbox already exists")
	ErrTooManyMailboxes = errors.New("too many mailboxes")
)

// AccountRecord is what the index keeps of an account. The JSON names are
// the embedded index's stored form.
type AccountRecord struct {
	ID        uint64 `json:"id"`
	Hash      string `json:"hash"`                 // password.go
	Created   int64  `json:"created"`              // unix seconds
	LastLogin string `json:"last_login,omitempty"` // day, YYYY-MM-DD
	Used      int64  `json:"used"`                 // bytes of the account's messages
	Blocked   bool   `json:"blocked,omitempty"`
}

// MailboxInfo is what the index keeps of a mailbox besides its messages.
type MailboxInfo struct {
	UIDValidity uint32 `json:"uidvalidity"`
	UIDNext     uint32 `json:"uidnext"`
	Subscribed  bool   `json:"subscribed"`
}

// MessageRecord is one message's index entry, keyed by its UID.
type MessageRecord struct {
	Size  int64
	Date  time.Time // internal date
	File  string    // name under the account's message directory
	Flags []imap.Flag
}

// NewMessage is one message for Backend.Append: where it goes and its
// record, then what Append made of it.
type NewMessage struct {
	AccountID uint64
	Addr      string
	Mailbox   string
	Record    MessageRecord

	// Set by Append.
	UID         imap.UID
	UIDValidity uint32
	Used        int64 // the account's Used with the message
}

// PushToken is a device token with the time it was last set.
type PushToken struct {
	Token string `json:"t"`
	Set   int64  `json:"s"` // unix seconds of the last SETMETADATA
}

// ChangeKind says what a Change is.
type ChangeKind uint8

const (
	// ChangeAppended: UID was added to the mailbox.
	ChangeAppended ChangeKind = iota + 1
	// ChangeExpunged: UIDs were removed from the mailbox.
	ChangeExpunged
	// ChangeFlags: UID's flags are now Flags.
	ChangeFlags
)

// Change is a committed change of one mailbox that its IMAP sessions must
// hear of.
type Change struct {
	Kind    ChangeKind
	Account uint64
	Mailbox string
	UID     imap.UID   // ChangeAppended, ChangeFlags
	UIDs    []imap.UID // ChangeExpunged
	Flags   []imap.Flag
	// Origin is the session that made a flag change (which answers it
	// itself); meaningful only in the process that published it, and not
	// sent elsewhere.
	Origin any
}
