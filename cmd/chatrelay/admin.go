package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/backup"
	"github.com/chatrelay/chatrelay/relay/control"
)

// adminCmds are the commands that talk to the running relay through its
// control socket (SPEC section 10), and restore, which needs it stopped.
func adminCmds() []*cobra.Command {
	return []*cobra.Command{statusCmd(), accountCmd(), inviteCmd(), queueCmd(), backupCmd(), restoreCmd(), proxyCmd()}
}

// target finds the relay's data directory the way serve does: --data,
// else data_dir from --config, else the default of --dev or production.
type target struct {
	data, config string
	dev          bool
}

func (t *target) flags(cmd *cobra.Command) {
	fl := cmd.PersistentFlags()
	fl.StringVar(&t.data, "data", "", "data directory of the relay (default /var/lib/chatrelay, or ./chatrelay-data with --dev)")
	fl.StringVar(&t.config, "config", "", "config file of the relay (its data_dir is used)")
	fl.BoolVar(&t.dev, "dev", false, "the relay runs with serve --dev")
}

func (t *target) dataDir(cmd *cobra.Command) (string, error) {
	cfg := relay.Default()
	if t.dev {
		cfg = relay.DevDefault()
	}
	if t.config != "" {
		if err := cfg.LoadFile(t.config); err != nil {
			return "", err
		}
	}
	if cmd.Flags().Changed("data") {
		cfg.DataDir = t.data
	}
	return filepath.Abs(cfg.DataDir)
}

// devHint, for a command that found no relay, says whether a dev relay
// runs where --dev would look.
func (t *target) devHint(cmd *cobra.Command, ctx context.Context) string {
	if t.dev || cmd.Flags().Changed("data") || t.config != "" {
		return ""
	}
	dir, err := filepath.Abs(relay.DevDefault().DataDir)
	if err != nil {
		return ""
	}
	if control.Call(ctx, relay.ControlSocketPath(dir), control.CmdStatus, nil, nil, nil) == nil {
		return fmt.Sprintf("; a dev relay runs with data in %s: add --dev", dir)
	}
	return ""
}

// stopHint and startHint say how the relay is stopped and started: a dev
// relay runs in a terminal, a production one under systemd.
func (t *target) stopHint() string {
	if t.dev {
		return "Ctrl-C where `chatrelay serve --dev` runs"
	}
	return "systemctl stop chatrelay"
}

func (t *target) startHint(dataDir string) string {
	if t.dev {
		return "chatrelay serve --dev --data " + dataDir
	}
	return "systemctl start chatrelay"
}

// call runs one command on the relay, turning "nothing listens" into
// advice.
func (t *target) call(cmd *cobra.Command, name string, args, result any, progress func(control.Progress)) error {
	dir, err := t.dataDir(cmd)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
	defer stop()
	err = control.Call(ctx, relay.ControlSocketPath(dir), name, args, result, progress)
	if errors.Is(err, control.ErrNotRunning) {
		return fmt.Errorf("no relay is running with data dir %s (is `chatrelay serve` running?)%s", dir, t.devHint(cmd, ctx))
	}
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("no permission to reach the relay in %s: run as the relay's user or root", dir)
	}
	return err
}

func statusCmd() *cobra.Command {
	var t target
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the running relay is doing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st control.Status
			if err := t.call(cmd, control.CmdStatus, nil, &st, nil); err != nil {
				// A relay that is down may be so after an upgrade:
				// say what that did.
				if dir, derr := t.dataDir(cmd); derr == nil {
					if u := control.ReadUpgrade(dir); u != nil {
						printUpgrade(cmd.ErrOrStderr(), u)
					}
				}
				return err
			}
			printStatus(cmd.OutOrStdout(), &st, time.Now())
			return nil
		},
	}
	t.flags(cmd)
	return cmd
}

