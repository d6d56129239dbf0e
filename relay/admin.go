package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/internal/safeio"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/relay/invite"
	"github.com/chatrelay/chatrelay/relay/queue"
)

// ControlSocket is the control socket's name in the data directory.
const ControlSocket = "control.sock"

// ControlSocketPath is where the relay with dataDir listens for admin
// commands.
func ControlSocketPath(dataDir string) string { return filepath.Join(dataDir, ControlSocket) }

// Queue is what the admin commands need of the outbound queue
// (*queue.Queue has it).
type Queue interface {
	List() ([]queue.Item, error)
	Retry(id string) error
	Drop(id string) error
	Stats() (depth int, oldest time.Time)
}

// AdminOptions are the parts of the running relay the control socket
// reports on besides the Server itself.
type AdminOptions struct {
	// Queue is the outbound queue; nil: queue commands say there is none.
	Queue Queue
	// Invites holds invite tokens; nil: one is opened on the store's DB.
	Invites *invite.Store
	// RecentErrors gives the last error log lines for status
	// (*metrics.RecentErrors has it); may be nil.
	RecentErrors interface{ Lines() []string }
	// Started is when the relay started; zero means now.
	Started time.Time
	// Version is the binary's version, for status.
	Version string
}

type admin struct {
	s      *Server
	opts   AdminOptions
	backup sync.Mutex // one backup at a time
}

// ServeControl listens on the control socket at path and answers admin
// commands until stop is called. A stale socket file left by a relay that
// died is replaced.
func (s *Server) ServeControl(path string, opts AdminOptions) (stop func(), err error) {
	if opts.Started.IsZero() {
		opts.Started = s.now()
	}
	if opts.Invites == nil {
		if opts.Invites, err = invite.Open(s.store.DB(), s.now); err != nil {
			return nil, err
		}
	}
	a := &admin{s: s, opts: opts}
	cs := control.NewServer(s.log)
	for cmd, h := range map[string]control.HandlerFunc{
		control.CmdStatus:        a.status,
		control.CmdAccountList:   a.accountList,
		control.CmdAccountAdd:    a.accountAdd,
		control.CmdAccountDelete: a.accountDelete,
		control.CmdAccountBlock:  a.accountBlock(true),
		control.CmdAccountUnblk:  a.accountBlock(false),
		control.CmdAccountPasswd: a.accountPasswd,
		control.CmdInviteCreate:  a.inviteCreate,
		control.CmdInviteList:    a.inviteList,
		control.CmdInviteRevoke:  a.inviteRevoke,
		control.CmdQueueList:     a.queueList,
		control.CmdQueueRetry:    a.queueRetry,
		control.CmdQueueDrop:     a.queueDrop,
		control.CmdBackup:        a.runBackup,
		control.CmdProxyShow:     a.proxyShow,
		control.CmdProxyRotate:   a.proxyRotate,
	} {
		cs.Handle(cmd, h)
	}
	if err := cs.Listen(path); err != nil {
		return nil, err
	}
	return func() { cs.Close() }, nil
}

func decodeArgs(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return control.Errorf(control.CodeBadRequest, "missing arguments")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return control.Errorf(control.CodeBadRequest, "bad arguments: %v", err)
	}
	return nil
}

// certStatus is implemented by acme.Manager.
type certStatus interface{ Status() acme.Status }

func (a *admin) status(context.Context, json.RawMessage, func(control.Progress)) (any, error) {
	s := a.s
	now := s.now()
	st := control.Status{
		Version:      a.opts.Version,
		MailDomain:   s.cfg.MailDomain(),
		Registration: s.cfg.Registration,
		DataDir:      s.cfg.DataDir,
		Started:      a.opts.Started,
		Uptime:       control.Duration(now.Sub(a.opts.Started).Round(time.Second)),
		Listeners:    s.Listeners(),
		NewURL:       s.web.baseURL() + "/new",
		DiskFree:     -1,
	}
	if abs, err := filepath.Abs(s.cfg.DataDir); err == nil {
		st.DataDir = abs
	}
	if cs, ok := s.certs.(certStatus); ok {
		c := cs.Status()
		st.Certificate = control.CertStatus{
			Mode: string(c.Mode), Names: c.Names, Issuer: c.Issuer, NotAfter: c.NotAfter,
			SelfSigned: c.SelfSigned, Waiting: c.Waiting, LastError: c.LastError, NextAttempt: c.NextAttempt,
		}
	} else {
		st.Certificate.SelfSigned = s.certs.SelfSigned()
	}
	if a.opts.Queue != nil {
		depth, oldest := a.opts.Queue.Stats()
		st.Queue = &control.QueueStatus{Depth: depth, Oldest: oldest}
	}
	st.Iroh = s.irohStatus(st.Certificate.SelfSigned)
	n, err := s.store.CountAccounts()
	if err != nil {
		return nil, err
	}
	st.Accounts = n
	if free, err := freeDisk(s.cfg.DataDir); err == nil {
		st.DiskFree = free
	}
	if a.opts.RecentErrors != nil {
		st.RecentErrors = a.opts.RecentErrors.Lines()
	}
	st.TURN = s.turnStatus()
	st.Schema = mailbox.SchemaVersion
	st.LastUpgrade = control.ReadUpgrade(s.cfg.DataDir)
	return st, nil
}

