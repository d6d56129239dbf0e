package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"aead.dev/minisign"

	"github.com/chatrelay/chatrelay/internal/safeio"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/release"
)

// Service starts and stops the relay: systemd in production (Systemd),
// a child process in tests.
type Service interface {
	Stop(ctx context.Context) error
	Start(ctx context.Context) error
}

// Systemd runs the relay's unit with systemctl.
type Systemd struct {
	Unit   string // UnitName when empty
	Runner Runner // ExecRunner when nil
}

func (s Systemd) run(ctx context.Context, args ...string) error {
	r := s.Runner
	if r == nil {
		r = ExecRunner{}
	}
	unit := s.Unit
	if unit == "" {
		unit = UnitName
	}
	return r.Run(ctx, Command{Args: append(append([]string{"systemctl"}, args...), unit)})
}

func (s Systemd) Stop(ctx context.Context) error { return s.run(ctx, "stop") }

// Start clears a failed state first (a unit that failed to start too often
// is otherwise refused), then starts the unit; with Type=notify systemctl
// returns once the relay said READY=1 or failed.
func (s Systemd) Start(ctx context.Context) error {
	_ = s.run(ctx, "reset-failed")
	return s.run(ctx, "start")
}

// UpgradeOptions for Upgrade.
type UpgradeOptions struct {
	File    string // the new release binary
	SigFile string // its signature; File.minisig when empty
	Key     minisign.PublicKey

	Binary  string // the installed binary, replaced; BinaryPath when empty
	DataDir string // the relay's data directory (index and upgrade record)
	// ReleasesDir gets the installed release file and its signature (and
	// SHA256SUMS with its signature when beside File) once the new version
	// runs, for /downloads; the previous version's files there go. Empty:
	// nothing is copied.
	ReleasesDir string
	Service     Service

	// IMAPAddr and SubmissionAddr must greet over TLS within Timeout
	// (90s when zero) after the start, else the upgrade is rolled back;
	// "" skips that check (the listener is off).
	IMAPAddr, SubmissionAddr string
	Timeout                  time.Duration

	// AllowDowngrade goes back to an older index schema: the newest index
	// backup of that schema (from an earlier upgrade) replaces the index,
	// and what changed since is lost.
	AllowDowngrade bool

	// Running is what the relay's control socket says, nil when it is
	// not running; the installed binary is asked for its version then.
	Running *control.Status
	// Target is the GOOS/GOARCH this host runs (runtime's when empty).
	Target string
	Out    io.Writer
}

// ErrRolledBack means the new version did not come up and the previous
// one runs again.
var ErrRolledBack = errors.New("upgrade rolled back")

// upgrade is one run of Upgrade: the options, the record that ends in
// the data directory, and the paths it works with.
type upgrade struct {
	o                UpgradeOptions
	rec              control.Upgrade
	prev, next       string // Binary.prev, Binary.new
	index, backupDir string
	fromSchema       uint64
}

