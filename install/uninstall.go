package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// UninstallOptions for Uninstall.
type UninstallOptions struct {
	// Purge also removes the data (accounts, messages, keys), the config
	// and the system user.
	Purge   bool
	Root    string
	Runner  Runner
	Out     io.Writer
	Confirm func(question string) bool
}

// Uninstall stops and removes the service and the binary. Data and config
// stay unless Purge.
func Uninstall(ctx context.Context, o UninstallOptions) (*Plan, []Command, error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Runner == nil {
		o.Runner = defaultRunner(o.Root)
	}
	if o.Root == "" && os.Geteuid() != 0 {
		return nil, nil, errors.New("not running as root; run: sudo chatrelay uninstall")
	}
	if o.Confirm != nil && (o.Root == "" || o.Purge) {
		q := "Stop chatrelay and remove " + UnitPath + " and " + BinaryPath + "?"
		if o.Purge {
			q = fmt.Sprintf("Stop chatrelay and remove it with ALL its data: every account and message in %s, the DKIM key, the backups in %s, and %s?", DataDir, BackupDir, ConfigDir)
		}
		if !o.Confirm(q) {
			return nil, nil, errors.New("nothing done (answer y, or run with --yes)")
		}
	}
	_, err := os.Lstat(hostPath(o.Root, UnitPath))
	p := planUninstall(o.Purge, err == nil)
	if o.Root != "" {
		fmt.Fprintf(o.Out, "Removing chatrelay from under %s; nothing runs on this host.\n", o.Root)
	}
	ex := &executor{root: o.Root, run: o.Runner, out: o.Out}
	if err := ex.execute(ctx, p); err != nil {
		return p, nil, err
	}
	var cmds []Command
	if rec, ok := o.Runner.(*Recorder); ok {
		cmds = rec.Commands
	}
	w := o.Out
	fmt.Fprintln(w)
	if o.Root != "" && len(cmds) > 0 {
		fmt.Fprintf(w, "On the target system, run as root:\n")
		for i, c := range cmds {
			fmt.Fprintf(w, "  %2d. %s\n", i+1, c)
		}
		fmt.Fprintln(w)
	}
	if o.Purge {
		fmt.Fprintln(w, "chatrelay is removed, with its data and config.")
	} else {
		fmt.Fprintf(w, "chatrelay is removed. Kept the data in %s and the config in %s:\n", DataDir, ConfigDir)
		fmt.Fprintln(w, "`chatrelay install` picks them up again; `chatrelay uninstall --purge` deletes them.")
	}
	return p, cmds, nil
}

// planUninstall: stop first, then remove files, then tell systemd.
func planUninstall(purge, unitInstalled bool) *Plan {
	p := &Plan{}
	stop := Step{Title: "stopping " + UnitName}
	unit := Step{
		Title:  "removing " + UnitPath,
		Remove: []string{UnitPath},
		Hint:   "remove the file by hand and run systemctl daemon-reload",
	}
	if unitInstalled {
		stop.Commands = []Command{{Args: []string{"systemctl", "disable", "--now", UnitName}, MayFail: true}}
		unit.Commands = []Command{{Args: []string{"systemctl", "daemon-reload"}}}
	} else {
		stop.Action = func(context.Context, string) (string, error) { return "not installed", nil }
	}
	p.Steps = append(p.Steps, stop, unit,
		Step{
			Title:  "removing " + BinaryPath,
			Remove: []string{BinaryPath},
		},
	)
	if purge {
		p.Steps = append(p.Steps, Step{
			Title: "removing data, backups, config and user " + User,
			// The backups folder too: left behind it would belong to a
			// user that no longer exists (and to the next one with its id).
			Remove:   []string{DataDir, BackupDir, ConfigDir},
			Commands: []Command{{Args: []string{"userdel", User}, MayFail: true}},
		})
	}
	return p
}