func (s *Server) turnStatus() *control.TURNStatus {
	tc := s.cfg.TURN
	if tc.External() {
		return &control.TURNStatus{External: tc.Server}
	}
	if s.turn == nil {
		return nil
	}
	t := s.turn
	ts := t.Stats()
	out := &control.TURNStatus{
		RelayIP: t.RelayIP().String(), MinPort: tc.MinPort, MaxPort: tc.MaxPort,
		Allocations: ts.Allocations, AllocationsTotal: ts.AllocationsTotal,
		BytesIn: ts.BytesIn, BytesOut: ts.BytesOut,
		RefusedAuth: ts.RefusedAuth, RefusedPeer: ts.RefusedPeer, RefusedQuota: ts.RefusedQuota,
		DroppedDatagrams: ts.DroppedPackets,
	}
	if a := t.UDPAddr(); a != nil {
		out.UDP = a.String()
	}
	if a := t.TCPAddr(); a != nil {
		out.TCP = a.String()
	}
	if s.turnHost != "" {
		out.Announced = net.JoinHostPort(s.turnHost, strconv.Itoa(t.Port()))
	}
	return out
}

// irohCertNote is what status says of a relay whose iroh relay core
// cannot use (docs/SECURITY.md, "webxdc realtime and certificates").
const irohCertNote = "Delta Chat (iroh 0.35) accepts an iroh relay only with a certificate from a public CA compiled into it; " +
	"an IP-only or self-signed relay cannot serve webxdc realtime to current Delta Chat versions, which then try n0's public relays"

func (s *Server) irohStatus(selfSigned bool) control.IrohStatus {
	st := control.IrohStatus{Served: s.iroh != nil, Announced: s.IrohRelayURL()}
	if s.iroh == nil {
		return st
	}
	st.Nodes = s.iroh.Nodes()
	ours := s.cfg.IrohRelay == "" || st.Announced == s.ownIrohRelayURL()
	if ours && (s.cfg.IP != "" || selfSigned) {
		st.Note = irohCertNote
	}
	return st
}

func (a *admin) accountList(context.Context, json.RawMessage, func(control.Progress)) (any, error) {
	infos, err := a.s.store.Accounts()
	if err != nil {
		return nil, err
	}
	out := make([]control.Account, 0, len(infos))
	for _, i := range infos {
		out = append(out, control.Account{Addr: i.Addr, Created: i.Created, LastLogin: i.LastLogin, UsedBytes: i.UsedBytes, Blocked: i.Blocked})
	}
	return out, nil
}

// accountError turns store errors into answers the CLI can explain.
func accountError(addr string, err error) error {
	switch {
	case errors.Is(err, mailbox.ErrNoAccount):
		return control.Errorf(control.CodeNotFound, "no account %s", addr)
	case errors.Is(err, mailbox.ErrExists):
		return control.Errorf(control.CodeExists, "account %s already exists", addr)
	}
	return err
}

// checkAdminAddress applies the account rules an admin cannot override:
// our domain and the name alphabet. The admin may pick any name length.
func (a *admin) checkAdminAddress(addr string) error {
	rules := policy.AccountRules{MinNameLen: 1, MaxNameLen: 64}
	if err := rules.CheckNewAccount(addr, "", a.s.cfg.MailDomain()); err != nil {
		return control.Errorf(control.CodeBadRequest, "%s: %v (addresses look like name@%s, name of a-z 0-9 . _ -)", addr, err, a.s.cfg.MailDomain())
	}
	return nil
}

func (a *admin) password(given string) (pw string, generated bool, err error) {
	if given == "" {
		return randomString(24, passwordAlphabet), true, nil
	}
	if n := len([]rune(given)); n < a.s.cfg.MinPasswordLen {
		return "", false, control.Errorf(control.CodeBadRequest, "password too short: %d characters, want at least %d", n, a.s.cfg.MinPasswordLen)
	}
	return given, false, nil
}

