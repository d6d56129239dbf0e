package main

import (
	"fmt"
	"io"
	"net"
	"path/filepath"

	"github.com/chatrelay/chatrelay/relay"
)

// printWelcome tells the operator how to connect: the listeners and how a
// new account is made in the relay's registration mode. Every variant has
// a line starting "To add an account".
//
// A dclogin: code carries a password, so it is printed only where a person
// reads it: on a terminal, or by a dev relay. A production relay under
// systemd writes its output into the journal, and anyone who can read the
// journal could log in with a code printed there.
func printWelcome(out io.Writer, srv *relay.Server, cfg relay.Config, terminal bool) {
	abs, _ := filepath.Abs(cfg.DataDir)
	fmt.Fprintf(out, "chatrelay %s serving %s (data in %s)\n", version, cfg.MailDomain(), abs)
	for _, name := range []string{"imaps", "imap", "submissions", "submission", "smtp", "https", "proxy"} {
		if a := srv.Addr(name); a != nil {
			fmt.Fprintf(out, "  %-12s %s\n", name, a)
		}
	}
	if t := srv.TURN(); t != nil {
		for _, a := range []net.Addr{t.UDPAddr(), t.TCPAddr()} {
			if a != nil {
				fmt.Fprintf(out, "  %-12s %s/%s\n", "turn", a, a.Network())
			}
		}
	}
	if u := srv.ProxyURL(); u != "" {
		fmt.Fprintf(out, "\nShadowsocks proxy (Delta Chat: Settings -> Proxy, or scan it):\n\n  %s\n", u)
	}
	fmt.Fprintln(out)
	switch cfg.Registration {
	case "invite":
		// Neither a dclogin: code (first-login creation is off) nor /new
		// without a token works here.
		fmt.Fprintf(out, "To add an account, make an invite link and hand it over:\n\n  chatrelay invite create%s\n", devFlag(cfg))
		return
	case "closed":
		fmt.Fprintf(out, "To add an account (registration is closed):\n\n  chatrelay account add NAME@%s%s\n", cfg.MailDomain(), devFlag(cfg))
		return
	}
	web := srv.WebURL()
	if !terminal && !cfg.Dev {
		fmt.Fprintf(out, "To add an account, open %s/ and scan its code (no code is printed here: this output may be kept in a log).\n", web)
		return
	}
	addr, pw := srv.NewAccountCredentials()
	fmt.Fprintf(out, "To add an account in Delta Chat, scan or paste this code (the account is created at first login):\n\n  %s\n\n", srv.DCLoginURL(addr, pw))
	if srv.SelfSigned() {
		// Delta Chat refuses DCACCOUNT: over a self-signed certificate;
		// the web page shows a dclogin: code instead.
		fmt.Fprintf(out, "Or open %s/ for another code, or make an account with: curl -k -X POST %s/new\n", web, web)
		return
	}
	fmt.Fprintf(out, "Or scan the code on %s/, or make an account with: curl -X POST %s/new\n", web, web)
}

// devFlag is what admin commands need to find this relay's data.
func devFlag(cfg relay.Config) string {
	switch {
	case cfg.Dev && cfg.DataDir == relay.DevDefault().DataDir:
		return " --dev"
	case cfg.DataDir != relay.Default().DataDir:
		abs, _ := filepath.Abs(cfg.DataDir)
		return " --data " + abs
	}
	return ""
}
