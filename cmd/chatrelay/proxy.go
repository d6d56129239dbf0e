package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/install"
	"github.com/chatrelay/chatrelay/relay/control"
)

func proxyCmd() *cobra.Command {
	var t target
	var noQR bool
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "The Shadowsocks proxy: its ss:// URL, a new key",
		Long: `The relay's Shadowsocks proxy ([proxy] in the config) lets Delta Chat
reach the relay where its mail ports or its TLS are blocked: scan the
ss:// URL's QR code in Delta Chat (or set it as the proxy).`,
	}
	t.flags(cmd)
	cmd.PersistentFlags().BoolVar(&noQR, "no-qr", false, "print the URL only, without its QR code")
	print := func(cmd *cobra.Command, p control.Proxy, what string) {
		out := cmd.OutOrStdout()
		fmt.Fprintf(cmd.ErrOrStderr(), "%s (%s on %s", what, p.Method, p.Listen)
		if p.OldKeys > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "; %d older key(s) still valid for their grace period", p.OldKeys)
		}
		fmt.Fprintln(cmd.ErrOrStderr(), ")")
		if !noQR {
			printQR(out, p.URL)
		}
		// The URL is the last line, for scripts.
		fmt.Fprintln(out, p.URL)
	}
	show := &cobra.Command{
		Use: "show", Short: "Print the proxy's ss:// URL and its QR code", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p control.Proxy
			if err := t.call(cmd, control.CmdProxyShow, nil, &p, nil); err != nil {
				return err
			}
			print(cmd, p, "Shadowsocks proxy")
			return nil
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Make a new proxy key; the old one works for proxy.rotate_grace_hours more",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p control.Proxy
			if err := t.call(cmd, control.CmdProxyRotate, nil, &p, nil); err != nil {
				return err
			}
			print(cmd, p, "New proxy key")
			return nil
		},
	}
	cmd.AddCommand(show, rotate)
	return cmd
}

func printQR(w io.Writer, text string) {
	if qr, err := install.QR(text); err == nil {
		fmt.Fprint(w, qr)
	}
}