// passwordKind is how a password from the admin tools is stored: one the
// relay made has 143 bits of randomness, one the operator typed may not.
func passwordKind(generated bool) mailbox.PasswordKind {
	if generated {
		return mailbox.Generated
	}
	return mailbox.Chosen
}

func (a *admin) accountAdd(_ context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
	var args control.PasswordArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	addr := strings.ToLower(strings.TrimSpace(args.Addr))
	if err := a.checkAdminAddress(addr); err != nil {
		return nil, err
	}
	pw, generated, err := a.password(args.Password)
	if err != nil {
		return nil, err
	}
	if err := a.s.store.CreateAccount(addr, pw, passwordKind(generated)); err != nil {
		return nil, accountError(addr, err)
	}
	a.s.log.Info("account added by admin")
	res := control.PasswordResult{Addr: addr, Generated: generated}
	if generated {
		res.Password = pw
	}
	return res, nil
}

func (a *admin) accountDelete(_ context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
	var args control.AddrArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	addr := strings.ToLower(strings.TrimSpace(args.Addr))
	if _, err := a.s.store.Info(addr); err != nil {
		return nil, accountError(addr, err)
	}
	if err := a.s.store.DeleteAccount(addr); err != nil {
		return nil, accountError(addr, err)
	}
	a.s.log.Info("account deleted by admin")
	return control.AddrArgs{Addr: addr}, nil
}

func (a *admin) accountBlock(blocked bool) control.HandlerFunc {
	return func(_ context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
		var args control.AddrArgs
		if err := decodeArgs(raw, &args); err != nil {
			return nil, err
		}
		addr := strings.ToLower(strings.TrimSpace(args.Addr))
		if err := a.s.store.SetBlocked(addr, blocked); err != nil {
			return nil, accountError(addr, err)
		}
		a.s.log.Info("account blocked state changed by admin", "blocked", blocked)
		return control.AddrArgs{Addr: addr}, nil
	}
}

func (a *admin) accountPasswd(_ context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
	var args control.PasswordArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	addr := strings.ToLower(strings.TrimSpace(args.Addr))
	pw, generated, err := a.password(args.Password)
	if err != nil {
		return nil, err
	}
	if err := a.s.store.SetPassword(addr, pw, passwordKind(generated)); err != nil {
		return nil, accountError(addr, err)
	}
	a.s.log.Info("account password changed by admin")
	res := control.PasswordResult{Addr: addr, Generated: generated}
	if generated {
		res.Password = pw
	}
	return res, nil
}

func (a *admin) inviteView(inv invite.Invite) control.Invite {
	out := control.Invite{
		Token: inv.Token, Uses: inv.Uses, Used: inv.Used, Created: inv.Created, Expires: inv.Expires,
		URL:          "DCACCOUNT:" + a.s.web.baseURL() + "/new?token=" + inv.Token,
		Registration: a.s.cfg.Registration,
	}
	if a.s.certs.SelfSigned() {
		// Core checks the certificate of a DCACCOUNT: URL and fails with
		// UnknownIssuer; the page's button makes a dclogin: code with ic=3.
		out.URL = a.s.web.baseURL() + "/?token=" + inv.Token
		out.SelfSigned = true
	}
	switch err := inv.Check(a.s.now()); {
	case err == nil:
		out.Usable = true
	case errors.Is(err, invite.ErrExpired):
		out.Disabled = "expired"
	case errors.Is(err, invite.ErrUsedUp):
		out.Disabled = "used up"
	}
	return out
}

func (a *admin) inviteCreate(_ context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
	var args control.InviteArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	if args.Uses < 0 || args.TTL < 0 {
		return nil, control.Errorf(control.CodeBadRequest, "uses and expiry must not be negative")
	}
	inv, err := a.opts.Invites.Create(args.Uses, time.Duration(args.TTL))
	if err != nil {
		return nil, err
	}
	a.s.log.Info("invite created by admin", "uses", args.Uses)
	return a.inviteView(inv), nil
}

func (a *admin) inviteList(context.Context, json.RawMessage, func(control.Progress)) (any, error) {
	list, err := a.opts.Invites.List()
	if err != nil {
		return nil, err
	}
	out := make([]control.Invite, 0, len(list))
	for _, inv := range list {
		out = append(out, a.inviteView(inv))
	}
	return out, nil
}

func (a *admin) inviteRevoke(_ context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
	var args control.TokenArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	if err := a.opts.Invites.Revoke(args.Token); err != nil {
		if errors.Is(err, invite.ErrUnknown) {
			return nil, control.Errorf(control.CodeNotFound, "no invite with token %q", args.Token)
		}
		return nil, err
	}
	return args, nil
}

