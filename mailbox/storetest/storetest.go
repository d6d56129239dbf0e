// Package storetest is the conformance suite every mailbox.Backend must
// pass: the behaviour the Store and its IMAP sessions rely on, asserted
// through the interface alone.
//
// A backend's test calls Run with a function that opens the backend named
// by dir: opening the same dir again after Close must give back everything
// committed before; a new dir gives an empty index. For the embedded
// backend dir is a directory; a shared one may derive a database or schema
// name from it.
package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/chatrelay/chatrelay/mailbox"
)

// Open opens the backend named by dir (see the package comment).
type Open func(t *testing.T, dir string) mailbox.Backend

// Run runs the suite against the backend open opens.
func Run(t *testing.T, open Open) {
	tests := []struct {
		name string
		f    func(t *testing.T, s *suite)
	}{
		{"Accounts", testAccounts},
		{"AccountIDsNeverReused", testAccountIDsNeverReused},
		{"DeleteAccount", testDeleteAccount},
		{"Mailboxes", testMailboxes},
		{"RenameMailbox", testRenameMailbox},
		{"DeleteMailbox", testDeleteMailbox},
		{"AppendUIDs", testAppendUIDs},
		{"AppendAllOrNothing", testAppendAllOrNothing},
		{"MessageRecords", testMessageRecords},
		{"ForEachMessage", testForEachMessage},
		{"Flags", testFlags},
		{"Remove", testRemove},
		{"Metadata", testMetadata},
		{"PushTokens", testPushTokens},
		{"Settings", testSettings},
		{"Notifications", testNotifications},
		{"ConcurrentAppends", testConcurrentAppends},
		{"ConcurrentCreateAccount", testConcurrentCreateAccount},
		{"Reopen", testReopen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &suite{t: t, open: open, dir: t.TempDir()}
			s.b = open(t, s.dir)
			t.Cleanup(func() {
				if s.b != nil {
					s.b.Close()
				}
			})
			tc.f(t, s)
		})
	}
}

type suite struct {
	t    *testing.T
	open Open
	dir  string
	b    mailbox.Backend
}

