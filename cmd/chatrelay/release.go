package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/install"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/release"
)

func verifyCmd() *cobra.Command {
	var keyPath, sigPath string
	cmd := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a release file's signature and show its version, target and SHA-256",
		Long: `Check FILE against its minisign signature FILE.minisig with the release
key built into this chatrelay (or --key), and print the version, target and
SHA-256 it was signed with, spelled out to compare by phone.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, source, err := release.Key(keyPath)
			if err != nil {
				return err
			}
			v, err := release.VerifyFile(key, args[0], sigPath)
			if err != nil {
				return err
			}
			v.Print(cmd.OutOrStdout(), source)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "release public key file (minisign .pub) instead of the built-in one")
	cmd.Flags().StringVar(&sigPath, "sig", "", "signature file (default FILE.minisig)")
	return cmd
}

func upgradeCmd() *cobra.Command {
	var (
		keyPath, sigPath, configPath, dataDir, binary string
		timeout                                       time.Duration
		allowDowngrade                                bool
	)
	cmd := &cobra.Command{
		Use:   "upgrade FILE",
		Short: "Replace the installed relay by a signed release file, rolling back if it does not come up",
		Long: `Verify FILE (a release binary with FILE.minisig beside it), keep the
installed binary as BINARY.prev, stop the relay, back up the index into
DATA/upgrade/, swap the binary, start the relay and wait until IMAP and
submission answer. If they do not within --timeout, put the previous binary
(and the index backup, if the new version converted the index) back and
start that. The outcome shows in ` + "`chatrelay status`" + `.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, _, err := release.Key(keyPath)
			if err != nil {
				return err
			}
			cfg := relay.Default()
			if err := cfg.LoadFile(configPath); err != nil {
				return fmt.Errorf("%w (give the relay's config with --config)", err)
			}
			if cmd.Flags().Changed("data") {
				cfg.DataDir = dataDir
			}
			imapAddr, subAddr := install.HealthAddrs(cfg)
			o := install.UpgradeOptions{
				File: args[0], SigFile: sigPath, Key: key,
				Binary: binary, DataDir: cfg.DataDir, ReleasesDir: cfg.ReleasesFolder(),
				Service:  install.Systemd{},
				IMAPAddr: imapAddr, SubmissionAddr: subAddr,
				Timeout: timeout, AllowDowngrade: allowDowngrade,
				Out: cmd.OutOrStdout(),
			}
			var st control.Status
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			if err := control.Call(ctx, relay.ControlSocketPath(cfg.DataDir), control.CmdStatus, nil, &st, nil); err == nil {
				o.Running = &st
			}
			cancel()
			return install.Upgrade(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&keyPath, "key", "", "release public key file (minisign .pub) instead of the built-in one")
	fl.StringVar(&sigPath, "sig", "", "signature file (default FILE.minisig)")
	fl.StringVar(&configPath, "config", install.ConfigPath, "the relay's config file")
	fl.StringVar(&dataDir, "data", "", "the relay's data directory (default: data_dir of the config)")
	fl.StringVar(&binary, "binary", install.BinaryPath, "the installed binary to replace")
	fl.DurationVar(&timeout, "timeout", 90*time.Second, "how long the new version may take to answer IMAP and submission")
	fl.BoolVar(&allowDowngrade, "allow-downgrade", false, "go back to an older index schema by restoring the index backup taken before the upgrade from it (what changed since is lost)")
	return cmd
}