func (a *admin) queue() (Queue, error) {
	if a.opts.Queue == nil {
		return nil, control.Errorf(control.CodeNotFound, "this relay has no outbound queue")
	}
	return a.opts.Queue, nil
}

func (a *admin) queueList(context.Context, json.RawMessage, func(control.Progress)) (any, error) {
	q, err := a.queue()
	if err != nil {
		return nil, err
	}
	items, err := q.List()
	if err != nil {
		return nil, err
	}
	out := make([]control.QueueItem, 0, len(items))
	for _, it := range items {
		v := control.QueueItem{ID: it.ID, From: it.From, Size: it.Size, Created: it.Created, Attempts: it.Attempts, NextAttempt: it.NextAttempt, LastError: it.LastError}
		for _, r := range it.Rcpts {
			if r.Status == queue.Pending {
				v.Rcpts = append(v.Rcpts, r.Addr)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

func (a *admin) queueOp(raw json.RawMessage, op func(Queue, string) error, allowAll bool) (any, error) {
	q, err := a.queue()
	if err != nil {
		return nil, err
	}
	var args control.IDArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	if args.ID == "" && !allowAll {
		return nil, control.Errorf(control.CodeBadRequest, "which queue item? (see `chatrelay queue list`)")
	}
	if err := op(q, args.ID); err != nil {
		if errors.Is(err, queue.ErrNotFound) {
			return nil, control.Errorf(control.CodeNotFound, "no queued message with id %q", args.ID)
		}
		return nil, err
	}
	return args, nil
}

func (a *admin) queueRetry(_ context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
	return a.queueOp(raw, Queue.Retry, true)
}

func (a *admin) queueDrop(_ context.Context, raw json.RawMessage, _ func(control.Progress)) (any, error) {
	return a.queueOp(raw, Queue.Drop, false)
}

func (a *admin) runBackup(ctx context.Context, raw json.RawMessage, progress func(control.Progress)) (any, error) {
	var args control.BackupArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(args.Dir) {
		return nil, control.Errorf(control.CodeBadRequest, "backup directory must be an absolute path")
	}
	if !a.backup.TryLock() {
		return nil, control.Errorf(control.CodeBusy, "a backup is already running")
	}
	defer a.backup.Unlock()
	res, err := a.s.Backup(ctx, args.Dir, func(done, total int) {
		progress(control.Progress{Stage: "files", Done: done, Total: total})
	})
	if err != nil {
		var be *backupError
		if errors.As(err, &be) {
			return nil, control.Errorf(control.CodeBadRequest, "%v", err)
		}
		return nil, err
	}
	return res, nil
}

// The backup layout. The manifest is written last: a directory without
// one is an unfinished backup.
//
//	DIR/manifest.json    format, counts, SHA-256 of index.db
//	DIR/index.db         snapshot of the bbolt index (one read transaction)
//	DIR/msgs/<id>/<file> the message files that snapshot refers to
//	DIR/queue/<id>       the outbound queue's spool files it refers to
//	DIR/files/...        the rest of the data directory: DKIM key,
//	                     certificates, downloads
const (
	backupFormat   = "chatrelay-backup"
	backupVersion  = 1
	manifestName   = "manifest.json"
	indexName      = "index.db"
	msgsDir        = "msgs"
	queueDir       = "queue"
	otherFilesDir  = "files"
	restorePrefix  = ".restore-"
	maxBackupTries = 5
)

// Manifest describes a backup.
type Manifest struct {
	Format      string    `json:"format"`
	Version     int       `json:"version"`
	Created     time.Time `json:"created"`
	MailDomain  string    `json:"mail_domain"`
	IndexSHA256 string    `json:"index_sha256"`
	IndexSize   int64     `json:"index_size"`
	Accounts    int       `json:"accounts"`
	Messages    int       `json:"messages"`
	QueueItems  int       `json:"queue_items"`
	OtherFiles  []string  `json:"other_files"`
}

// backupError is a mistake of the caller (a bad target directory).
type backupError struct{ msg string }

func (e *backupError) Error() string { return e.msg }

// Backup writes a consistent copy of the store into dir while the relay
// runs. dir must be absent or empty and outside the data directory.
//
// The index is copied inside one read transaction (bbolt's tx.WriteTo);
// the files it refers to are hard-linked (or copied, across file systems)
// around it. Message and spool files are immutable once written, are
// created before the index entry that names them and removed only after
// that entry is gone. So every file already present when the snapshot is
// taken survives in the links made before it; files the snapshot names
// that are newer are linked after it, and if one of those has been
// removed meanwhile the snapshot is taken again.
func (s *Server) Backup(ctx context.Context, dir string, progress func(done, total int)) (*control.BackupResult, error) {
	if progress == nil {
		progress = func(int, int) {}
	}
	dataDir, err := filepath.Abs(s.cfg.DataDir)
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	if dir == dataDir || strings.HasPrefix(dir, dataDir+string(filepath.Separator)) {
		return nil, &backupError{fmt.Sprintf("backup directory %s is inside the data directory %s", dir, dataDir)}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, &backupError{fmt.Sprintf("create backup directory: %v", err)}
	}
	if entries, err := os.ReadDir(dir); err != nil {
		return nil, &backupError{fmt.Sprintf("read backup directory: %v", err)}
	} else if len(entries) > 0 {
		return nil, &backupError{fmt.Sprintf("backup directory %s is not empty", dir)}
	}
	b := &backupRun{ctx: ctx, src: dataDir, dst: dir, staged: map[string]bool{}, progress: progress}
	// Every file present now, before the snapshot.
	for _, sub := range []string{msgsDir, queueDir} {
		if err := b.stageAll(sub); err != nil {
			return nil, err
		}
	}
	var snap *snapshot
	for try := 1; ; try++ {
		snap, err = b.snapshot(s.store.DB())
		if err != nil {
			return nil, err
		}
		missing, err := b.linkReferenced(snap)
		if err != nil {
			return nil, err
		}
		if missing == "" {
			break
		}
		if try == maxBackupTries {
			return nil, fmt.Errorf("backup: message file %s vanished %d times in a row; try again when the relay is quieter", missing, try)
		}
	}
	if err := b.pruneUnreferenced(snap); err != nil {
		return nil, err
	}
	others, err := b.copyOtherFiles()
	if err != nil {
		return nil, err
	}
	for d := range b.dirs {
		if err := safeio.SyncDir(d); err != nil {
			return nil, err
		}
	}
	m := Manifest{
		Format: backupFormat, Version: backupVersion, Created: s.now().UTC(), MailDomain: s.cfg.MailDomain(),
		IndexSHA256: snap.sha, IndexSize: snap.size, Accounts: snap.accounts, Messages: len(snap.msgs),
		QueueItems: len(snap.queue), OtherFiles: others,
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := safeio.WriteFile(filepath.Join(dir, manifestName), append(mb, '\n'), 0o600); err != nil {
		return nil, err
	}
	if err := safeio.SyncDir(filepath.Dir(dir)); err != nil {
		return nil, err
	}
	s.log.Info("backup written", "messages", m.Messages, "accounts", m.Accounts)
	return &control.BackupResult{
		Dir: dir, Accounts: m.Accounts, Messages: m.Messages, QueueItems: m.QueueItems,
		OtherFiles: len(others), Bytes: b.bytes + snap.size, IndexSHA256: m.IndexSHA256,
	}, nil
}

type backupRun struct {
	ctx      context.Context
	src, dst string
	staged   map[string]bool     // relative paths linked into dst
	dirs     map[string]struct{} // directories to fsync at the end
	bytes    int64
	done     int
	total    int
	progress func(done, total int)
	lastSent time.Time
}

// snapshot is what one read transaction saw.
type snapshot struct {
	sha      string
	size     int64
	accounts int
	msgs     map[string]bool // "msgs/<id>/<file>"
	queue    map[string]bool // "queue/<id>"
}

func (b *backupRun) tick(n int) {
	b.done += n
	if time.Since(b.lastSent) > 200*time.Millisecond || b.done == b.total {
		b.lastSent = time.Now()
		b.progress(b.done, b.total)
	}
}

func (b *backupRun) mkdir(rel string) error {
	d := filepath.Join(b.dst, rel)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	if b.dirs == nil {
		b.dirs = map[string]struct{}{}
	}
	for ; d != filepath.Dir(b.dst); d = filepath.Dir(d) {
		b.dirs[d] = struct{}{}
	}
	return nil
}

// stageAll links every file under src/sub (one or two levels: msgs/<id>/f,
// queue/f) into dst. Names starting with "." are temporary files.
func (b *backupRun) stageAll(sub string) error {
	var rels []string
	err := filepath.WalkDir(filepath.Join(b.src, sub), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
			rel, _ := filepath.Rel(b.src, p)
			rels = append(rels, rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("backup: list %s: %w", sub, err)
	}
	b.total += len(rels)
	for _, rel := range rels {
		if err := b.ctx.Err(); err != nil {
			return err
		}
		if err := b.link(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		b.tick(1)
	}
	return nil
}

// link hard-links (or copies) src/rel to dst/rel.
func (b *backupRun) link(rel string) error {
	if b.staged[rel] {
		return nil
	}
	if err := b.mkdir(filepath.Dir(rel)); err != nil {
		return err
	}
	n, err := linkOrCopy(filepath.Join(b.src, rel), filepath.Join(b.dst, rel))
	if err != nil {
		return err
	}
	b.bytes += n
	b.staged[rel] = true
	return nil
}

// linkOrCopy hard-links src to dst, or copies it (fsynced) when the two
// are on different file systems. It returns the file's size.
func linkOrCopy(src, dst string) (int64, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return 0, err
	}
	err = os.Link(src, dst)
	if err == nil {
		return fi.Size(), nil
	}
	if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EMLINK) {
		return 0, err
	}
	return fi.Size(), copyFile(src, dst, fi.Mode().Perm())
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}

// snapshot copies the index in one read transaction and reads, in the same
// transaction, which files it refers to.
func (b *backupRun) snapshot(db *bolt.DB) (*snapshot, error) {
	snap := &snapshot{msgs: map[string]bool{}, queue: map[string]bool{}}
	path := filepath.Join(b.dst, indexName)
	err := db.View(func(tx *bolt.Tx) error {
		err := safeio.WriteFrom(path, 0o600, func(w io.Writer) error {
			h := sha256.New()
			n, err := tx.WriteTo(io.MultiWriter(w, h))
			snap.size = n
			snap.sha = hex.EncodeToString(h.Sum(nil))
			return err
		})
		if err != nil {
			return err
		}
		return readReferences(tx, snap)
	})
	if err != nil {
		return nil, fmt.Errorf("backup: snapshot index: %w", err)
	}
	return snap, nil
}

// readReferences lists the files an index refers to.
func readReferences(tx *bolt.Tx, snap *snapshot) error {
	if acc := tx.Bucket([]byte("accounts")); acc != nil {
		snap.accounts = acc.Stats().KeyN
	}
	err := mailbox.ForEachFile(tx, func(accountID uint64, file string) error {
		// The name is joined to paths of the backup and the data directory.
		if file == "" || strings.ContainsAny(file, "/\\") || file == "." || file == ".." {
			return fmt.Errorf("index: account %d: bad message file name %q", accountID, file)
		}
		snap.msgs[filepath.Join(msgsDir, strconv.FormatUint(accountID, 10), file)] = true
		return nil
	})
	if err != nil {
		return err
	}
	if q := tx.Bucket([]byte("queue")); q != nil {
		return q.ForEach(func(k, _ []byte) error {
			snap.queue[filepath.Join(queueDir, string(k))] = true
			return nil
		})
	}
	return nil
}

// linkReferenced links the files the snapshot names that were not staged
// before it. It returns the first that no longer exists, if any.
func (b *backupRun) linkReferenced(snap *snapshot) (missing string, err error) {
	var todo []string
	for _, set := range []map[string]bool{snap.msgs, snap.queue} {
		for rel := range set {
			if !b.staged[rel] {
				todo = append(todo, rel)
			}
		}
	}
	b.total += len(todo)
	for _, rel := range todo {
		if err := b.link(rel); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return rel, nil
			}
			return "", err
		}
		b.tick(1)
	}
	return "", nil
}

// pruneUnreferenced removes staged files the final snapshot does not name
// (removed from the index before it was taken).
func (b *backupRun) pruneUnreferenced(snap *snapshot) error {
	for rel := range b.staged {
		if snap.msgs[rel] || snap.queue[rel] {
			continue
		}
		if err := os.Remove(filepath.Join(b.dst, rel)); err != nil {
			return err
		}
		delete(b.staged, rel)
	}
	// Account directories left empty.
	entries, _ := os.ReadDir(filepath.Join(b.dst, msgsDir))
	for _, e := range entries {
		os.Remove(filepath.Join(b.dst, msgsDir, e.Name())) // fails unless empty
	}
	return nil
}

// skipOther tells which top-level entries of the data directory are not
// "other files": the store, the queue, sockets and leftovers of restores.
func skipOther(name string) bool {
	switch name {
	case indexName, msgsDir, queueDir, "tmp", ControlSocket:
		return true
	}
	return strings.HasPrefix(name, restorePrefix)
}

// copyOtherFiles copies the regular files of the data directory that are
// not the store (keys, certificates, downloads) into dst/files.
func (b *backupRun) copyOtherFiles() ([]string, error) {
	var out []string
	err := filepath.WalkDir(b.src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(b.src, p)
		if rel == "." {
			return nil
		}
		if !strings.Contains(rel, string(filepath.Separator)) && skipOther(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if err := b.mkdir(filepath.Join(otherFilesDir, filepath.Dir(rel))); err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if err := copyFile(p, filepath.Join(b.dst, otherFilesDir, rel), fi.Mode().Perm()); err != nil {
			return fmt.Errorf("backup: copy %s: %w", rel, err)
		}
		b.bytes += fi.Size()
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	return out, err
}

// VerifyBackup checks a backup without changing anything: the manifest,
// the index's hash and integrity, and that every file the index names is
// there. It returns the manifest.
func VerifyBackup(dir string) (*Manifest, error) {
	mb, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s has no %s: not a chatrelay backup, or an unfinished one", dir, manifestName)
		}
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("backup manifest: %w", err)
	}
	if m.Format != backupFormat || m.Version != backupVersion {
		return nil, fmt.Errorf("backup manifest: format %q version %d, this chatrelay reads %q version %d", m.Format, m.Version, backupFormat, backupVersion)
	}
	index := filepath.Join(dir, indexName)
	sum, size, err := fileSHA256(index)
	if err != nil {
		return nil, fmt.Errorf("backup index: %w", err)
	}
	if sum != m.IndexSHA256 || size != m.IndexSize {
		return nil, fmt.Errorf("backup index %s does not match the manifest (sha256 %s, %d bytes; manifest says %s, %d bytes)", index, sum, size, m.IndexSHA256, m.IndexSize)
	}
	db, err := bolt.Open(index, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("backup index: %w", err)
	}
	defer db.Close()
	snap := &snapshot{msgs: map[string]bool{}, queue: map[string]bool{}}
	err = db.View(func(tx *bolt.Tx) error {
		var first error
		for err := range tx.Check() {
			// Drain the channel: the checker stops only at its end.
			if first == nil {
				first = err
			}
		}
		if first != nil {
			return fmt.Errorf("index check: %w", first)
		}
		return readReferences(tx, snap)
	})
	if err != nil {
		return nil, fmt.Errorf("backup index: %w", err)
	}
	if snap.accounts != m.Accounts || len(snap.msgs) != m.Messages || len(snap.queue) != m.QueueItems {
		return nil, fmt.Errorf("backup index holds %d accounts, %d messages, %d queued; the manifest says %d, %d, %d",
			snap.accounts, len(snap.msgs), len(snap.queue), m.Accounts, m.Messages, m.QueueItems)
	}
	for _, set := range []map[string]bool{snap.msgs, snap.queue} {
		for rel := range set {
			if fi, err := os.Stat(filepath.Join(dir, rel)); err != nil || !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("backup is missing %s, which its index refers to", rel)
			}
		}
	}
	for _, rel := range m.OtherFiles {
		if _, err := os.Stat(filepath.Join(dir, otherFilesDir, filepath.FromSlash(rel))); err != nil {
			return nil, fmt.Errorf("backup is missing %s/%s", otherFilesDir, rel)
		}
	}
	return &m, nil
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Restore replaces the store in dataDir with the backup in backupDir. The
// relay must be stopped: the index lock is taken for the whole swap. The
// backup is verified first; then the new index, messages and queue are
// prepared next to the old ones, the old ones moved aside, the new ones
// moved in, and the old ones removed. Other files (keys, certificates)
// are put back only where missing, so a restore does not undo a key
// rotation; say is told about each step.
func Restore(dataDir, backupDir string, say func(format string, args ...any)) error {
	if say == nil {
		say = func(string, ...any) {}
	}
	m, err := VerifyBackup(backupDir)
	if err != nil {
		return err
	}
	say("backup verified: %d accounts, %d messages, %d queued, taken %s for %s", m.Accounts, m.Messages, m.QueueItems, m.Created.Format(time.RFC3339), m.MailDomain)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	// Hold the lock the relay takes, shared, so that a relay cannot start
	// in the middle of the swap, and so that a running one stops us.
	live := filepath.Join(dataDir, indexName)
	if _, err := os.Stat(live); err == nil {
		db, err := bolt.Open(live, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if errors.Is(err, bolt.ErrTimeout) {
			return fmt.Errorf("the store in %s is locked: %w", dataDir, ErrRelayRunning)
		} else if err != nil {
			return fmt.Errorf("open current store: %w", err)
		}
		defer db.Close()
	}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	stage := filepath.Join(dataDir, restorePrefix+"new-"+stamp)
	old := filepath.Join(dataDir, restorePrefix+"old-"+stamp)
	if err := os.Mkdir(stage, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := copyFile(filepath.Join(backupDir, indexName), filepath.Join(stage, indexName), 0o600); err != nil {
		return fmt.Errorf("restore index: %w", err)
	}
	n := 0
	for _, sub := range []string{msgsDir, queueDir} {
		k, err := linkTree(filepath.Join(backupDir, sub), filepath.Join(stage, sub))
		if err != nil {
			return fmt.Errorf("restore %s: %w", sub, err)
		}
		n += k
	}
	if err := safeio.SyncDir(stage); err != nil {
		return err
	}
	say("prepared %d files in %s", n, stage)

	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	names := []string{indexName, msgsDir, queueDir}
	var movedAside []string
	undo := func() {
		for _, name := range movedAside {
			os.RemoveAll(filepath.Join(dataDir, name))
			os.Rename(filepath.Join(old, name), filepath.Join(dataDir, name))
		}
		safeio.SyncDir(dataDir)
	}
	for _, name := range names {
		err := os.Rename(filepath.Join(dataDir, name), filepath.Join(old, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			undo()
			return fmt.Errorf("move aside %s: %w", name, err)
		}
		movedAside = append(movedAside, name)
	}
	for _, name := range names {
		err := os.Rename(filepath.Join(stage, name), filepath.Join(dataDir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			undo()
			return fmt.Errorf("move in %s: %w", name, err)
		}
	}
	if err := safeio.SyncDir(dataDir); err != nil {
		return err
	}
	if len(movedAside) > 0 {
		say("replaced %s (the previous ones are removed)", strings.Join(movedAside, ", "))
	}
	if err := os.RemoveAll(old); err != nil {
		say("could not remove the previous store in %s: %v; remove it by hand", old, err)
	}
	// Half-written incoming files of the old store.
	if entries, err := os.ReadDir(filepath.Join(dataDir, "tmp")); err == nil {
		for _, e := range entries {
			os.Remove(filepath.Join(dataDir, "tmp", e.Name()))
		}
	}
	restored, kept := 0, 0
	for _, rel := range m.OtherFiles {
		dst := filepath.Join(dataDir, filepath.FromSlash(rel))
		if _, err := os.Stat(dst); err == nil {
			kept++
			continue
		}
		src := filepath.Join(backupDir, otherFilesDir, filepath.FromSlash(rel))
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		if err := copyFile(src, dst, fi.Mode().Perm()); err != nil {
			return fmt.Errorf("restore %s: %w", rel, err)
		}
		if err := safeio.SyncDir(filepath.Dir(dst)); err != nil {
			return err
		}
		restored++
	}
	if len(m.OtherFiles) > 0 {
		say("other files (keys, certificates): %d restored, %d already present and kept", restored, kept)
	}
	say("restored %d accounts and %d messages into %s", m.Accounts, m.Messages, dataDir)
	return nil
}

// linkTree hard-links (or copies) every regular file under src into dst,
// keeping the layout, and fsyncs the directories. A missing src is an
// empty tree.
func linkTree(src, dst string) (int, error) {
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == src && errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipAll
			}
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if _, err := linkOrCopy(p, target); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return n, err
	}
	// Directories bottom-up are not needed: each is synced once its
	// entries exist.
	err = filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipAll
			}
			return err
		}
		if d.IsDir() {
			return safeio.SyncDir(p)
		}
		return nil
	})
	return n, err
}

func (a *admin) proxyInfo() (any, error) {
	p := a.s.proxy
	if p == nil {
		return nil, control.Errorf(control.CodeNotFound, "the proxy is off: set [proxy] listen in the config (or install --proxy, serve --dev --proxy)")
	}
	keys := p.current()
	info := control.Proxy{URL: p.url(), Method: a.s.cfg.Proxy.Method, Listen: a.s.Listeners()["proxy"]}
	if len(keys) > 0 {
		info.OldKeys = len(keys) - 1
	}
	return info, nil
}

func (a *admin) proxyShow(context.Context, json.RawMessage, func(control.Progress)) (any, error) {
	return a.proxyInfo()
}

func (a *admin) proxyRotate(context.Context, json.RawMessage, func(control.Progress)) (any, error) {
	if a.s.proxy == nil {
		return a.proxyInfo()
	}
	if err := a.s.proxy.rotate(); err != nil {
		return nil, control.Errorf(control.CodeInternal, "rotate the proxy key: %v", err)
	}
	a.s.log.Info("proxy key rotated", "grace_hours", a.s.cfg.Proxy.RotateGraceHours)
	return a.proxyInfo()
}