// reopen closes the backend and opens it again.
func (s *suite) reopen() {
	s.t.Helper()
	if err := s.b.Close(); err != nil {
		s.t.Fatalf("close: %v", err)
	}
	s.b = nil
	s.b = s.open(s.t, s.dir)
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

func (s *suite) account(addr string) uint64 {
	s.t.Helper()
	rec := mailbox.AccountRecord{Hash: "hash of " + addr, Created: t0.Unix(), LastLogin: "2026-03-01"}
	id, _, err := s.b.CreateAccount(addr, rec, mailbox.MailboxInfo{UIDValidity: 1000, UIDNext: 1, Subscribed: true})
	if err != nil {
		s.t.Fatalf("create account %s: %v", addr, err)
	}
	return id
}

func (s *suite) mailbox(id uint64, name string) {
	s.t.Helper()
	if err := s.b.CreateMailbox(id, name, mailbox.MailboxInfo{UIDValidity: 2000, UIDNext: 1, Subscribed: true}, 50); err != nil {
		s.t.Fatalf("create mailbox %s: %v", name, err)
	}
}

func msg(id uint64, addr, mbox, file string, size int64, flags ...imap.Flag) mailbox.NewMessage {
	return mailbox.NewMessage{AccountID: id, Addr: addr, Mailbox: mbox, Record: mailbox.MessageRecord{Size: size, Date: t0, File: file, Flags: flags}}
}

func (s *suite) append(ms ...mailbox.NewMessage) []mailbox.NewMessage {
	s.t.Helper()
	if err := s.b.Append(ms); err != nil {
		s.t.Fatalf("append: %v", err)
	}
	return ms
}

func (s *suite) used(addr string) int64 {
	s.t.Helper()
	rec, err := s.b.Account(addr)
	if err != nil {
		s.t.Fatalf("account %s: %v", addr, err)
	}
	return rec.Used
}

func (s *suite) uids(id uint64, mbox string) (*mailbox.MailboxInfo, []imap.UID) {
	s.t.Helper()
	info, uids, err := s.b.UIDs(id, mbox)
	if err != nil {
		s.t.Fatalf("uids of %s: %v", mbox, err)
	}
	return info, uids
}

func (s *suite) flags(id uint64, mbox string, uid imap.UID) []imap.Flag {
	s.t.Helper()
	recs, err := s.b.Messages(id, mbox, []imap.UID{uid})
	if err != nil || recs[0] == nil {
		s.t.Fatalf("message %s/%d: %v %v", mbox, uid, recs, err)
	}
	return recs[0].Flags
}

func testAccounts(t *testing.T, s *suite) {
	if _, err := s.b.Account("nobody@x.test"); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("unknown account: %v, want ErrNoAccount", err)
	}
	if n, err := s.b.CountAccounts(); err != nil || n != 0 {
		t.Errorf("empty index counts %d accounts (%v)", n, err)
	}
	b := s.account("bob@x.test")
	a := s.account("alice@x.test")
	if a == 0 || b == 0 || a == b {
		t.Fatalf("ids %d, %d: want distinct and non-zero", a, b)
	}
	rec, err := s.b.Account("alice@x.test")
	if err != nil {
		t.Fatal(err)
	}
	want := mailbox.AccountRecord{ID: a, Hash: "hash of alice@x.test", Created: t0.Unix(), LastLogin: "2026-03-01"}
	if *rec != want {
		t.Errorf("record %+v, want %+v", *rec, want)
	}
	info, err := s.b.Mailbox(a, "INBOX")
	if err != nil || *info != (mailbox.MailboxInfo{UIDValidity: 1000, UIDNext: 1, Subscribed: true}) {
		t.Errorf("new account's INBOX: %+v, %v", info, err)
	}

	// A second create changes nothing and names the account there.
	id, existing, err := s.b.CreateAccount("alice@x.test", mailbox.AccountRecord{Hash: "other"}, mailbox.MailboxInfo{UIDNext: 1})
	if !errors.Is(err, mailbox.ErrExists) || existing == nil || existing.ID != a || id != a || existing.Hash != want.Hash {
		t.Errorf("create again: id %d, existing %+v, %v; want ErrExists with id %d", id, existing, err, a)
	}
	if rec, _ := s.b.Account("alice@x.test"); rec.Hash != want.Hash {
		t.Errorf("create again changed the hash to %q", rec.Hash)
	}

	// An update that says it changed nothing writes nothing.
	err = s.b.UpdateAccount("alice@x.test", func(r *mailbox.AccountRecord) bool {
		r.Blocked = true
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	if rec, _ := s.b.Account("alice@x.test"); rec.Blocked {
		t.Error("an update returning false was stored")
	}
	err = s.b.UpdateAccount("alice@x.test", func(r *mailbox.AccountRecord) bool {
		r.Blocked, r.LastLogin, r.Hash = true, "2026-03-02", "new hash"
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if rec, _ := s.b.Account("alice@x.test"); !rec.Blocked || rec.LastLogin != "2026-03-02" || rec.Hash != "new hash" || rec.ID != a {
		t.Errorf("after update: %+v", rec)
	}
	if err := s.b.UpdateAccount("nobody@x.test", func(*mailbox.AccountRecord) bool { return true }); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("update of an unknown account: %v", err)
	}

	var addrs []string
	err = s.b.ForEachAccount(func(addr string, rec *mailbox.AccountRecord) error {
		addrs = append(addrs, addr)
		return nil
	})
	if err != nil || !slices.Equal(addrs, []string{"alice@x.test", "bob@x.test"}) {
		t.Errorf("accounts %q (%v), want address order", addrs, err)
	}
	if n, err := s.b.CountAccounts(); err != nil || n != 2 {
		t.Errorf("count %d (%v), want 2", n, err)
	}
}

func testAccountIDsNeverReused(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	if err := s.b.DeleteAccount("a@x.test"); err != nil {
		t.Fatal(err)
	}
	b := s.account("a@x.test")
	if b <= a {
		t.Errorf("re-created account got id %d after %d: ids must only grow (message directories are named by id)", b, a)
	}
	s.reopen()
	if c := s.account("c@x.test"); c <= b {
		t.Errorf("after reopen a new account got id %d after %d", c, b)
	}
}

func testDeleteAccount(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	keep := s.account("keep@x.test")
	s.mailbox(a, "Archive")
	s.append(msg(a, "a@x.test", "INBOX", "f1", 10), msg(keep, "keep@x.test", "INBOX", "k1", 7))
	v := "value"
	if err := s.b.SetMetadata("a@x.test", "", "/private/comment", &v, 10); err != nil {
		t.Fatal(err)
	}
	if err := s.b.DeleteAccount("a@x.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.b.Account("a@x.test"); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("deleted account: %v", err)
	}
	if _, err := s.b.Mailbox(a, "INBOX"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("deleted account's INBOX: %v, want ErrNoMailbox", err)
	}
	if err := s.b.ForEachMessage(a, "", func(string, imap.UID, *mailbox.MessageRecord) error {
		return errors.New("a message of a deleted account")
	}); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("messages of a deleted account: %v, want ErrNoAccount", err)
	}
	if err := s.b.DeleteAccount("a@x.test"); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("delete again: %v", err)
	}
	// Re-created, the address starts empty.
	a2 := s.account("a@x.test")
	if got, err := s.b.Metadata("a@x.test", "", "/private/comment"); err != nil || got != nil {
		t.Errorf("metadata of the re-created account: %v, %v", got, err)
	}
	if _, uids := s.uids(a2, "INBOX"); len(uids) != 0 {
		t.Errorf("re-created account has messages %v", uids)
	}
	if _, uids := s.uids(keep, "INBOX"); len(uids) != 1 || s.used("keep@x.test") != 7 {
		t.Errorf("another account lost messages: %v, used %d", uids, s.used("keep@x.test"))
	}
}

func testMailboxes(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	for _, name := range []string{"b", "a", "ab", "Entwürfe", "a/b"} {
		s.mailbox(a, name)
	}
	if err := s.b.CreateMailbox(a, "a", mailbox.MailboxInfo{UIDNext: 1}, 50); !errors.Is(err, mailbox.ErrMailboxExists) {
		t.Errorf("create twice: %v, want ErrMailboxExists", err)
	}
	if err := s.b.CreateMailbox(a, "c", mailbox.MailboxInfo{UIDNext: 1}, 6); !errors.Is(err, mailbox.ErrTooManyMailboxes) {
		t.Errorf("a 7th mailbox with max 6: %v, want ErrTooManyMailboxes", err)
	}
	if err := s.b.CreateMailbox(999, "x", mailbox.MailboxInfo{UIDNext: 1}, 50); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("mailbox of an unknown account: %v, want ErrNoAccount", err)
	}
	var names []string
	err := s.b.ForEachMailbox(a, func(name string, info *mailbox.MailboxInfo) error {
		names = append(names, name)
		return nil
	})
	want := []string{"INBOX", "a", "a/b", "ab", "b", "Entwürfe"}
	slices.Sort(want)
	if err != nil || !slices.Equal(names, want) {
		t.Errorf("mailboxes %q (%v), want %q", names, err, want)
	}
	if err := s.b.SetSubscribed(a, "ab", false); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.b.Mailbox(a, "ab"); info.Subscribed || info.UIDValidity != 2000 || info.UIDNext != 1 {
		t.Errorf("after unsubscribe: %+v", info)
	}
	if err := s.b.SetSubscribed(a, "nope", true); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("subscribe to a missing mailbox: %v", err)
	}
	if _, err := s.b.Mailbox(a, "nope"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("missing mailbox: %v", err)
	}
	if _, err := s.b.CountMessages(a, "nope"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("count of a missing mailbox: %v", err)
	}
	if _, err := s.b.Mailbox(999, "INBOX"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("mailbox of an unknown account: %v", err)
	}
}