func printStatus(out io.Writer, st *control.Status, now time.Time) {
	fmt.Fprintf(out, "chatrelay %s serving %s, up %s\n", st.Version, st.MailDomain, time.Duration(st.Uptime))
	fmt.Fprintf(out, "registration: %s\n", st.Registration)
	fmt.Fprintf(out, "data dir:     %s (%s free)\n", st.DataDir, humanBytes(st.DiskFree))
	fmt.Fprintf(out, "accounts:     %d\n", st.Accounts)
	if q := st.Queue; q == nil {
		fmt.Fprintf(out, "queue:        none\n")
	} else if q.Depth == 0 {
		fmt.Fprintf(out, "queue:        empty\n")
	} else {
		fmt.Fprintf(out, "queue:        %d waiting, oldest %s old\n", q.Depth, now.Sub(q.Oldest).Round(time.Second))
	}
	c := st.Certificate
	switch {
	case c.SelfSigned && len(c.Waiting) > 0:
		fmt.Fprintf(out, "certificate:  self-signed while waiting for ACME (%s)", strings.Join(c.Waiting, ", "))
		if c.LastError != "" {
			fmt.Fprintf(out, ": %s", c.LastError)
		}
		if !c.NextAttempt.IsZero() {
			fmt.Fprintf(out, "; next try in %s", c.NextAttempt.Sub(now).Round(time.Second))
		}
		fmt.Fprintln(out)
	case c.SelfSigned:
		fmt.Fprintf(out, "certificate:  self-signed (%s)\n", strings.Join(c.Names, ", "))
	default:
		fmt.Fprintf(out, "certificate:  %s from %s, valid until %s\n", strings.Join(c.Names, ", "), c.Issuer, c.NotAfter.Format("2006-01-02"))
		if c.LastError != "" {
			fmt.Fprintf(out, "              last renewal failed: %s\n", c.LastError)
		}
	}
	switch i := st.Iroh; {
	case i.Announced != "" && i.Served:
		fmt.Fprintf(out, "iroh relay:   %s (built-in, %d nodes)\n", i.Announced, i.Nodes)
	case i.Announced != "":
		fmt.Fprintf(out, "iroh relay:   %s\n", i.Announced)
	case i.Served:
		fmt.Fprintf(out, "iroh relay:   built-in, not announced (%d nodes)\n", i.Nodes)
	default:
		fmt.Fprintf(out, "iroh relay:   off\n")
	}
	if st.Iroh.Note != "" {
		fmt.Fprintf(out, "              %s\n", st.Iroh.Note)
	}
	fmt.Fprintln(out, "listeners:")
	for _, name := range []string{"imaps", "imap", "submissions", "submission", "smtp", "https", "http"} {
		if a, ok := st.Listeners[name]; ok {
			fmt.Fprintf(out, "  %-12s %s\n", name, a)
		}
	}
	printTURN(out, st.TURN)
	if st.LastUpgrade != nil {
		printUpgrade(out, st.LastUpgrade)
	}
	if len(st.RecentErrors) == 0 {
		fmt.Fprintln(out, "recent errors: none")
	} else {
		fmt.Fprintln(out, "recent errors:")
		for _, l := range st.RecentErrors {
			fmt.Fprintf(out, "  %s\n", l)
		}
	}
}

// printUpgrade shows the last upgrade's outcome, with the reason when it
// did not end on the new version.
func printUpgrade(out io.Writer, u *control.Upgrade) {
	fmt.Fprintf(out, "last upgrade: %s -> %s on %s: %s\n", u.From, u.To, u.Time.UTC().Format("2006-01-02 15:04 UTC"), u.Outcome)
	if u.Reason != "" {
		fmt.Fprintf(out, "              %s\n", u.Reason)
	}
	if u.IndexBak != "" && u.Outcome != control.UpgradeRefused {
		fmt.Fprintf(out, "              index backup: %s\n", u.IndexBak)
	}
}

