package mailbox

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/testclock"
)

// serveIMAP serves the store's IMAP backend on a local port.
func serveIMAP(t *testing.T, s *Store) string {
	t.Helper()
	opts := &IMAPOptions{Authenticate: func(_ net.Conn, user, pass string) (*Account, error) {
		return s.Login(user, pass, nil)
	}}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return s.NewIMAPSession(c, opts), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}},
		InsecureAuth: true,
		Logger:       log.New(io.Discard, "", 0),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func imapLogin(t *testing.T, addr, user string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, "password123").Wait(); err != nil {
		t.Fatal(err)
	}
	return c
}

// v1Msg and v1Mailbox describe an account's content as the test writes it
// in the version 1 layout and expects to read it back.
type v1Msg struct {
	uid   imap.UID
	flags []imap.Flag
	body  string
	date  time.Time
}

type v1Mailbox struct {
	name string
	info MailboxInfo
	msgs []v1Msg
}

type v1Account struct {
	id        uint64
	addr      string
	mailboxes []v1Mailbox
	meta      map[string]string // metadata bucket, as stored
}

func (m v1Msg) file(mailbox string) string {
	return fmt.Sprintf("%x-%d", mailbox, m.uid)
}

// writeV1 writes accounts into dir/index.db the way version 1 did, with
// their message files.
func writeV1(t *testing.T, dir string, accounts []v1Account, hash string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		accts, _ := tx.CreateBucket([]byte("accounts"))
		data, _ := tx.CreateBucket([]byte("data"))
		meta, _ := tx.CreateBucket([]byte("meta"))
		for _, a := range accounts {
			acct, err := data.CreateBucket(u64key(a.id))
			if err != nil {
				return err
			}
			md, _ := acct.CreateBucket([]byte("metadata"))
			for k, v := range a.meta {
				md.Put([]byte(k), []byte(v))
			}
			mboxes, _ := acct.CreateBucket([]byte("mailboxes"))
			var used int64
			for _, mb := range a.mailboxes {
				b, err := mboxes.CreateBucket([]byte(mb.name))
				if err != nil {
					return err
				}
				info, _ := json.Marshal(mb.info)
				b.Put([]byte("info"), info)
				msgs, _ := b.CreateBucket([]byte("msgs"))
				for _, m := range mb.msgs {
					r := MessageRecord{Size: int64(len(m.body)), Date: m.date, File: m.file(mb.name), Flags: m.flags}
					k := []byte{0, 0, 0, byte(m.uid)}
					if err := msgs.Put(k, r.encode()); err != nil {
						return err
					}
					used += r.Size
					d := filepath.Join(dir, "msgs", strconv.FormatUint(a.id, 10))
					os.MkdirAll(d, 0o700)
					if err := os.WriteFile(filepath.Join(d, m.file(mb.name)), []byte(m.body), 0o600); err != nil {
						return err
					}
				}
			}
			rec, _ := json.Marshal(AccountRecord{ID: a.id, Hash: hash, Created: 1700000000, LastLogin: "2026-01-01", Used: used})
			accts.Put([]byte(a.addr), rec)
		}
		return meta.Put(keyNextAccountID, u64key(uint64(len(accounts)+1)))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func v1Fixture(now time.Time) []v1Account {
	body := func(s string) string { return "Subject: " + s + "\r\n\r\n" + strings.Repeat(s, 10) + "\r\n" }
	tokens, _ := json.Marshal([]PushToken{{Token: "device-token", Set: now.Add(-time.Hour).Unix()}})
	return []v1Account{{
		id:   1,
		addr: "alice@x.test",
		mailboxes: []v1Mailbox{
			{"INBOX", MailboxInfo{UIDValidity: 1111, UIDNext: 5, Subscribed: true}, []v1Msg{
				{1, []imap.Flag{imap.FlagSeen}, body("one"), now.Add(-48 * time.Hour)},
				{3, []imap.Flag{imap.FlagSeen, "$Custom"}, body("three"), now.Add(-24 * time.Hour)},
				{4, nil, body("four"), now.Add(-time.Hour)},
			}},
			{"Entwürfe", MailboxInfo{UIDValidity: 2222, UIDNext: 3, Subscribed: false}, []v1Msg{
				{2, []imap.Flag{imap.FlagDraft}, body("draft"), now.Add(-2 * time.Hour)},
			}},
			// A name that starts another one's.
			{"a", MailboxInfo{UIDValidity: 3333, UIDNext: 2, Subscribed: true}, []v1Msg{
				{1, []imap.Flag{imap.FlagDeleted}, body("a"), now.Add(-3 * time.Hour)},
			}},
			{"ab", MailboxInfo{UIDValidity: 4444, UIDNext: 9, Subscribed: true}, []v1Msg{
				{7, nil, body("ab7"), now.Add(-4 * time.Hour)},
				{8, []imap.Flag{imap.FlagAnswered}, body("ab8"), now.Add(-5 * time.Hour)},
			}},
			{"日本語/メール", MailboxInfo{UIDValidity: 5555, UIDNext: 7, Subscribed: true}, nil},
		},
		meta: map[string]string{
			"\x00/private/comment":    "server note",
			"INBOX\x00/private/color": "blue",
			string(keyPushTokens[1:]): string(tokens),
		},
	}, {
		id:        2,
		addr:      "bob@x.test",
		mailboxes: []v1Mailbox{{"INBOX", MailboxInfo{UIDValidity: 6666, UIDNext: 1, Subscribed: true}, nil}},
	}}
}

// checkAccounts reads every account back through IMAP and the store's
// methods.
func checkAccounts(t *testing.T, s *Store, accounts []v1Account) {
	t.Helper()
	addr := serveIMAP(t, s)
	for _, a := range accounts {
		c := imapLogin(t, addr, a.addr)
		list, err := c.List("", "*", nil).Collect()
		if err != nil {
			t.Fatal(err)
		}
		var names, want []string
		for _, l := range list {
			names = append(names, l.Mailbox)
		}
		for _, mb := range a.mailboxes {
			want = append(want, mb.name)
		}
		sort.Strings(names)
		sort.Strings(want)
		if !slices.Equal(names, want) {
			t.Errorf("%s: mailboxes %q, want %q", a.addr, names, want)
		}
		subs, err := c.List("", "*", &imap.ListOptions{SelectSubscribed: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		subscribed := map[string]bool{}
		for _, l := range subs {
			subscribed[l.Mailbox] = true
		}
		for _, mb := range a.mailboxes {
			if subscribed[mb.name] != mb.info.Subscribed {
				t.Errorf("%s %s: subscribed %v, want %v", a.addr, mb.name, subscribed[mb.name], mb.info.Subscribed)
			}
			sel, err := c.Select(mb.name, &imap.SelectOptions{ReadOnly: true}).Wait()
			if err != nil {
				t.Fatalf("%s: select %s: %v", a.addr, mb.name, err)
			}
			if sel.UIDValidity != mb.info.UIDValidity || uint32(sel.UIDNext) != mb.info.UIDNext || sel.NumMessages != uint32(len(mb.msgs)) {
				t.Errorf("%s %s: uidvalidity %d uidnext %d messages %d, want %d %d %d", a.addr, mb.name,
					sel.UIDValidity, sel.UIDNext, sel.NumMessages, mb.info.UIDValidity, mb.info.UIDNext, len(mb.msgs))
			}
			if len(mb.msgs) == 0 {
				continue
			}
			section := &imap.FetchItemBodySection{Peek: true}
			var all imap.SeqSet
			all.AddRange(1, uint32(len(mb.msgs)))
			msgs, err := c.Fetch(all, &imap.FetchOptions{
				UID: true, Flags: true, RFC822Size: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{section},
			}).Collect()
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != len(mb.msgs) {
				t.Fatalf("%s %s: fetched %d messages, want %d", a.addr, mb.name, len(msgs), len(mb.msgs))
			}
			for i, m := range mb.msgs {
				got := msgs[i]
				if got.UID != m.uid || fmt.Sprint(got.Flags) != fmt.Sprint(m.flags) || got.RFC822Size != int64(len(m.body)) ||
					!got.InternalDate.Equal(m.date.Truncate(time.Second)) || string(got.FindBodySection(section)) != m.body {
					t.Errorf("%s %s #%d: uid %d flags %v size %d date %v body %q; want %d %v %d %v %q", a.addr, mb.name, i+1,
						got.UID, got.Flags, got.RFC822Size, got.InternalDate, got.FindBodySection(section),
						m.uid, m.flags, len(m.body), m.date, m.body)
				}
			}
		}
		var used int64
		for _, mb := range a.mailboxes {
			for _, m := range mb.msgs {
				used += int64(len(m.body))
			}
		}
		if got, _, err := s.Quota(a.addr); err != nil || got != used {
			t.Errorf("%s: used %d (%v), want %d", a.addr, got, err, used)
		}
		for k, v := range a.meta {
			if k == string(keyPushTokens[1:]) {
				continue
			}
			mailbox, entry, _ := strings.Cut(k, "\x00")
			got, err := s.GetPrivate(a.addr, mailbox, entry)
			if err != nil || got == nil || *got != v {
				t.Errorf("%s: metadata %q = %v (%v), want %q", a.addr, k, got, err, v)
			}
		}
		tokens, err := s.PushTokens(a.addr)
		if err != nil {
			t.Fatal(err)
		}
		if wantTokens := a.meta[string(keyPushTokens[1:])] != ""; wantTokens != slices.Equal(tokens, []string{"device-token"}) {
			t.Errorf("%s: push tokens %q", a.addr, tokens)
		}
		c.Logout()
	}
}

// indexFiles lists the message files the index in dir names, the store
// closed.
func indexFiles(t *testing.T, dir string) []string {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return dbFiles(t, db)
}

func dbFiles(t *testing.T, db *bolt.DB) []string {
	t.Helper()
	var files []string
	err := db.View(func(tx *bolt.Tx) error {
		return ForEachFile(tx, func(id uint64, file string) error {
			files = append(files, fmt.Sprint(id, "/", file))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

func TestOpenConvertsV1Index(t *testing.T) {
	dir := t.TempDir()
	clock := testclock.New(time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC))
	accounts := v1Fixture(clock.Now())
	writeV1(t, dir, accounts, legacyHash("password123"))
	before := indexFiles(t, dir)
	if len(before) != 7 {
		t.Fatalf("version 1 index names %d files, want 7: %q", len(before), before)
	}

	// No clean-shutdown marker: the sweep runs too, on the converted index.
	s, err := Open(dir, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	checkAccounts(t, s, accounts)
	s.DB().View(func(tx *bolt.Tx) error {
		if v, err := schemaOf(tx); v != schemaVersion || err != nil {
			t.Errorf("schema version %d (%v)", v, err)
		}
		return tx.Bucket(bucketData).ForEachBucket(func(k []byte) error {
			if n := tx.Bucket(bucketData).Bucket(k).Stats().BucketN; n != 1 {
				t.Errorf("account %x has %d sub-buckets", k, n-1)
			}
			return nil
		})
	})
	// UIDs go on from UIDNEXT.
	in, _ := s.NewIncoming()
	in.Write([]byte("Subject: new\r\n\r\nnew\r\n"))
	ds, err := in.Deliver([]*Account{{ID: 1, Addr: "alice@x.test"}}, "Entwürfe")
	if err != nil || ds[0].UID != 3 || ds[0].UIDValidity != 2222 {
		t.Fatalf("deliver after conversion: %+v, %v", ds, err)
	}
	accounts[0].mailboxes[1].info.UIDNext = 4
	accounts[0].mailboxes[1].msgs = append(accounts[0].mailboxes[1].msgs, v1Msg{3, nil, "Subject: new\r\n\r\nnew\r\n", clock.Now()})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	after := indexFiles(t, dir)
	if len(after) != len(before)+1 || !slices.Equal(slices.DeleteFunc(slices.Clone(after), func(f string) bool { return !slices.Contains(before, f) }), before) {
		t.Errorf("files after conversion %q, before %q", after, before)
	}

	// Again, converted already; and once more after an unclean shutdown.
	for _, clean := range []bool{true, false} {
		if !clean {
			os.Remove(filepath.Join(dir, cleanMarker))
		}
		s, err := Open(dir, Options{Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		checkAccounts(t, s, accounts)
		s.Close()
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.DB().Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, u64key(schemaVersion+1)) })
	s.Close()
	_, err = Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("open with schema version %d: %v", schemaVersion+1, err)
	}
}

// TestIndexBytesPerAccount guards the flat account bucket: an empty account
// must share index pages with others.
func TestIndexBytesPerAccount(t *testing.T) {
	s, _, _ := openTest(t, 0)
	s.DB().NoSync = true
	hash := s.pw.hash("password123", Chosen)
	const n = 1000
	for i := range n {
		rec := AccountRecord{Hash: hash, Created: 1700000000}
		if _, _, err := s.idx.CreateAccount(fmt.Sprintf("user%04d@x.test", i), rec, MailboxInfo{UIDValidity: 1, UIDNext: 1}); err != nil {
			t.Fatal(err)
		}
	}
	st := s.DB().Stats()
	s.DB().View(func(tx *bolt.Tx) error {
		used := tx.Size() - int64(st.FreePageN+st.PendingPageN)*int64(s.DB().Info().PageSize)
		t.Logf("%d accounts: %d bytes of index pages in use, %d per account", n, used, used/n)
		if used/n > 1024 {
			t.Errorf("%d bytes of index per empty account, want at most 1 KiB", used/n)
		}
		return nil
	})
}

// A conversion cut short (here: some accounts converted by hand, no
// version recorded) goes on where it stopped, over several batches.
func TestOpenResumesConversion(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC)
	var accounts []v1Account
	for i := range 2*migrateBatch + 3 {
		accounts = append(accounts, v1Account{
			id:   uint64(i + 1),
			addr: fmt.Sprintf("user%04d@x.test", i),
			mailboxes: []v1Mailbox{{"INBOX", MailboxInfo{UIDValidity: 1, UIDNext: 2, Subscribed: true}, []v1Msg{
				{1, nil, "Subject: hi\r\n\r\nhi\r\n", now},
			}}},
			meta: map[string]string{"\x00/private/n": strconv.Itoa(i)},
		})
	}
	writeV1(t, dir, accounts, "not a hash")
	before := indexFiles(t, dir)
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for id := uint64(1); id <= 10; id += 3 {
			if err := flattenAccount(tx.Bucket(bucketData).Bucket(u64key(id))); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := indexFiles(t, dir); !slices.Equal(got, before) {
		t.Fatalf("half-converted index names %d files, want %d", len(got), len(before))
	}

	s, err := Open(dir, Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := dbFiles(t, s.DB()); !slices.Equal(got, before) {
		t.Fatalf("converted index names %d files, want %d", len(got), len(before))
	}
	for i, a := range accounts {
		v, err := s.GetPrivate(a.addr, "", "/private/n")
		if err != nil || v == nil || *v != strconv.Itoa(i) {
			t.Fatalf("%s: metadata %v (%v)", a.addr, v, err)
		}
		if got := uids(t, s, &Account{ID: a.id, Addr: a.addr}); !slices.Equal(got, []imap.UID{1}) {
			t.Fatalf("%s: messages %v", a.addr, got)
		}
	}
}

// Mailbox names that start one another's keep their messages apart through
// RENAME and DELETE.
func TestRenameDeleteKeepPrefixNamesApart(t *testing.T) {
	s, _, _ := openTest(t, 0)
	acc := account(t, s, "alice@x.test")
	c := imapLogin(t, serveIMAP(t, s), acc.Addr)
	msg := "Subject: x\r\n\r\nx\r\n"
	for _, name := range []string{"a", "ab", "a/b"} {
		if err := c.Create(name, nil).Wait(); err != nil {
			t.Fatal(err)
		}
		for range len(name) {
			app := c.Append(name, int64(len(msg)), nil)
			app.Write([]byte(msg))
			app.Close()
			if _, err := app.Wait(); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func(name string) int {
		t.Helper()
		st, err := c.Status(name, &imap.StatusOptions{NumMessages: true, UIDNext: true}).Wait()
		if err != nil {
			return -1
		}
		return int(*st.NumMessages)
	}
	if err := c.Rename("a", "z", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if a, z, ab, ab2 := count("a"), count("z"), count("ab"), count("a/b"); a != -1 || z != 1 || ab != 2 || ab2 != 3 {
		t.Fatalf("after RENAME a z: a %d, z %d, ab %d, a/b %d messages", a, z, ab, ab2)
	}
	if err := c.Delete("ab").Wait(); err != nil {
		t.Fatal(err)
	}
	if z, ab, ab2 := count("z"), count("ab"), count("a/b"); z != 1 || ab != -1 || ab2 != 3 {
		t.Fatalf("after DELETE ab: z %d, ab %d, a/b %d messages", z, ab, ab2)
	}
	if used, _, _ := s.Quota(acc.Addr); used != int64(4*len(msg)) {
		t.Errorf("used %d bytes, want %d", used, 4*len(msg))
	}
	if files := dbFiles(t, s.DB()); len(files) != 4 {
		t.Errorf("index names %d files, want 4: %q", len(files), files)
	}
}