// Upgrade replaces the installed relay binary by a verified release file
// (SPEC section 13): it checks the signature and the target, refuses a
// downgrade of the index schema unless AllowDowngrade, keeps the installed
// binary as Binary.prev, stops the relay, backs up the index, swaps the
// binary by a rename, starts the relay and waits until IMAP and submission
// answer. If they do not, it puts the previous binary back (and the index
// backup, if the new version converted the index), starts that and
// returns ErrRolledBack. Every step is printed to Out; the outcome is
// recorded in DataDir for `chatrelay status`.
func Upgrade(ctx context.Context, o UpgradeOptions) error {
	if o.Binary == "" {
		o.Binary = BinaryPath
	}
	if o.Timeout <= 0 {
		o.Timeout = 90 * time.Second
	}
	if o.Target == "" {
		o.Target = runtime.GOOS + "/" + runtime.GOARCH
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	u := &upgrade{
		o:         o,
		prev:      o.Binary + ".prev",
		next:      o.Binary + ".new",
		index:     filepath.Join(o.DataDir, mailbox.IndexFile),
		backupDir: filepath.Join(o.DataDir, "upgrade"),
	}
	u.rec.Time = time.Now().UTC()
	err := u.run(ctx)
	switch {
	case err == nil:
		u.rec.Outcome = control.UpgradeDone
	case errors.Is(err, ErrRolledBack):
		u.rec.Outcome = control.UpgradeRolledBack
		u.rec.Reason = err.Error()
	case u.rec.Outcome == "":
		// Nothing was changed yet.
		u.rec.Outcome = control.UpgradeRefused
		u.rec.Reason = err.Error()
	default:
		u.rec.Outcome = control.UpgradeFailed
		u.rec.Reason = err.Error()
	}
	if werr := control.WriteUpgrade(o.DataDir, &u.rec); werr != nil {
		u.step("could not record the outcome in %s: %v", o.DataDir, werr)
	}
	u.step("outcome: %s", u.rec.Outcome)
	return err
}

func (u *upgrade) step(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	u.rec.Steps = append(u.rec.Steps, line)
	fmt.Fprintf(u.o.Out, "==> %s\n", line)
}

func (u *upgrade) run(ctx context.Context) error {
	o := u.o
	v, err := release.VerifyFile(o.Key, o.File, o.SigFile)
	if err != nil {
		return err
	}
	u.rec.To = v.Version
	u.step("verified %s: version %s, %s, index schema %d, sha256 %s", filepath.Base(o.File), v.Version, v.Target, v.Schema, v.SHA256)
	if v.Target != o.Target {
		return fmt.Errorf("%s is built for %s, this machine is %s", filepath.Base(o.File), v.Target, o.Target)
	}
	if v.Schema == 0 {
		return fmt.Errorf("%s names no index schema: it is not a chatrelay binary", filepath.Base(o.File))
	}
	if o.IMAPAddr == "" && o.SubmissionAddr == "" {
		return errors.New("neither IMAP (listen.imaps) nor submission (listen.submissions) is on: an upgrade could not tell whether the new version is up")
	}

	// What runs now. A relay from before status reported its schema
	// says 0: the index file tells, once the relay has stopped.
	if o.Running != nil {
		u.rec.From = o.Running.Version
		u.fromSchema = o.Running.Schema
	} else {
		u.rec.From = installedVersion(ctx, o.Binary)
		if u.fromSchema, err = mailbox.IndexSchema(o.DataDir, 5*time.Second); err != nil {
			return fmt.Errorf("read the index schema: %w", err)
		}
	}
	u.step("installed: version %s, index schema %d", u.rec.From, u.fromSchema)
	if _, err := u.checkSchema(v, false); err != nil {
		return err
	}

	// Stage the new binary beside the old one, so the swap is a rename
	// on one file system.
	if err := copyFile(o.File, u.next, 0o755); err != nil {
		return fmt.Errorf("stage the new binary: %w", err)
	}
	u.step("staged %s", u.next)

	u.rec.Outcome = control.UpgradeRunning
	u.step("stopping the relay")
	if err := o.Service.Stop(ctx); err != nil {
		os.Remove(u.next)
		u.rec.Outcome = ""
		return fmt.Errorf("stop the relay: %w", err)
	}
	// Nothing has changed yet: on a refusal from here the previous
	// version starts again.
	undo := func(err error) error {
		os.Remove(u.next)
		u.step("%v; starting the previous version again", err)
		if serr := o.Service.Start(ctx); serr != nil {
			return fmt.Errorf("%w; and the relay did not start again: %v", err, serr)
		}
		u.rec.Outcome = ""
		return err
	}
	// The index file is the truth, now that no relay holds it.
	disk, err := mailbox.IndexSchema(o.DataDir, 5*time.Second)
	if err != nil {
		return undo(fmt.Errorf("read the index schema: %w", err))
	}
	if disk != u.fromSchema {
		u.step("the index is at schema %d", disk)
		u.fromSchema = disk
	}
	restore, err := u.checkSchema(v, true)
	if err != nil {
		return undo(err)
	}
	if u.fromSchema != 0 {
		if u.rec.IndexBak, err = u.backupIndex(); err != nil {
			return undo(fmt.Errorf("back up the index: %w", err))
		}
		u.step("index backed up to %s", u.rec.IndexBak)
	}
	if restore != "" {
		if err := u.restoreIndex(restore); err != nil {
			return u.rollback(ctx, fmt.Errorf("put back index %s: %w", restore, err))
		}
		u.step("index restored from %s", restore)
	}
	if err := u.swap(); err != nil {
		return u.rollback(ctx, err)
	}
	u.step("installed %s as %s; the previous binary is %s", v.Version, o.Binary, u.prev)

	u.step("starting the relay")
	if err := u.startAndWait(ctx); err != nil {
		return u.rollback(ctx, fmt.Errorf("version %s did not come up: %w", v.Version, err))
	}
	u.step("version %s answers on IMAP %s and submission %s", v.Version, o.IMAPAddr, o.SubmissionAddr)
	if o.ReleasesDir != "" {
		if err := u.offer(v); err != nil {
			u.step("could not offer the release under /downloads: %v", err)
		} else {
			u.step("offered under /downloads from %s", o.ReleasesDir)
		}
	}
	return nil
}

// offer copies the release file, its signature and the SHA256SUMS beside
// it into ReleasesDir, and removes release files of other versions.
func (u *upgrade) offer(v *release.Verified) error {
	o := u.o
	if err := os.MkdirAll(o.ReleasesDir, 0o755); err != nil {
		return err
	}
	name := v.FileName()
	sig := o.SigFile
	if sig == "" {
		sig = o.File + release.SigSuffix
	}
	keep := map[string]bool{name: true, name + release.SigSuffix: true}
	copies := [][2]string{{o.File, name}, {sig, name + release.SigSuffix}}
	sums := filepath.Join(filepath.Dir(o.File), release.SumsFile)
	if _, err := os.Stat(sums + release.SigSuffix); err == nil {
		copies = append(copies, [2]string{sums, release.SumsFile}, [2]string{sums + release.SigSuffix, release.SumsFile + release.SigSuffix})
		keep[release.SumsFile], keep[release.SumsFile+release.SigSuffix] = true, true
	}
	for _, c := range copies {
		if err := copyFile(c[0], filepath.Join(o.ReleasesDir, c[1]), 0o644); err != nil {
			return err
		}
	}
	old, _ := filepath.Glob(filepath.Join(o.ReleasesDir, "chatrelay-*"))
	for _, f := range old {
		if base := filepath.Base(f); !keep[base] && !strings.HasPrefix(base, "chatrelay-"+v.Version+"-") {
			os.Remove(f)
		}
	}
	return nil
}

// checkSchema refuses a downgrade across an index schema change unless
// AllowDowngrade, and then returns the index backup to put back. say
// prints what it decided (once, on the final check).
func (u *upgrade) checkSchema(v *release.Verified, say bool) (restore string, err error) {
	o := u.o
	switch {
	case u.fromSchema != 0 && v.Schema < u.fromSchema:
		bak := u.newestBackup(v.Schema)
		if !o.AllowDowngrade {
			hint := "no index backup of that schema is kept here, so going back needs a `chatrelay backup` made under that version"
			if bak != "" {
				hint = "--allow-downgrade puts back the index backup " + bak + " (taken before the upgrade from it); mail and accounts changed since then are lost"
			}
			return "", fmt.Errorf("version %s reads index schema %d, but the index is at schema %d and an older chatrelay cannot read it: %s", v.Version, v.Schema, u.fromSchema, hint)
		}
		if bak == "" {
			return "", fmt.Errorf("no index backup of schema %d in %s: restore a `chatrelay backup` made under version %s instead", v.Schema, u.backupDir, v.Version)
		}
		if say {
			u.step("downgrade asked for: the index goes back to %s", bak)
		}
		return bak, nil
	case u.fromSchema != 0 && v.Schema > u.fromSchema && say:
		u.step("version %s converts the index from schema %d to %d at its first start; the backup keeps schema %d", v.Version, u.fromSchema, v.Schema, u.fromSchema)
	}
	return "", nil
}

// swap keeps the installed binary as Binary.prev (a hard link, so the
// binary is in place at every moment) and renames the new one over it.
func (u *upgrade) swap() error {
	os.Remove(u.prev)
	if err := os.Link(u.o.Binary, u.prev); err != nil {
		if err := copyFile(u.o.Binary, u.prev, 0o755); err != nil {
			return fmt.Errorf("keep the installed binary: %w", err)
		}
	}
	if err := os.Rename(u.next, u.o.Binary); err != nil {
		return fmt.Errorf("install the new binary: %w", err)
	}
	return safeio.SyncDir(filepath.Dir(u.o.Binary))
}

func (u *upgrade) startAndWait(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, u.o.Timeout)
	defer cancel()
	if err := u.o.Service.Start(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if u.o.IMAPAddr == "" && u.o.SubmissionAddr == "" {
		return errors.New("neither IMAP (listen.imaps) nor submission (listen.submissions) is on: nothing to tell whether the relay is up")
	}
	if u.o.IMAPAddr != "" {
		if err := WaitIMAP(ctx, u.o.IMAPAddr, "", time.Second); err != nil {
			return err
		}
	}
	if u.o.SubmissionAddr != "" {
		return WaitSubmission(ctx, u.o.SubmissionAddr, "", time.Second)
	}
	return nil
}

// rollback stops the failed version, puts the previous binary back and,
// when the index is no longer at the schema it had, the index backup;
// then starts the previous version. cause is why.
func (u *upgrade) rollback(ctx context.Context, cause error) error {
	o := u.o
	u.step("%v", cause)
	u.step("rolling back to %s", u.rec.From)
	if err := o.Service.Stop(ctx); err != nil {
		u.step("stop: %v (going on)", err)
	}
	if _, err := os.Stat(u.prev); err == nil {
		if err := os.Rename(u.prev, o.Binary); err != nil {
			return fmt.Errorf("%v; rollback failed: put back %s: %w (do it by hand: mv %s %s)", cause, u.prev, err, u.prev, o.Binary)
		}
		safeio.SyncDir(filepath.Dir(o.Binary))
		u.step("previous binary back in %s", o.Binary)
	}
	os.Remove(u.next)
	if u.rec.IndexBak != "" {
		now, err := mailbox.IndexSchema(o.DataDir, 5*time.Second)
		if err != nil || now != u.fromSchema {
			if err := u.restoreIndex(u.rec.IndexBak); err != nil {
				return fmt.Errorf("%v; rollback failed: restore the index from %s: %w", cause, u.rec.IndexBak, err)
			}
			u.step("index schema was %d, restored the backup at schema %d", now, u.fromSchema)
		} else {
			u.step("index unchanged (schema %d)", now)
		}
	}
	u.step("starting %s again", u.rec.From)
	if err := u.startAndWait(ctx); err != nil {
		return fmt.Errorf("%v; rollback failed: the previous version does not come up either: %w", cause, err)
	}
	u.step("%s answers again", u.rec.From)
	return fmt.Errorf("%w to %s: %v", ErrRolledBack, u.rec.From, cause)
}

// backupIndex copies the index (the relay is stopped) into
// DATA/upgrade/index-schemaN-TIME.db and keeps the three newest.
func (u *upgrade) backupIndex() (string, error) {
	if err := os.MkdirAll(u.backupDir, 0o700); err != nil {
		return "", err
	}
	name := fmt.Sprintf("index-schema%d-%s.db", u.fromSchema, u.rec.Time.Format("20060102T150405Z"))
	dst := filepath.Join(u.backupDir, name)
	if err := copyFile(u.index, dst, 0o600); err != nil {
		return "", err
	}
	u.pruneBackups()
	return dst, nil
}

// pruneBackups keeps the three newest index backups and the newest of
// each schema, which a downgrade to that schema needs.
func (u *upgrade) pruneBackups() {
	files, _ := filepath.Glob(filepath.Join(u.backupDir, "index-schema*-*.db"))
	stamp := func(f string) string { return f[strings.LastIndex(f, "-")+1:] }
	slices.SortFunc(files, func(a, b string) int { return strings.Compare(stamp(b), stamp(a)) }) // newest first
	seen := map[string]bool{}
	for i, f := range files {
		schema := strings.TrimPrefix(filepath.Base(f), "index-schema")
		schema = schema[:strings.Index(schema, "-")]
		if i >= 3 && seen[schema] {
			os.Remove(f)
		}
		seen[schema] = true
	}
}

// newestBackup is the newest index backup of schema, "" if none.
func (u *upgrade) newestBackup(schema uint64) string {
	files, _ := filepath.Glob(filepath.Join(u.backupDir, fmt.Sprintf("index-schema%d-*.db", schema)))
	if len(files) == 0 {
		return ""
	}
	slices.Sort(files) // same schema: by time
	return files[len(files)-1]
}

// restoreIndex puts a backup in place of the index, owned like the index
// it replaces (the relay's user, not root who runs the upgrade).
func (u *upgrade) restoreIndex(bak string) error {
	tmp := u.index + ".restore"
	if err := copyFile(bak, tmp, 0o600); err != nil {
		return err
	}
	if fi, err := os.Stat(u.index); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			if err := os.Chown(tmp, int(st.Uid), int(st.Gid)); err != nil {
				os.Remove(tmp)
				return err
			}
		}
	}
	if err := os.Rename(tmp, u.index); err != nil {
		os.Remove(tmp)
		return err
	}
	return safeio.SyncDir(filepath.Dir(u.index))
}

// copyFile copies src to dst through a temp file, fsynced and renamed.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return safeio.WriteFrom(dst, perm, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

// installedVersion asks the installed binary (`chatrelay version`).
func installedVersion(ctx context.Context, binary string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "version").Output()
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(out))
	if len(f) == 2 && f[0] == "chatrelay" {
		return f[1]
	}
	return "unknown"
}