func testRenameMailbox(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	s.mailbox(a, "old")
	s.mailbox(a, "taken")
	// A name that starts like the other must not take its messages along.
	s.mailbox(a, "old2")
	s.append(msg(a, "a@x.test", "old", "f1", 1), msg(a, "a@x.test", "old", "f2", 2), msg(a, "a@x.test", "old2", "g1", 3))
	s.remove(a, "a@x.test", "old", 1)
	if err := s.b.RenameMailbox(a, "old", "taken"); !errors.Is(err, mailbox.ErrMailboxExists) {
		t.Errorf("rename onto an existing mailbox: %v", err)
	}
	if err := s.b.RenameMailbox(a, "gone", "new"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("rename a missing mailbox: %v", err)
	}
	if err := s.b.RenameMailbox(a, "old", "new"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.b.Mailbox(a, "old"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("old name after rename: %v", err)
	}
	info, uids := s.uids(a, "new")
	if info.UIDValidity != 2000 || info.UIDNext != 3 || !slices.Equal(uids, []imap.UID{2}) {
		t.Errorf("renamed: %+v %v, want UIDVALIDITY 2000, UIDNEXT 3, UIDs [2]", info, uids)
	}
	if recs, _ := s.b.Messages(a, "new", []imap.UID{2}); recs[0] == nil || recs[0].File != "f2" {
		t.Errorf("renamed message: %+v", recs[0])
	}
	if _, uids := s.uids(a, "old2"); !slices.Equal(uids, []imap.UID{1}) {
		t.Errorf("the mailbox with the longer name has %v", uids)
	}
}

func (s *suite) remove(id uint64, addr, mbox string, uids ...imap.UID) ([]imap.UID, []string) {
	s.t.Helper()
	gone, files, err := s.b.Remove(id, addr, mbox, uids, false)
	if err != nil {
		s.t.Fatalf("remove: %v", err)
	}
	return gone, files
}

func testDeleteMailbox(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	s.mailbox(a, "Trash")
	s.mailbox(a, "Trash2")
	s.append(msg(a, "a@x.test", "Trash", "t1", 100), msg(a, "a@x.test", "Trash", "t2", 20), msg(a, "a@x.test", "Trash2", "u1", 3), msg(a, "a@x.test", "INBOX", "i1", 4))
	files, err := s.b.DeleteMailbox(a, "a@x.test", "Trash")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	if !slices.Equal(files, []string{"t1", "t2"}) {
		t.Errorf("files %q, want t1 t2", files)
	}
	if u := s.used("a@x.test"); u != 7 {
		t.Errorf("used %d after deleting a mailbox, want 7", u)
	}
	if _, err := s.b.Mailbox(a, "Trash"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("deleted mailbox: %v", err)
	}
	if _, err := s.b.DeleteMailbox(a, "a@x.test", "Trash"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("delete again: %v", err)
	}
	if _, uids := s.uids(a, "Trash2"); len(uids) != 1 {
		t.Errorf("Trash2 has %v", uids)
	}
	// Created again, the name is a new mailbox with no messages.
	s.mailbox(a, "Trash")
	if info, uids := s.uids(a, "Trash"); len(uids) != 0 || info.UIDNext != 1 {
		t.Errorf("re-created mailbox: %+v %v", info, uids)
	}
}

func testAppendUIDs(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	b := s.account("b@x.test")
	ms := s.append(msg(a, "a@x.test", "INBOX", "f1", 10), msg(b, "b@x.test", "INBOX", "g1", 5), msg(a, "a@x.test", "INBOX", "f2", 20))
	want := []mailbox.NewMessage{{UID: 1, UIDValidity: 1000, Used: 10}, {UID: 1, UIDValidity: 1000, Used: 5}, {UID: 2, UIDValidity: 1000, Used: 30}}
	for i, m := range ms {
		if m.UID != want[i].UID || m.UIDValidity != want[i].UIDValidity || m.Used != want[i].Used {
			t.Errorf("append %d: UID %d UIDVALIDITY %d used %d, want %d %d %d", i, m.UID, m.UIDValidity, m.Used, want[i].UID, want[i].UIDValidity, want[i].Used)
		}
	}
	s.remove(a, "a@x.test", "INBOX", 2)
	// A UID is never used twice in a mailbox (RFC 3501 section 2.3.1.1),
	// not even the last one after it was expunged, and not after a restart.
	s.reopen()
	m := s.append(msg(a, "a@x.test", "INBOX", "f3", 1))[0]
	if m.UID != 3 {
		t.Errorf("after expunging UID 2 and reopening, the next message got UID %d, want 3", m.UID)
	}
	info, uids := s.uids(a, "INBOX")
	if info.UIDNext != 4 || !slices.Equal(uids, []imap.UID{1, 3}) {
		t.Errorf("INBOX: %+v %v, want UIDNEXT 4, UIDs [1 3]", info, uids)
	}
	if n, err := s.b.CountMessages(a, "INBOX"); err != nil || n != 2 {
		t.Errorf("count %d (%v), want 2", n, err)
	}
	if u := s.used("a@x.test"); u != 11 {
		t.Errorf("used %d, want 11", u)
	}
	// An empty batch is no error.
	if err := s.b.Append(nil); err != nil {
		t.Errorf("append nothing: %v", err)
	}
}

func testAppendAllOrNothing(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	b := s.account("b@x.test")
	err := s.b.Append([]mailbox.NewMessage{msg(a, "a@x.test", "INBOX", "f1", 10), msg(b, "b@x.test", "Missing", "g1", 5)})
	if !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Fatalf("append to a missing mailbox: %v, want ErrNoMailbox", err)
	}
	info, uids := s.uids(a, "INBOX")
	if len(uids) != 0 || info.UIDNext != 1 || s.used("a@x.test") != 0 {
		t.Errorf("a failed batch left %v, UIDNEXT %d, used %d", uids, info.UIDNext, s.used("a@x.test"))
	}
}

