// Command chatrelay is a chatmail relay in one binary: SMTP, IMAP, TLS,
// the encrypted-only policy, the onboarding web page and the admin tools.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// Nothing in the binary reads heap profiles; sampling them costs
	// about 1.5 MiB of bucket tables in a long-running relay.
	runtime.MemProfileRate = 0
	root := &cobra.Command{
		Use:           "chatrelay",
		Short:         "A chatmail relay for Delta Chat in one binary",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetVersionTemplate("chatrelay {{.Version}}\n")
	root.AddCommand(serveCmd(), versionCmd(), verifyCmd(), upgradeCmd())
	root.AddCommand(installCmd(), uninstallCmd(), dnsCmd())
	root.AddCommand(adminCmds()...)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "chatrelay:", err)
		os.Exit(1)
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "chatrelay", version)
		},
	}
}
