package relay

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
	"github.com/chatrelay/chatrelay/relay/backup"
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
	// Invites holds invite tokens: the relay's own store, which its web
	// page checks tokens against; required.
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
		return nil, errors.New("control socket: no invite store given")
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
	src := backup.Source{DB: a.s.store.DB(), DataDir: a.s.cfg.DataDir, MailDomain: a.s.cfg.MailDomain()}
	res, err := backup.Write(ctx, src, args.Dir, a.s.now(), func(done, total int) {
		progress(control.Progress{Stage: "files", Done: done, Total: total})
	})
	if err != nil {
		var te *backup.TargetError
		if errors.As(err, &te) {
			return nil, control.Errorf(control.CodeBadRequest, "%v", err)
		}
		return nil, err
	}
	a.s.log.Info("backup written", "messages", res.Messages, "accounts", res.Accounts)
	return &control.BackupResult{
		Dir: res.Dir, Accounts: res.Accounts, Messages: res.Messages, QueueItems: res.QueueItems,
		OtherFiles: res.OtherFiles, Bytes: res.Bytes, IndexSHA256: res.IndexSHA256,
	}, nil
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