func testMessageRecords(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	rec := mailbox.MessageRecord{Size: 123456, Date: time.Unix(1700000000, 42), File: "file-1", Flags: []imap.Flag{imap.FlagSeen, "$Custom", imap.FlagFlagged}}
	s.append(mailbox.NewMessage{AccountID: a, Addr: "a@x.test", Mailbox: "INBOX", Record: rec}, msg(a, "a@x.test", "INBOX", "file-2", 1))
	recs, err := s.b.Messages(a, "INBOX", []imap.UID{2, 7, 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[1] != nil || recs[0] == nil || recs[2] == nil {
		t.Fatalf("records for UIDs 2, 7, 1: %v; want a nil for 7", recs)
	}
	got := recs[2]
	if got.Size != rec.Size || !got.Date.Equal(rec.Date) || got.File != rec.File || !slices.Equal(got.Flags, rec.Flags) {
		t.Errorf("record %+v, want %+v", got, rec)
	}
	if recs[0].File != "file-2" || len(recs[0].Flags) != 0 {
		t.Errorf("record of UID 2: %+v", recs[0])
	}
	if _, err := s.b.Messages(a, "Missing", []imap.UID{1}); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("messages of a missing mailbox: %v", err)
	}
}

func testForEachMessage(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	s.mailbox(a, "b")
	s.mailbox(a, "a")
	for i := range 3 {
		s.append(msg(a, "a@x.test", "b", fmt.Sprint("b", i), 1), msg(a, "a@x.test", "INBOX", fmt.Sprint("i", i), 1), msg(a, "a@x.test", "a", fmt.Sprint("a", i), 1))
	}
	var seen []string
	err := s.b.ForEachMessage(a, "", func(mbox string, uid imap.UID, r *mailbox.MessageRecord) error {
		seen = append(seen, fmt.Sprintf("%s/%d/%s", mbox, uid, r.File))
		return nil
	})
	want := []string{"INBOX/1/i0", "INBOX/2/i1", "INBOX/3/i2", "a/1/a0", "a/2/a1", "a/3/a2", "b/1/b0", "b/2/b1", "b/3/b2"}
	if err != nil || !slices.Equal(seen, want) {
		t.Errorf("every message: %q (%v), want %q", seen, err, want)
	}
	seen = nil
	err = s.b.ForEachMessage(a, "b", func(mbox string, uid imap.UID, r *mailbox.MessageRecord) error {
		seen = append(seen, fmt.Sprintf("%s/%d/%s", mbox, uid, r.File))
		return nil
	})
	if err != nil || !slices.Equal(seen, want[6:]) {
		t.Errorf("messages of b: %q (%v)", seen, err)
	}
	stop := errors.New("stop")
	n := 0
	err = s.b.ForEachMessage(a, "", func(string, imap.UID, *mailbox.MessageRecord) error {
		n++
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("f's error: %v after %d calls, want it back after 1", err, n)
	}
	if err := s.b.ForEachMessage(a, "Missing", func(string, imap.UID, *mailbox.MessageRecord) error { return nil }); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("messages of a missing mailbox: %v", err)
	}
}

func testFlags(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	s.append(msg(a, "a@x.test", "INBOX", "f1", 1), msg(a, "a@x.test", "INBOX", "f2", 1, imap.FlagSeen))
	recs, changed, err := s.b.SetFlags(a, "INBOX", []imap.UID{1, 2, 9}, imap.StoreFlagsAdd, []imap.Flag{"\\seen", "$Label"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []bool{true, true, false}) || recs[2] != nil {
		t.Errorf("changed %v, records %v; want true, true, false and no record for UID 9", changed, recs)
	}
	if f := s.flags(a, "INBOX", 1); !slices.Equal(f, []imap.Flag{imap.FlagSeen, "$Label"}) {
		t.Errorf("flags of 1: %v", f)
	}
	if recs[0] == nil || !slices.Equal(recs[0].Flags, []imap.Flag{imap.FlagSeen, "$Label"}) {
		t.Errorf("returned record of 1: %+v", recs[0])
	}
	_, changed, _ = s.b.SetFlags(a, "INBOX", []imap.UID{1}, imap.StoreFlagsAdd, []imap.Flag{imap.FlagSeen})
	if changed[0] {
		t.Error("adding a flag that is there reports a change")
	}
	s.b.SetFlags(a, "INBOX", []imap.UID{1, 2}, imap.StoreFlagsDel, []imap.Flag{imap.FlagSeen})
	if f := s.flags(a, "INBOX", 2); !slices.Equal(f, []imap.Flag{"$Label"}) {
		t.Errorf("flags of 2 after removing \\Seen: %v", f)
	}
	s.b.SetFlags(a, "INBOX", []imap.UID{2}, imap.StoreFlagsSet, []imap.Flag{imap.FlagDeleted, `\Recent`})
	if f := s.flags(a, "INBOX", 2); !slices.Equal(f, []imap.Flag{imap.FlagDeleted}) {
		t.Errorf("flags of 2 after set: %v (\\Recent is never stored)", f)
	}
	s.reopen()
	if f := s.flags(a, "INBOX", 2); !slices.Equal(f, []imap.Flag{imap.FlagDeleted}) {
		t.Errorf("flags of 2 after reopen: %v", f)
	}
	if _, _, err := s.b.SetFlags(a, "Missing", []imap.UID{1}, imap.StoreFlagsAdd, []imap.Flag{imap.FlagSeen}); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("flags in a missing mailbox: %v", err)
	}
}

func testRemove(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	s.append(msg(a, "a@x.test", "INBOX", "f1", 1, imap.FlagDeleted), msg(a, "a@x.test", "INBOX", "f2", 10), msg(a, "a@x.test", "INBOX", "f3", 100, imap.FlagDeleted))
	gone, files, err := s.b.Remove(a, "a@x.test", "INBOX", []imap.UID{1, 2, 7}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gone, []imap.UID{1}) || !slices.Equal(files, []string{"f1"}) {
		t.Errorf("expunge of 1, 2, 7: gone %v files %q, want [1] [f1] (2 lacks \\Deleted, 7 is not there)", gone, files)
	}
	if u := s.used("a@x.test"); u != 110 {
		t.Errorf("used %d, want 110", u)
	}
	gone, files = s.remove(a, "a@x.test", "INBOX", 2, 3)
	if !slices.Equal(gone, []imap.UID{2, 3}) || !slices.Equal(files, []string{"f2", "f3"}) {
		t.Errorf("remove 2, 3: %v %q", gone, files)
	}
	if _, uids := s.uids(a, "INBOX"); len(uids) != 0 || s.used("a@x.test") != 0 {
		t.Errorf("left %v, used %d", uids, s.used("a@x.test"))
	}
	if gone, _, err := s.b.Remove(a, "a@x.test", "Missing", []imap.UID{1}, false); err != nil || len(gone) != 0 {
		t.Errorf("remove from a missing mailbox: %v %v, want nothing and no error", gone, err)
	}
}

func testMetadata(t *testing.T, s *suite) {
	s.account("a@x.test")
	s.account("b@x.test")
	get := func(addr, mbox, entry string) *string {
		t.Helper()
		v, err := s.b.Metadata(addr, mbox, entry)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := get("a@x.test", "", "/private/comment"); v != nil {
		t.Errorf("unset entry: %q", *v)
	}
	one, two, empty := "one", "two", ""
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.b.SetMetadata("a@x.test", "", "/private/comment", &one, 3))
	must(s.b.SetMetadata("a@x.test", "INBOX", "/private/comment", &two, 3))
	must(s.b.SetMetadata("a@x.test", "", "/private/empty", &empty, 3))
	if v := get("a@x.test", "", "/private/comment"); v == nil || *v != "one" {
		t.Errorf("server entry: %v", v)
	}
	if v := get("a@x.test", "INBOX", "/private/comment"); v == nil || *v != "two" {
		t.Errorf("INBOX entry: %v", v)
	}
	if v := get("a@x.test", "", "/private/empty"); v == nil || *v != "" {
		t.Errorf("an empty value must be kept apart from none: %v", v)
	}
	if v := get("b@x.test", "", "/private/comment"); v != nil {
		t.Errorf("another account sees %q", *v)
	}
	if err := s.b.SetMetadata("a@x.test", "", "/private/fourth", &one, 3); !errors.Is(err, mailbox.ErrTooMany) {
		t.Errorf("a 4th entry with max 3: %v, want ErrTooMany", err)
	}
	// Replacing an entry at the limit is fine; deleting makes room.
	must(s.b.SetMetadata("a@x.test", "", "/private/comment", &two, 3))
	must(s.b.SetMetadata("a@x.test", "", "/private/comment", nil, 3))
	if v := get("a@x.test", "", "/private/comment"); v != nil {
		t.Errorf("deleted entry: %q", *v)
	}
	must(s.b.SetMetadata("a@x.test", "", "/private/fourth", &one, 3))
	if _, err := s.b.Metadata("nobody@x.test", "", "/private/comment"); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("metadata of an unknown account: %v", err)
	}
	if err := s.b.SetMetadata("nobody@x.test", "", "/private/comment", &one, 3); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("set metadata of an unknown account: %v", err)
	}
}