func printTURN(out io.Writer, t *control.TURNStatus) {
	switch {
	case t == nil:
		fmt.Fprintln(out, "turn:         off")
		return
	case t.External != "":
		fmt.Fprintf(out, "turn:         external, %s\n", t.External)
		return
	}
	announced := t.Announced
	if announced == "" {
		announced = "not announced"
	}
	fmt.Fprintf(out, "turn:         %s (udp %s, tcp %s), relay %s ports %d-%d\n", announced, orNone(t.UDP), orNone(t.TCP), t.RelayIP, t.MinPort, t.MaxPort)
	fmt.Fprintf(out, "              %d allocations now, %d since start; relayed %s in, %s out\n",
		t.Allocations, t.AllocationsTotal, humanBytes(int64(t.BytesIn)), humanBytes(int64(t.BytesOut)))
	fmt.Fprintf(out, "              refused: %d credentials, %d peers, %d over caps; %d datagrams over bandwidth\n",
		t.RefusedAuth, t.RefusedPeer, t.RefusedQuota, t.DroppedDatagrams)
}

func orNone(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

func humanBytes(n int64) string {
	if n < 0 {
		return "unknown"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func accountCmd() *cobra.Command {
	var t target
	cmd := &cobra.Command{Use: "account", Short: "List, add, delete, block accounts, set passwords"}
	t.flags(cmd)

	list := &cobra.Command{
		Use: "list", Short: "List accounts", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var accs []control.Account
			if err := t.call(cmd, control.CmdAccountList, nil, &accs, nil); err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ADDRESS\tCREATED\tLAST LOGIN\tUSED\tBLOCKED")
			for _, a := range accs {
				blocked := ""
				if a.Blocked {
					blocked = "yes"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", a.Addr, a.Created.Format("2006-01-02"), a.LastLogin, humanBytes(a.UsedBytes), blocked)
			}
			w.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "%d accounts\n", len(accs))
			return nil
		},
	}

	var addStdin bool
	add := &cobra.Command{
		Use: "add ADDRESS", Short: "Add an account and print its password", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a := control.PasswordArgs{Addr: args[0]}
			if addStdin {
				pw, err := readPassword(cmd.InOrStdin())
				if err != nil {
					return err
				}
				a.Password = pw
			}
			var res control.PasswordResult
			if err := t.call(cmd, control.CmdAccountAdd, a, &res, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s\n", res.Addr)
			if res.Generated {
				fmt.Fprintf(cmd.OutOrStdout(), "password: %s\n", res.Password)
			}
			return nil
		},
	}
	add.Flags().BoolVar(&addStdin, "password-stdin", false, "read the password from the first line of standard input")

	var yes bool
	del := &cobra.Command{
		Use: "delete ADDRESS", Short: "Delete an account with all its messages", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				if !confirm(cmd)(fmt.Sprintf("Delete %s and all its messages? This cannot be undone.", args[0])) {
					return errors.New("not deleted")
				}
			}
			if err := t.call(cmd, control.CmdAccountDelete, control.AddrArgs{Addr: args[0]}, nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", args[0])
			return nil
		},
	}
	del.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")

	block := func(use, short, name, done string) *cobra.Command {
		return &cobra.Command{
			Use: use + " ADDRESS", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := t.call(cmd, name, control.AddrArgs{Addr: args[0]}, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", done, args[0])
				return nil
			},
		}
	}

	var pwStdin bool
	passwd := &cobra.Command{
		Use: "passwd ADDRESS", Short: "Set a new password (generated unless --password-stdin)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a := control.PasswordArgs{Addr: args[0]}
			if pwStdin {
				pw, err := readPassword(cmd.InOrStdin())
				if err != nil {
					return err
				}
				a.Password = pw
			}
			var res control.PasswordResult
			if err := t.call(cmd, control.CmdAccountPasswd, a, &res, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "password of %s changed\n", res.Addr)
			if res.Generated {
				fmt.Fprintf(cmd.OutOrStdout(), "password: %s\n", res.Password)
			}
			return nil
		},
	}
	passwd.Flags().BoolVar(&pwStdin, "password-stdin", false, "read the password from the first line of standard input")

	cmd.AddCommand(list, add, del,
		block("block", "Refuse logins of an account (its mail stays)", control.CmdAccountBlock, "blocked"),
		block("unblock", "Allow logins of a blocked account again", control.CmdAccountUnblk, "unblocked"),
		passwd)
	return cmd
}

func readPassword(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("read password from standard input: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("empty password on standard input")
	}
	return pw, nil
}

