package mailbox

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/chatrelay/chatrelay/internal/testclock"
)

func openTest(t *testing.T, quota int64) (*Store, *testclock.Clock, string) {
	t.Helper()
	dir := t.TempDir()
	clock := testclock.New(time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC))
	s, err := Open(dir, Options{QuotaBytes: quota, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, clock, dir
}

func account(t *testing.T, s *Store, addr string) *Account {
	t.Helper()
	acc, err := s.Login(addr, "password123", func(string, string) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return acc
}

// put stores a message of size bytes dated age ago, with flags.
func put(t *testing.T, s *Store, acc *Account, size int, age time.Duration, flags ...imap.Flag) imap.UID {
	t.Helper()
	in, err := s.NewIncoming()
	if err != nil {
		t.Fatal(err)
	}
	in.Write([]byte(strings.Repeat("x", size)))
	in.Date = s.now().Add(-age)
	in.Flags = flags
	ds, err := in.Deliver([]*Account{acc}, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	return ds[0].UID
}

func uids(t *testing.T, s *Store, acc *Account) []imap.UID {
	t.Helper()
	refs, err := s.messages(acc.ID)
	if err != nil {
		t.Fatal(err)
	}
	var out []imap.UID
	for _, r := range refs {
		out = append(out, r.uid)
	}
	return out
}

func equalUIDs(a, b []imap.UID) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[imap.UID]bool{}
	for _, u := range a {
		m[u] = true
	}
	for _, u := range b {
		if !m[u] {
			return false
		}
	}
	return true
}

const day = 24 * time.Hour

func TestExpireOldMessages(t *testing.T) {
	s, _, _ := openTest(t, 0)
	acc := account(t, s, "abcdefghi@x.test")
	put(t, s, acc, 100, 21*day)
	keep1 := put(t, s, acc, 100, 19*day)
	keep2 := put(t, s, acc, 100, time.Hour)
	st, err := s.Expire(DefaultLifecycle())
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 1 || st.Bytes != 100 {
		t.Fatalf("stats %+v", st)
	}
	if got := uids(t, s, acc); !equalUIDs(got, []imap.UID{keep1, keep2}) {
		t.Fatalf("left %v", got)
	}
	if used, _, _ := s.Quota(acc.Addr); used != 200 {
		t.Fatalf("used %d after expiry, want 200", used)
	}
}

func TestExpireLargeReadMessages(t *testing.T) {
	s, _, _ := openTest(t, 0)
	acc := account(t, s, "abcdefghi@x.test")
	big := 200*1024 + 1
	put(t, s, acc, big, 8*day, imap.FlagSeen)
	unseen := put(t, s, acc, big, 8*day)
	small := put(t, s, acc, 1000, 8*day, imap.FlagSeen)
	recent := put(t, s, acc, big, 6*day, imap.FlagSeen)
	if _, err := s.Expire(DefaultLifecycle()); err != nil {
		t.Fatal(err)
	}
	if got := uids(t, s, acc); !equalUIDs(got, []imap.UID{unseen, small, recent}) {
		t.Fatalf("left %v", got)
	}
}

func TestExpireIdleAccounts(t *testing.T) {
	s, clock, dir := openTest(t, 0)
	idle := account(t, s, "idleidlei@x.test")
	put(t, s, idle, 100, 0)
	active := account(t, s, "activeact@x.test")
	clock.Advance(89 * day)
	if _, err := s.Login(active.Addr, "password123", nil); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * day)
	st, err := s.Expire(DefaultLifecycle())
	if err != nil {
		t.Fatal(err)
	}
	if st.Accounts != 1 {
		t.Fatalf("stats %+v", st)
	}
	if ok, _ := s.AccountExists(idle.Addr); ok {
		t.Fatal("idle account kept")
	}
	if ok, _ := s.AccountExists(active.Addr); !ok {
		t.Fatal("active account deleted")
	}
	if _, err := os.Stat(filepath.Join(dir, "msgs", "1")); !os.IsNotExist(err) {
		t.Fatalf("idle account's files kept: %v", err)
	}
	// Its cached login is gone too.
	if _, err := s.Login(idle.Addr, "password123", nil); err == nil {
		t.Fatal("deleted account still logs in")
	}
}

func TestQuotaTrim(t *testing.T) {
	s, _, _ := openTest(t, 1000)
	acc := account(t, s, "abcdefghi@x.test")
	var old []imap.UID
	for i := range 6 {
		old = append(old, put(t, s, acc, 100, time.Duration(10-i)*day))
	}
	young := []imap.UID{put(t, s, acc, 100, time.Hour), put(t, s, acc, 100, 2*time.Hour)}
	// 800 of 1000 bytes: past 75 %, trim to 70 %.
	n, b, err := s.TrimQuota(acc.Addr, DefaultLifecycle())
	if err != nil || n != 1 || b != 100 {
		t.Fatalf("trimmed %d (%d bytes), %v; want the oldest one", n, b, err)
	}
	if got := uids(t, s, acc); !equalUIDs(got, append(old[1:], young...)) {
		t.Fatalf("left %v", got)
	}
	// Messages younger than 24 h are never trimmed, even past the mark.
	s2, _, _ := openTest(t, 1000)
	acc2 := account(t, s2, "abcdefghi@x.test")
	for range 9 {
		put(t, s2, acc2, 100, time.Hour)
	}
	if n, _, _ := s2.TrimQuota(acc2.Addr, DefaultLifecycle()); n != 0 {
		t.Fatalf("trimmed %d young messages", n)
	}
	if ok, _ := s2.QuotaFits(acc2.Addr, 101); ok {
		t.Fatal("a message past the quota fits")
	}
}

// TestExpireTrimsQuota: the retention pass trims an account past the quota
// mark (the expiry of old messages first counts towards it), and leaves an
// account under it alone.
func TestExpireTrimsQuota(t *testing.T) {
	s, _, _ := openTest(t, 1000)
	full := account(t, s, "fullfullf@x.test")
	put(t, s, full, 100, 21*day) // expired by age
	var old []imap.UID
	for i := range 8 {
		old = append(old, put(t, s, full, 100, time.Duration(10-i)*day))
	}
	light := account(t, s, "lightligh@x.test")
	lightUIDs := []imap.UID{put(t, s, light, 300, 10*day), put(t, s, light, 300, 9*day)}
	st, err := s.Expire(DefaultLifecycle())
	if err != nil {
		t.Fatal(err)
	}
	// 900 bytes: the expired one goes, then 800 is past 75 %: down to 700.
	if st.Messages != 2 || st.Bytes != 200 {
		t.Fatalf("stats %+v, want the expired message and the oldest other", st)
	}
	if got := uids(t, s, full); !equalUIDs(got, old[1:]) {
		t.Fatalf("left %v", got)
	}
	if got := uids(t, s, light); !equalUIDs(got, lightUIDs) {
		t.Fatalf("an account at 60 %% lost messages: left %v", got)
	}
}

func TestOpenSweepsOrphans(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	acc := account(t, s, "abcdefghi@x.test")
	put(t, s, acc, 10, 0)
	s.Close()
	if _, err := os.Stat(filepath.Join(dir, cleanMarker)); err != nil {
		t.Fatalf("clean close left no marker: %v", err)
	}
	// What a crash can leave: a temp file, and a message file whose index
	// entry was never committed; and a crash writes no clean marker.
	os.Remove(filepath.Join(dir, cleanMarker))
	os.WriteFile(filepath.Join(dir, "tmp", "in-123"), []byte("x"), 0o600)
	orphan := filepath.Join(dir, "msgs", "1", "orphan")
	os.WriteFile(orphan, []byte("x"), 0o600)
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(filepath.Join(dir, cleanMarker)); !os.IsNotExist(err) {
		t.Fatal("clean marker kept while the store is open")
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatal("orphan message file kept")
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
		t.Fatal("temp file kept")
	}
	if got := uids(t, s, acc); len(got) != 1 {
		t.Fatalf("referenced message lost: %v", got)
	}
	files, _ := os.ReadDir(filepath.Join(dir, "msgs", "1"))
	if len(files) != 1 {
		t.Fatalf("%d files for 1 message", len(files))
	}
}

// Deliver commits the index while the message file is being fsynced; a
// crash in between (never acknowledged) can leave an entry whose file is
// short or missing. The sweep after an unclean shutdown drops such entries
// and their bytes from the quota, and keeps whole messages.
func TestOpenDropsEntriesWithoutWholeFile(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	acc := account(t, s, "abcdefghi@x.test")
	other := account(t, s, "bcdefghij@x.test")
	keep := put(t, s, acc, 100, 0)
	short := put(t, s, acc, 200, 0)
	gone := put(t, s, acc, 300, 0)
	put(t, s, other, 400, 0)
	files := map[imap.UID]string{}
	err = s.Index().ForEachMessage(acc.ID, "INBOX", func(_ string, uid imap.UID, r *MessageRecord) error {
		files[uid] = r.File
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	os.Remove(filepath.Join(dir, cleanMarker))
	accDir := filepath.Join(dir, "msgs", strconv.FormatUint(acc.ID, 10))
	if err := os.Truncate(filepath.Join(accDir, files[short]), 50); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(accDir, files[gone])); err != nil {
		t.Fatal(err)
	}
	// The other account's directory is gone altogether.
	if err := os.RemoveAll(filepath.Join(dir, "msgs", strconv.FormatUint(other.ID, 10))); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := uids(t, s, acc); len(got) != 1 || got[0] != keep {
		t.Fatalf("messages after the sweep: %v, want only %d", got, keep)
	}
	if got := uids(t, s, other); len(got) != 0 {
		t.Fatalf("other account's messages after the sweep: %v, want none", got)
	}
	for addr, want := range map[string]int64{acc.Addr: 100, other.Addr: 0} {
		if used, _, err := s.Quota(addr); err != nil || used != want {
			t.Errorf("%s: used %d (%v), want %d", addr, used, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(accDir, files[short])); !os.IsNotExist(err) {
		t.Error("short file kept")
	}
	// UIDs are not reused.
	if next := put(t, s, acc, 10, 0); next <= gone {
		t.Errorf("new UID %d reuses one up to %d", next, gone)
	}
}

func TestSecondOpenFailsWhileLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second open: %v", err)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	r := MessageRecord{Size: 123456, Date: time.Unix(1700000000, 42), File: "abc", Flags: []imap.Flag{imap.FlagSeen, "$Custom"}}
	var got MessageRecord
	if err := got.decode(r.encode()); err != nil {
		t.Fatal(err)
	}
	if got.Size != r.Size || !got.Date.Equal(r.Date) || got.File != r.File || len(got.Flags) != 2 || got.Flags[1] != "$Custom" {
		t.Fatalf("got %+v", got)
	}
	for _, bad := range [][]byte{nil, {2}, {1, 0x80}, r.encode()[:5]} {
		if err := got.decode(bad); err == nil {
			t.Errorf("decoded %x", bad)
		}
	}
}