func testPushTokens(t *testing.T, s *suite) {
	s.account("a@x.test")
	s.account("b@x.test")
	if ts, err := s.b.PushTokens("a@x.test"); err != nil || len(ts) != 0 {
		t.Errorf("no tokens yet: %v %v", ts, err)
	}
	set := []mailbox.PushToken{{Token: "t2", Set: 200}, {Token: "t1", Set: 100}}
	err := s.b.UpdatePushTokens("a@x.test", func(old []mailbox.PushToken) []mailbox.PushToken {
		if len(old) != 0 {
			t.Errorf("f was given %v", old)
		}
		return set
	})
	if err != nil {
		t.Fatal(err)
	}
	if ts, _ := s.b.PushTokens("a@x.test"); !slices.Equal(ts, set) {
		t.Errorf("tokens %v, want %v in that order", ts, set)
	}
	if ts, _ := s.b.PushTokens("b@x.test"); len(ts) != 0 {
		t.Errorf("another account has %v", ts)
	}
	s.b.UpdatePushTokens("a@x.test", func(old []mailbox.PushToken) []mailbox.PushToken {
		if !slices.Equal(old, set) {
			t.Errorf("f was given %v, want %v", old, set)
		}
		return nil
	})
	if ts, _ := s.b.PushTokens("a@x.test"); len(ts) != 0 {
		t.Errorf("tokens after clearing: %v", ts)
	}
	if _, err := s.b.PushTokens("nobody@x.test"); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("tokens of an unknown account: %v", err)
	}
	if err := s.b.UpdatePushTokens("nobody@x.test", func(t []mailbox.PushToken) []mailbox.PushToken { return t }); !errors.Is(err, mailbox.ErrNoAccount) {
		t.Errorf("update tokens of an unknown account: %v", err)
	}
}