// parseTTL reads "7d", "12h", "90m" or "0" (never expires).
func parseTTL(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("--expires %q: want a number of days like 7d, or a duration like 12h", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("--expires %q: want a number of days like 7d, or a duration like 12h", s)
	}
	return d, nil
}

func inviteCmd() *cobra.Command {
	var t target
	cmd := &cobra.Command{Use: "invite", Short: "Invite links for invite-only registration"}
	t.flags(cmd)

	var uses int
	var expires string
	create := &cobra.Command{
		Use: "create", Short: "Make an invite link (DCACCOUNT:https://D/new?token=T, or https://D/?token=T when self-signed)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ttl, err := parseTTL(expires)
			if err != nil {
				return err
			}
			if uses < 0 {
				return errors.New("--uses must be 0 (unlimited) or more")
			}
			var inv control.Invite
			if err := t.call(cmd, control.CmdInviteCreate, control.InviteArgs{Uses: uses, TTL: control.Duration(ttl)}, &inv, nil); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), inv.URL)
			fmt.Fprintf(cmd.ErrOrStderr(), "%s\n", describeInvite(inv))
			if inv.SelfSigned {
				fmt.Fprintln(cmd.ErrOrStderr(), "The certificate is self-signed, so Delta Chat cannot use a DCACCOUNT: code here: open the link in a browser, press its button and scan the dclogin: code it shows.")
			}
			switch inv.Registration {
			case "open":
				fmt.Fprintln(cmd.ErrOrStderr(), "Registration is open on this relay: anyone can make an account, invites are not needed. They work once registration = \"invite\".")
			case "closed":
				fmt.Fprintln(cmd.ErrOrStderr(), "Registration is closed on this relay: this invite works only once registration = \"invite\".")
			}
			return nil
		},
	}
	create.Flags().IntVar(&uses, "uses", 1, "how many accounts the link may create (0: unlimited)")
	create.Flags().StringVar(&expires, "expires", "7d", "how long the link works (like 7d or 12h; 0: forever)")

	list := &cobra.Command{
		Use: "list", Short: "List invites", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var invs []control.Invite
			if err := t.call(cmd, control.CmdInviteList, nil, &invs, nil); err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TOKEN\tUSED\tEXPIRES\tSTATE")
			for _, inv := range invs {
				usesStr := fmt.Sprintf("%d/%d", inv.Used, inv.Uses)
				if inv.Uses == 0 {
					usesStr = fmt.Sprintf("%d/unlimited", inv.Used)
				}
				exp := "never"
				if !inv.Expires.IsZero() {
					exp = inv.Expires.Format("2006-01-02 15:04")
				}
				state := "usable"
				if !inv.Usable {
					state = inv.Disabled
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", inv.Token, usesStr, exp, state)
			}
			w.Flush()
			return nil
		},
	}

	revoke := &cobra.Command{
		Use: "revoke TOKEN", Short: "Make an invite link stop working", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := t.call(cmd, control.CmdInviteRevoke, control.TokenArgs{Token: args[0]}, nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func describeInvite(inv control.Invite) string {
	uses := "any number of accounts"
	if inv.Uses == 1 {
		uses = "one account"
	} else if inv.Uses > 1 {
		uses = fmt.Sprintf("%d accounts", inv.Uses)
	}
	exp := "never expires"
	if !inv.Expires.IsZero() {
		exp = "expires " + inv.Expires.Local().Format("2006-01-02 15:04 MST")
	}
	return fmt.Sprintf("good for %s, %s (token %s)", uses, exp, inv.Token)
}

func queueCmd() *cobra.Command {
	var t target
	cmd := &cobra.Command{Use: "queue", Short: "Outbound mail waiting for other servers"}
	t.flags(cmd)
	list := &cobra.Command{
		Use: "list", Short: "List queued messages", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var items []control.QueueItem
			if err := t.call(cmd, control.CmdQueueList, nil, &items, nil); err != nil {
				return err
			}
			if len(items) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "queue is empty")
				return nil
			}
			now := time.Now()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tAGE\tSIZE\tTRIES\tNEXT\tTO\tLAST ERROR")
			for _, it := range items {
				next := "now"
				if d := it.NextAttempt.Sub(now); d > 0 {
					next = "in " + d.Round(time.Second).String()
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", it.ID, now.Sub(it.Created).Round(time.Second), humanBytes(it.Size),
					it.Attempts, next, strings.Join(it.Rcpts, ","), it.LastError)
			}
			w.Flush()
			return nil
		},
	}
	var all bool
	retry := &cobra.Command{
		Use: "retry [ID]", Short: "Try a queued message (or every one with --all) now", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			switch {
			case len(args) == 1 && !all:
				id = args[0]
			case len(args) == 0 && all:
			default:
				return errors.New("give one queue ID, or --all")
			}
			if err := t.call(cmd, control.CmdQueueRetry, control.IDArgs{ID: id}, nil, nil); err != nil {
				return err
			}
			if id == "" {
				id = "every queued message"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "retrying %s now\n", id)
			return nil
		},
	}
	retry.Flags().BoolVar(&all, "all", false, "retry every queued message")
	drop := &cobra.Command{
		Use: "drop ID", Short: "Remove a queued message without delivering or bouncing it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := t.call(cmd, control.CmdQueueDrop, control.IDArgs{ID: args[0]}, nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dropped %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, retry, drop)
	return cmd
}

