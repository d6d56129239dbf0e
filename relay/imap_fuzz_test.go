package relay_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// FuzzIMAPSession sends arbitrary command lines after LOGIN over a real
// relay connection (TLS, the imapext layer, imapserver, the store), then a
// NOOP. The relay must not panic (a panic ends the fuzz process), and it
// must stay alive: the NOOP is answered on that connection, or the relay
// closed it (BYE, a timeout shortened to a fraction of a second), and then
// a fresh connection logs in and gets its NOOP answered.
func FuzzIMAPSession(f *testing.F) {
	for _, seed := range []string{
		"a SELECT INBOX\r\nb UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO)])\r\n",
		"a APPEND INBOX {5+}\r\nhello\r\n",
		"a APPEND INBOX (\\Seen) {2000000000}\r\n",
		"a GETMETADATA \"\" (/shared/comment /shared/admin)\r\n",
		"a SETMETADATA INBOX (/private/devicetoken {5+}\r\ntoken)\r\n",
		"a GETQUOTAROOT INBOX\r\nb ID (\"name\" \"x\")\r\n",
		"a IDLE\r\nDONE\r\n",
		"a CREATE \"../x\"\r\nb RENAME \"../x\" INBOX\r\nc DELETE INBOX\r\n",
		"a COMPRESS DEFLATE\r\n",
		"a STARTTLS\r\n",
		"a SELECT INBOX\r\nb UID STORE 1:* +FLAGS (\\Deleted)\r\nc EXPUNGE\r\nd CLOSE\r\n",
		"a SEARCH CHARSET UTF-8 TEXT {3+}\r\n\xff\x00\xfe\r\n",
		"a LOGOUT\r\n",
	} {
		f.Add([]byte(seed))
	}
	r := relaytest.StartWith(f, relaytest.Config(f.TempDir()), relay.Options{ClientTimeoutCap: 300 * time.Millisecond})
	if err := r.Store().CreateAccount(hAlice, password, mailbox.Generated); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, cmds []byte) {
		if fuzzNOOP(t, r, cmds) {
			return
		}
		if !fuzzNOOP(t, r, nil) {
			t.Fatalf("relay stopped answering after %q", cmds)
		}
	})
}

// fuzzNOOP logs in, sends cmds and a NOOP, and reports whether the NOOP
// was answered. It fails the test if the connection neither answers nor
// closes in time.
func fuzzNOOP(t *testing.T, r *relaytest.Relay, cmds []byte) bool {
	c, err := tlsDial(r.AddrOf("imaps"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if s, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(s, "* OK") {
		t.Fatalf("greeting %q %v", s, err)
	}
	c.Write([]byte("zlogin LOGIN " + hAlice + " " + password + "\r\n"))
	for {
		s, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		if strings.HasPrefix(s, "zlogin OK") {
			break
		}
		if strings.HasPrefix(s, "zlogin ") {
			t.Fatalf("login: %q", s)
		}
	}
	if len(cmds) > 0 && !bytes.HasSuffix(cmds, []byte("\r\n")) {
		cmds = append(cmds, '\r', '\n')
	}
	c.Write(cmds)
	c.Write([]byte("zznoop NOOP\r\n"))
	for {
		s, err := br.ReadString('\n')
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("connection neither answered nor closed after %q", cmds)
			}
			return false // closed by the relay
		}
		if strings.HasPrefix(s, "zznoop ") {
			return true
		}
	}
}

func tlsDial(addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return tls.DialWithDialer(d, "tcp", addr, relaytest.ClientTLS())
}