func testSettings(t *testing.T, s *suite) {
	if v, err := s.b.Setting("k"); err != nil || v != nil {
		t.Errorf("unset setting: %q %v", v, err)
	}
	if err := s.b.SetSetting("k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if err := s.b.SetSetting("k", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	s.reopen()
	if v, err := s.b.Setting("k"); err != nil || string(v) != "v2" {
		t.Errorf("setting after reopen: %q %v", v, err)
	}
}

func testNotifications(t *testing.T, s *suite) {
	var mu sync.Mutex
	var got1, got2 []mailbox.Change
	s.b.Subscribe(func(c mailbox.Change) { mu.Lock(); got1 = append(got1, c); mu.Unlock() })
	s.b.Subscribe(func(c mailbox.Change) { mu.Lock(); got2 = append(got2, c); mu.Unlock() })
	origin := new(int)
	changes := []mailbox.Change{
		{Kind: mailbox.ChangeAppended, Account: 1, Mailbox: "INBOX", UID: 7},
		{Kind: mailbox.ChangeFlags, Account: 1, Mailbox: "INBOX", UID: 7, Flags: []imap.Flag{imap.FlagSeen}, Origin: origin},
		{Kind: mailbox.ChangeExpunged, Account: 1, Mailbox: "INBOX", UIDs: []imap.UID{7}},
	}
	for i, c := range changes {
		s.b.Publish(c)
		// Subscribers in the publishing process hear of it before
		// Publish returns: the Store's stripe lock orders them.
		mu.Lock()
		n1, n2 := len(got1), len(got2)
		mu.Unlock()
		if n1 != i+1 || n2 != i+1 {
			t.Fatalf("after publishing %d changes the subscribers have %d and %d", i+1, n1, n2)
		}
	}
	for _, got := range [][]mailbox.Change{got1, got2} {
		for i, c := range got {
			w := changes[i]
			if c.Kind != w.Kind || c.Account != w.Account || c.Mailbox != w.Mailbox || c.UID != w.UID ||
				!slices.Equal(c.UIDs, w.UIDs) || !slices.Equal(c.Flags, w.Flags) || c.Origin != w.Origin {
				t.Errorf("change %d: %+v, want %+v", i, c, w)
			}
		}
	}
}

// testConcurrentAppends appends from many goroutines at once, without the
// Store's stripe locks: each message gets its own UID and every byte is
// counted.
func testConcurrentAppends(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	b := s.account("b@x.test")
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ms := []mailbox.NewMessage{msg(a, "a@x.test", "INBOX", fmt.Sprintf("a-%d-%d", w, i), 3)}
				if i%2 == 0 {
					ms = append(ms, msg(b, "b@x.test", "INBOX", fmt.Sprintf("b-%d-%d", w, i), 5))
				}
				if err := s.b.Append(ms); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	info, uids := s.uids(a, "INBOX")
	if len(uids) != workers*each || info.UIDNext != workers*each+1 {
		t.Errorf("%d messages, UIDNEXT %d; want %d, %d", len(uids), info.UIDNext, workers*each, workers*each+1)
	}
	for i, uid := range uids {
		if uid != imap.UID(i+1) {
			t.Fatalf("UIDs %v..., want 1..%d with no gap or repeat", uids[:i+1], workers*each)
		}
	}
	if u := s.used("a@x.test"); u != 3*workers*each {
		t.Errorf("a's used %d, want %d", u, 3*workers*each)
	}
	if u := s.used("b@x.test"); u != 5*workers*(each+1)/2 {
		t.Errorf("b's used %d, want %d", u, 5*workers*(each+1)/2)
	}
	files := map[string]bool{}
	s.b.ForEachMessage(a, "INBOX", func(_ string, _ imap.UID, r *mailbox.MessageRecord) error {
		files[r.File] = true
		return nil
	})
	if len(files) != workers*each {
		t.Errorf("%d distinct files, want %d", len(files), workers*each)
	}
}

func testConcurrentCreateAccount(t *testing.T, s *suite) {
	const n = 8
	ids := make(chan uint64, n)
	var wg sync.WaitGroup
	created := 0
	var mu sync.Mutex
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, existing, err := s.b.CreateAccount("race@x.test", mailbox.AccountRecord{Hash: "h"}, mailbox.MailboxInfo{UIDValidity: 1, UIDNext: 1})
			switch {
			case err == nil:
				mu.Lock()
				created++
				mu.Unlock()
				ids <- id
			case errors.Is(err, mailbox.ErrExists) && existing != nil:
				ids <- existing.ID
			default:
				t.Errorf("create: %v", err)
				ids <- 0
			}
		}()
	}
	wg.Wait()
	close(ids)
	var first uint64
	for id := range ids {
		if first == 0 {
			first = id
		}
		if id != first || id == 0 {
			t.Errorf("concurrent creates of one address saw ids %d and %d", first, id)
		}
	}
	if created != 1 {
		t.Errorf("%d creates succeeded, want 1", created)
	}
	if n, _ := s.b.CountAccounts(); n != 1 {
		t.Errorf("%d accounts", n)
	}
}