func backupCmd() *cobra.Command {
	var t target
	cmd := &cobra.Command{
		Use:   "backup DIR",
		Short: "Copy the running relay's store into DIR (hot, consistent)",
		Long: `Copy the running relay's store into DIR while it runs: a consistent
snapshot of the index, the message files it refers to, the outbound
queue, and the other files of the data directory (DKIM key, certificates).
DIR must not exist or be empty, and be writable by the relay's user;
under the installed (sandboxed) service that means a folder below
/var/backups/chatrelay, e.g. /var/backups/chatrelay/2026-01-31.
On the same file system message files are hard links: copy DIR
elsewhere (rsync -aH) for a backup that survives the disk.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			last := -1
			progress := func(p control.Progress) {
				pct := 100
				if p.Total > 0 {
					pct = p.Done * 100 / p.Total
				}
				if pct/10 != last/10 || p.Done == p.Total {
					fmt.Fprintf(out, "backup: %d/%d files (%d%%)\n", p.Done, p.Total, pct)
					last = pct
				}
			}
			var res control.BackupResult
			if err := t.call(cmd, control.CmdBackup, control.BackupArgs{Dir: dir}, &res, progress); err != nil {
				return err
			}
			fmt.Fprintf(out, "backup written to %s: %d accounts, %d messages, %d queued, %d other files, %s; index sha256 %s\n",
				res.Dir, res.Accounts, res.Messages, res.QueueItems, res.OtherFiles, humanBytes(res.Bytes), res.IndexSHA256)
			return nil
		},
	}
	t.flags(cmd)
	return cmd
}

func restoreCmd() *cobra.Command {
	var t target
	cmd := &cobra.Command{
		Use:   "restore DIR",
		Short: "Replace the store with a backup (the relay must be stopped)",
		Long: `Replace the data directory's store (index, messages, queue) with the
backup in DIR, after checking it. The relay must be stopped. Keys and
certificates from the backup are put back only where missing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dataDir, err := t.dataDir(cmd)
			if err != nil {
				return err
			}
			err = control.Call(cmd.Context(), relay.ControlSocketPath(dataDir), control.CmdStatus, nil, nil, nil)
			if err == nil || !errors.Is(err, control.ErrNotRunning) {
				return fmt.Errorf("a relay is running with data dir %s: stop it first (%s)", dataDir, t.stopHint())
			}
			out := cmd.OutOrStdout()
			err = backup.Restore(dataDir, args[0], func(f string, a ...any) { fmt.Fprintf(out, "restore: "+f+"\n", a...) })
			if errors.Is(err, backup.ErrRelayRunning) {
				return fmt.Errorf("%w (%s)", err, t.stopHint())
			}
			if err == nil {
				fmt.Fprintf(out, "restore: done; start the relay again (%s)\n", t.startHint(dataDir))
			}
			return err
		},
	}
	t.flags(cmd)
	return cmd
}
