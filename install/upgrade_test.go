package install

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/release"
)

// fakeService counts starts and stops and runs a hook at each start; it
// never answers IMAP, so every start looks failed unless up says so.
type fakeService struct {
	starts, stops int
	onStart       func(n int) error
}

func (f *fakeService) Stop(context.Context) error { f.stops++; return nil }
func (f *fakeService) Start(context.Context) error {
	f.starts++
	if f.onStart != nil {
		return f.onStart(f.starts)
	}
	return nil
}

type upgradeFixture struct {
	dir, bin, data string
	pub            minisign.PublicKey
	priv           minisign.PrivateKey
	svc            *fakeService
	out            bytes.Buffer
}

func newUpgradeFixture(t *testing.T) *upgradeFixture {
	f := &upgradeFixture{dir: t.TempDir(), svc: &fakeService{}}
	var err error
	f.pub, f.priv, err = minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.bin = filepath.Join(f.dir, "bin", "chatrelay")
	f.data = filepath.Join(f.dir, "data")
	os.MkdirAll(filepath.Dir(f.bin), 0o755)
	os.WriteFile(f.bin, []byte("old binary"), 0o755)
	st, err := mailbox.Open(f.data, mailbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	return f
}

// release writes a signed "binary" with m.
func (f *upgradeFixture) release(t *testing.T, m release.Meta) string {
	path := filepath.Join(f.dir, m.Name)
	os.WriteFile(path, []byte("new binary "+m.Version), 0o755)
	if err := release.SignFile(f.priv, path, m); err != nil {
		t.Fatal(err)
	}
	return path
}

func (f *upgradeFixture) options(file string) UpgradeOptions {
	return UpgradeOptions{
		File: file, Key: f.pub, Binary: f.bin, DataDir: f.data, Service: f.svc,
		// Nothing listens here: a start is judged failed after Timeout.
		IMAPAddr: "127.0.0.1:1", SubmissionAddr: "127.0.0.1:1", Timeout: 2 * time.Second,
		Running: &control.Status{Version: "1.0.0", Schema: mailbox.SchemaVersion},
		Target:  "linux/amd64", Out: &f.out,
	}
}

func (f *upgradeFixture) binary(t *testing.T) string {
	b, err := os.ReadFile(f.bin)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func setSchema(t *testing.T, data string, v uint64) {
	db, err := bolt.Open(filepath.Join(data, mailbox.IndexFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), binary.BigEndian.AppendUint64(nil, v))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func meta(version string, schema uint64) release.Meta {
	return release.Meta{Name: "chatrelay-" + version, Version: version, Target: "linux/amd64", Schema: schema, Time: 1}
}

// A refused upgrade changes nothing: same binary, no staged file, the
// relay never stopped; the record says refused and why.
func TestUpgradeRefusesAndChangesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		prep func(f *upgradeFixture, o *UpgradeOptions)
		want string
	}{
		{"schema downgrade", func(f *upgradeFixture, o *UpgradeOptions) {
			o.File = f.release(t, meta("0.9.0", mailbox.SchemaVersion-1))
		}, "an older chatrelay cannot read it"},
		{"schema downgrade allowed but no backup", func(f *upgradeFixture, o *UpgradeOptions) {
			o.File = f.release(t, meta("0.9.0", mailbox.SchemaVersion-1))
			o.AllowDowngrade = true
		}, "no index backup of schema"},
		{"other target", func(f *upgradeFixture, o *UpgradeOptions) {
			m := meta("2.0.0", mailbox.SchemaVersion)
			m.Target = "linux/arm64"
			o.File = f.release(t, m)
		}, "built for linux/arm64, this machine is linux/amd64"},
		{"flipped byte", func(f *upgradeFixture, o *UpgradeOptions) {
			o.File = f.release(t, meta("2.0.0", mailbox.SchemaVersion))
			b, _ := os.ReadFile(o.File)
			b[0] ^= 1
			os.WriteFile(o.File, b, 0o755)
		}, "changed after it was signed"},
		{"unsigned", func(f *upgradeFixture, o *UpgradeOptions) {
			o.File = f.release(t, meta("2.0.0", mailbox.SchemaVersion))
			os.Remove(o.File + release.SigSuffix)
		}, "not signed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newUpgradeFixture(t)
			o := f.options("")
			tc.prep(f, &o)
			err := Upgrade(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if got := f.binary(t); got != "old binary" || f.svc.stops+f.svc.starts != 0 {
				t.Errorf("binary %q, %d stops, %d starts after a refusal", got, f.svc.stops, f.svc.starts)
			}
			if _, err := os.Stat(f.bin + ".new"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("staged binary left: %v", err)
			}
			rec := control.ReadUpgrade(f.data)
			if rec == nil || rec.Outcome != control.UpgradeRefused || !strings.Contains(rec.Reason, tc.want) {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

// A new version that converts the index and then fails: the previous
// binary and the index backup (at the old schema) come back.
func TestUpgradeRollsBackConvertedIndex(t *testing.T) {
	f := newUpgradeFixture(t)
	next := mailbox.SchemaVersion + 1
	o := f.options(f.release(t, meta("2.0.0", next)))
	f.svc.onStart = func(n int) error {
		if n == 1 {
			// The new version converts the index, then dies.
			if f.binary(t) != "new binary 2.0.0" {
				t.Errorf("first start runs %q", f.binary(t))
			}
			setSchema(t, f.data, next)
			return nil
		}
		// The rollback starts the old binary on the old index.
		if got := f.binary(t); got != "old binary" {
			t.Errorf("rollback starts %q", got)
		}
		if s, err := mailbox.IndexSchema(f.data, time.Second); s != mailbox.SchemaVersion || err != nil {
			t.Errorf("rollback starts on index schema %d (%v)", s, err)
		}
		return errors.New("the old one fails too, here")
	}
	err := Upgrade(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "rollback failed: the previous version does not come up") {
		t.Fatalf("err %v", err)
	}
	if f.svc.starts != 2 {
		t.Errorf("%d starts, want 2", f.svc.starts)
	}
	rec := control.ReadUpgrade(f.data)
	if rec == nil || rec.Outcome != control.UpgradeFailed || rec.From != "1.0.0" || rec.To != "2.0.0" || rec.IndexBak == "" {
		t.Errorf("record %+v", rec)
	}
	if !strings.Contains(f.out.String(), "restored the backup at schema") {
		t.Errorf("output does not say the index was restored:\n%s", f.out.String())
	}
}

// A downgrade across a schema change, asked for, puts back the index
// backup of that schema taken by the earlier upgrade.
func TestUpgradeDowngradeRestoresBackup(t *testing.T) {
	f := newUpgradeFixture(t)
	// The index is at a newer schema; a backup at ours is kept from the
	// upgrade that converted it.
	next := mailbox.SchemaVersion + 1
	bakDir := filepath.Join(f.data, "upgrade")
	os.MkdirAll(bakDir, 0o700)
	idx, _ := os.ReadFile(filepath.Join(f.data, mailbox.IndexFile))
	bak := filepath.Join(bakDir, "index-schema2-20260101T000000Z.db")
	os.WriteFile(bak, idx, 0o600)
	setSchema(t, f.data, next)

	o := f.options(f.release(t, meta("1.0.0", mailbox.SchemaVersion)))
	o.Running = &control.Status{Version: "2.0.0", Schema: next}
	o.AllowDowngrade = true
	f.svc.onStart = func(n int) error {
		if s, _ := mailbox.IndexSchema(f.data, time.Second); n == 1 && s != mailbox.SchemaVersion {
			t.Errorf("the downgraded binary starts on schema %d", s)
		}
		return errors.New("no listeners in this test")
	}
	err := Upgrade(context.Background(), o)
	if err == nil {
		t.Fatal("no error")
	}
	if !strings.Contains(f.out.String(), "index restored from "+bak) {
		t.Errorf("output:\n%s", f.out.String())
	}
	// The rollback put the newer index back for the newer binary.
	if s, _ := mailbox.IndexSchema(f.data, time.Second); s != next {
		t.Errorf("after the rollback the index is at schema %d, want %d", s, next)
	}
}

// A running relay that does not report its schema: the index file is
// read once the relay stopped, and a downgrade found then is refused with
// the previous version started again, its binary untouched.
func TestUpgradeChecksIndexAfterStop(t *testing.T) {
	f := newUpgradeFixture(t)
	setSchema(t, f.data, mailbox.SchemaVersion+1)
	o := f.options(f.release(t, meta("2.0.0", mailbox.SchemaVersion)))
	o.Running = &control.Status{Version: "1.5.0"} // no schema
	err := Upgrade(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "an older chatrelay cannot read it") {
		t.Fatalf("err %v", err)
	}
	if f.svc.stops != 1 || f.svc.starts != 1 || f.binary(t) != "old binary" {
		t.Errorf("%d stops, %d starts, binary %q", f.svc.stops, f.svc.starts, f.binary(t))
	}
	if _, err := os.Stat(f.bin + ".new"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staged binary left: %v", err)
	}
	if rec := control.ReadUpgrade(f.data); rec == nil || rec.Outcome != control.UpgradeRefused {
		t.Errorf("record %+v", rec)
	}
}

func TestSystemdService(t *testing.T) {
	rec := &Recorder{}
	s := Systemd{Runner: rec}
	s.Stop(context.Background())
	s.Start(context.Background())
	var got []string
	for _, c := range rec.Commands {
		got = append(got, strings.Join(c.Args, " "))
	}
	want := "systemctl stop chatrelay.service|systemctl reset-failed chatrelay.service|systemctl start chatrelay.service"
	if strings.Join(got, "|") != want {
		t.Errorf("commands %q, want %q", got, want)
	}
}

// install offers a release file carried in with its signature, under the
// name it was signed with; a file that does not verify is not offered.
func TestInstallOffersVerifiedRelease(t *testing.T) {
	f := newUpgradeFixture(t)
	m := meta("2.0.0", mailbox.SchemaVersion)
	m.Name = "chatrelay-2.0.0-linux-amd64"
	file := f.release(t, m)
	carried := filepath.Join(f.dir, "chatrelay") // renamed on the way
	os.Rename(file, carried)
	os.Rename(file+release.SigSuffix, carried+release.SigSuffix)
	dir := filepath.Join(f.dir, "releases")
	key := func() (minisign.PublicKey, error) { return f.pub, nil }

	msg, err := offerRelease(carried, dir, key)
	if err != nil || !strings.Contains(msg, m.Name) {
		t.Fatalf("offer: %q %v", msg, err)
	}
	for _, n := range []string{m.Name, m.Name + release.SigSuffix} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s not offered: %v", n, err)
		}
	}
	if _, err := release.VerifyFile(f.pub, filepath.Join(dir, m.Name), ""); err != nil {
		t.Errorf("the offered copy does not verify: %v", err)
	}

	b, _ := os.ReadFile(carried)
	os.WriteFile(carried, append(b, 'x'), 0o755)
	os.RemoveAll(dir)
	msg, err = offerRelease(carried, dir, key)
	if err != nil || !strings.HasPrefix(msg, "not offered") {
		t.Errorf("tampered: %q %v", msg, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a tampered file was offered")
	}
	msg, _ = offerRelease(carried, dir, release.CompiledKey)
	if !strings.Contains(msg, "no release key") {
		t.Errorf("without a key: %q", msg)
	}
}

func TestPruneBackupsKeepsNewestOfEachSchema(t *testing.T) {
	dir := t.TempDir()
	u := &upgrade{backupDir: dir}
	for _, n := range []string{
		"index-schema1-20250101T000000Z.db", "index-schema1-20250201T000000Z.db",
		"index-schema2-20250301T000000Z.db", "index-schema2-20250401T000000Z.db",
		"index-schema2-20250501T000000Z.db", "index-schema2-20250601T000000Z.db",
		"index-schema10-20250701T000000Z.db",
	} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	u.pruneBackups()
	got, _ := filepath.Glob(filepath.Join(dir, "*.db"))
	for i := range got {
		got[i] = filepath.Base(got[i])
	}
	want := "index-schema1-20250201T000000Z.db index-schema10-20250701T000000Z.db index-schema2-20250501T000000Z.db index-schema2-20250601T000000Z.db"
	if strings.Join(got, " ") != want {
		t.Errorf("kept %v, want %s", got, want)
	}
	if u.newestBackup(2) != filepath.Join(dir, "index-schema2-20250601T000000Z.db") {
		t.Errorf("newest schema 2: %s", u.newestBackup(2))
	}
}