func testReopen(t *testing.T, s *suite) {
	a := s.account("a@x.test")
	s.mailbox(a, "Sent")
	s.b.SetSubscribed(a, "Sent", false)
	s.append(msg(a, "a@x.test", "INBOX", "f1", 10, imap.FlagSeen), msg(a, "a@x.test", "Sent", "f2", 20))
	s.remove(a, "a@x.test", "INBOX", 1)
	s.append(msg(a, "a@x.test", "INBOX", "f3", 30, "$Label"))
	v := "comment"
	s.b.SetMetadata("a@x.test", "", "/private/comment", &v, 10)
	tokens := []mailbox.PushToken{{Token: "tok", Set: 5}}
	s.b.UpdatePushTokens("a@x.test", func([]mailbox.PushToken) []mailbox.PushToken { return tokens })
	s.b.UpdateAccount("a@x.test", func(r *mailbox.AccountRecord) bool { r.LastLogin = "2026-04-01"; return true })

	s.reopen()
	rec, err := s.b.Account("a@x.test")
	if err != nil || rec.ID != a || rec.Used != 50 || rec.LastLogin != "2026-04-01" {
		t.Errorf("account after reopen: %+v %v", rec, err)
	}
	info, uids := s.uids(a, "INBOX")
	if info.UIDNext != 3 || info.UIDValidity != 1000 || !slices.Equal(uids, []imap.UID{2}) {
		t.Errorf("INBOX after reopen: %+v %v", info, uids)
	}
	if f := s.flags(a, "INBOX", 2); !slices.Equal(f, []imap.Flag{"$Label"}) {
		t.Errorf("flags after reopen: %v", f)
	}
	if info, _ := s.b.Mailbox(a, "Sent"); info == nil || info.Subscribed || info.UIDNext != 2 {
		t.Errorf("Sent after reopen: %+v", info)
	}
	if got, _ := s.b.Metadata("a@x.test", "", "/private/comment"); got == nil || *got != v {
		t.Errorf("metadata after reopen: %v", got)
	}
	if got, _ := s.b.PushTokens("a@x.test"); !slices.Equal(got, tokens) {
		t.Errorf("tokens after reopen: %v", got)
	}
}
