package main

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// The start banner in each registration mode and place it is printed to.
func TestWelcomeBanner(t *testing.T) {
	for _, tc := range []struct {
		name         string
		mode         string
		dev, term    bool
		want, refuse []string
	}{
		// Under systemd stdout is the journal: no password goes there.
		{"production log", "open", false, false,
			[]string{"To add an account, open https://localhost:"}, []string{"dclogin:", "p="}},
		{"production terminal", "open", false, true,
			[]string{"dclogin:", "ic=3", "curl -k -X POST https://localhost:"}, nil},
		{"dev", "open", true, false,
			[]string{"dclogin:", "ic=3", "curl -k -X POST https://127.0.0.1:"}, nil},
		// Neither a first-login code nor a bare /new works by invite.
		{"invite", "invite", false, true,
			[]string{"To add an account", "chatrelay invite create --data "}, []string{"dclogin:", "/new"}},
		{"closed", "closed", true, true,
			[]string{"To add an account", "chatrelay account add NAME@localhost"}, []string{"dclogin:", "/new"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := relaytest.Start(t, func(c *relaytest.Cfg) { c.Registration = tc.mode; c.Dev = tc.dev })
			var out bytes.Buffer
			printWelcome(&out, r.Server, r.Cfg, tc.term)
			s := out.String()
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("banner lacks %q:\n%s", w, s)
				}
			}
			for _, w := range tc.refuse {
				if strings.Contains(s, w) {
					t.Errorf("banner has %q:\n%s", w, s)
				}
			}
			// The web address is the relay's, with the bound port.
			_, port, _ := net.SplitHostPort(r.AddrOf("https"))
			if tc.mode == "open" && !strings.Contains(s, ":"+port+"/") {
				t.Errorf("banner does not name the HTTPS port %s:\n%s", port, s)
			}
		})
	}
}
