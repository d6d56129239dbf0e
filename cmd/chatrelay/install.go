package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/install"
)

func installCmd() *cobra.Command {
	var o install.Options
	var yes bool
	cmd := &cobra.Command{
		Use:   "install --domain D [--email E] [--yes] | --ip A",
		Short: "Install or upgrade the relay as a systemd service on this machine",
		Long: `Install the relay on a Debian or Ubuntu machine with systemd: the system
user chatrelay, ` + install.ConfigPath + `, the data directory
` + install.DataDir + ` with a new DKIM key, the binary at
` + install.BinaryPath + ` and a sandboxed systemd unit; then start it,
wait until it answers, and print the DNS records to publish and a QR code
to join. With --proxy also the Shadowsocks proxy and its ss:// URL.

Running it again upgrades in place: the binary and unit are replaced, the
config file, the DKIM key and all data are kept.

With --root DIR everything is laid out under DIR and nothing runs on this
machine: the commands to run on the target (useradd, chown, systemctl) are
printed instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Out = cmd.OutOrStdout()
			if !yes {
				o.Confirm = confirm(cmd)
			}
			_, err := install.Install(cmd.Context(), o)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Domain, "domain", "", "mail domain: addresses are name@D (its DNS must point here)")
	fl.StringVar(&o.IP, "ip", "", "IP-only relay without a domain: addresses are name@[A]")
	fl.StringVar(&o.Email, "email", "", "e-mail for the Let's Encrypt account (optional)")
	fl.BoolVarP(&yes, "yes", "y", false, "do not ask before changing the system")
	fl.StringVar(&o.Root, "root", "", "lay everything out under this directory and run nothing on the host")
	fl.StringVar(&o.PublicIPv4, "public-ip", "", "this server's public IPv4 address, for the DNS records shown (guessed when not given)")
	fl.StringVar(&o.PublicIPv6, "public-ipv6", "", "this server's public IPv6 address, for the DNS records shown")
	fl.StringVar(&o.Proxy, "proxy", "", "turn on the Shadowsocks proxy: --proxy for a random port, --proxy=PORT for a fixed one")
	fl.Lookup("proxy").NoOptDefVal = "random"
	return cmd
}

func uninstallCmd() *cobra.Command {
	var o install.UninstallOptions
	var yes bool
	cmd := &cobra.Command{
		Use:   "uninstall [--purge] [--yes]",
		Short: "Stop the service and remove the unit and the binary",
		Long: `Stop and disable the chatrelay service and remove its unit and
` + install.BinaryPath + `. The data (` + install.DataDir + `) and the
config (` + install.ConfigDir + `) stay, so a later install picks them up,
unless --purge: then they are deleted too, with the system user.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Out = cmd.OutOrStdout()
			if !yes {
				o.Confirm = confirm(cmd)
			}
			_, _, err := install.Uninstall(cmd.Context(), o)
			return err
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&o.Purge, "purge", false, "also delete all data (accounts, messages, keys), the config and the user")
	fl.BoolVarP(&yes, "yes", "y", false, "do not ask")
	fl.StringVar(&o.Root, "root", "", "remove from under this directory and run nothing on the host")
	return cmd
}

// confirm asks on the command's input; anything but y or yes is no. A
// piped answer is not echoed, so the prompt's line is ended here; no
// answer at all (no terminal, empty input) says to use --yes.
func confirm(cmd *cobra.Command) func(string) bool {
	return func(q string) bool {
		out := cmd.OutOrStdout()
		fmt.Fprintf(out, "%s [y/N] ", q)
		line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if !isTerminal(cmd.InOrStdin()) {
			if line == "" && err != nil {
				fmt.Fprintln(out, "\nno answer: standard input is not a terminal; run with --yes to go ahead without asking")
				return false
			}
			fmt.Fprintln(out)
		}
		switch strings.ToLower(strings.TrimSpace(line)) {
		case "y", "yes":
			return true
		}
		return false
	}
}

// isTerminal reports whether r is a character device (a terminal echoes
// what is typed, a pipe or file does not).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
