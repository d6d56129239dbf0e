package relay_test

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// TestWrongPasswordStormDoesNotHoldUpDelivery: while a storm of wrong
// passwords for an account with a chosen password queues for the slow
// hash (at most GOMAXPROCS-1 run at once), a message from a sender who is
// logged in reaches the recipient's IDLE before the storm is through:
// delivery never waits for a hash slot.
func TestWrongPasswordStormDoesNotHoldUpDelivery(t *testing.T) {
	r := relaytest.Start(t, nil)
	for _, a := range []string{hAlice, hBob} {
		if err := r.Store().CreateAccount(a, password, mailbox.Generated); err != nil {
			t.Fatal(err)
		}
	}
	relay.RecordAuthDelaysForTest(r.Server) // attack delays recorded, not slept
	const victim = "victimvic@localhost"
	if err := r.Store().CreateAccount(victim, "a password the owner chose", mailbox.Chosen); err != nil {
		t.Fatal(err)
	}

	rcpt := newLine(t, dialFrom(t, "127.0.24.250", r.AddrOf("imaps"), true))
	rcpt.expect("* OK")
	rcpt.send("a LOGIN " + hBob + " " + password + "\r\n")
	if s, _ := rcpt.imapTagged("a"); !imapOK(s) {
		t.Fatal(s)
	}
	rcpt.send("b SELECT INBOX\r\nc IDLE\r\n")
	rcpt.imapTagged("b")
	rcpt.expect("+")
	sender := smtpSession(t, r, "submissions", "127.0.24.251")
	sender.send("AUTH PLAIN " + plainAuth(hAlice, password) + "\r\n")
	if s := sender.smtpReply(); !strings.HasPrefix(s, "235 ") {
		t.Fatal(s)
	}

	// Several rounds of slow hashes, whatever the core count.
	storm := 4*max(1, runtime.GOMAXPROCS(0)-1) + 4
	var answered atomic.Int32
	first := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for i := range storm {
		l := newLine(t, dialFrom(t, fmt.Sprintf("127.0.24.%d", i+1), r.AddrOf("imaps"), true))
		l.expect("* OK")
		wg.Go(func() {
			l.c.Write([]byte(fmt.Sprintf("g LOGIN %s wrong-%d\r\n", victim, i)))
			l.c.SetReadDeadline(time.Now().Add(120 * time.Second))
			for range 10 {
				s, err := l.br.ReadString('\n')
				if err != nil || strings.HasPrefix(s, "g ") {
					break
				}
			}
			answered.Add(1)
			once.Do(func() { close(first) })
		})
	}
	// The storm is under way: its first answer came, after a slow hash.
	select {
	case <-first:
	case <-time.After(120 * time.Second):
		t.Fatal("no wrong password answered within 120s")
	}
	msg := testmsg.Encrypted(hAlice, hBob, 0)
	sender.send("MAIL FROM:<" + hAlice + ">\r\nRCPT TO:<" + hBob + ">\r\nDATA\r\n")
	for range 3 {
		sender.smtpReply()
	}
	sender.send(strings.ReplaceAll(string(msg), "\n.", "\n..") + ".\r\n")
	if s := sender.smtpReply(); !strings.HasPrefix(s, "250 ") {
		t.Fatal(s)
	}
	for i := 0; ; i++ {
		s, err := rcpt.read()
		if err != nil || i > 10 {
			t.Fatalf("waiting for EXISTS: %q %v", s, err)
		}
		if s == "* 1 EXISTS" {
			break
		}
	}
	n := answered.Load()
	wg.Wait()
	if int(n) >= storm {
		t.Fatalf("the message was announced only after all %d wrong passwords were answered", storm)
	}
	record(t, "storm of wrong passwords for a chosen-password account", "imaps, submissions",
		fmt.Sprintf("a message from a logged-in sender announced to IDLE with %d of %d guesses (GOMAXPROCS %d) still waiting for a hash", storm-int(n), storm, runtime.GOMAXPROCS(0)))
}

// TestEveryTLSHandshakeIsGated: every way into the relay over TLS, implicit
// or after STARTTLS, takes its handshake through the handshake gate (which
// keeps a core for connected clients during a login storm), and gives its
// slot back.
func TestEveryTLSHandshakeIsGated(t *testing.T) {
	r := relaytest.Start(t, nil)
	if err := r.Store().CreateAccount(hAlice, password, mailbox.Generated); err != nil {
		t.Fatal(err)
	}
	ways := []struct {
		name string
		do   func() error
	}{
		{"imaps", func() error {
			c, err := imapclient.DialTLS(r.AddrOf("imaps"), &imapclient.Options{TLSConfig: relaytest.ClientTLS()})
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Login(hAlice, password).Wait()
		}},
		{"imap STARTTLS", func() error {
			c, err := imapclient.DialStartTLS(r.AddrOf("imap"), &imapclient.Options{TLSConfig: relaytest.ClientTLS()})
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Login(hAlice, password).Wait()
		}},
		{"https alpn imap", func() error {
			conf := relaytest.ClientTLS()
			conf.NextProtos = []string{acme.ALPNIMAP}
			c, err := imapclient.DialTLS(r.AddrOf("https"), &imapclient.Options{TLSConfig: conf})
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Login(hAlice, password).Wait()
		}},
		{"submissions", func() error {
			c, err := smtp.DialTLS(r.AddrOf("submissions"), relaytest.ClientTLS())
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Auth(sasl.NewPlainClient("", hAlice, password))
		}},
		{"submission STARTTLS", func() error {
			c, err := smtp.DialStartTLS(r.AddrOf("submission"), relaytest.ClientTLS())
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Auth(sasl.NewPlainClient("", hAlice, password))
		}},
		{"smtp STARTTLS", func() error {
			c, err := smtp.DialStartTLS(r.AddrOf("smtp"), relaytest.ClientTLS())
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Hello("mx.example.test")
		}},
		{"https", func() error {
			cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: relaytest.ClientTLS()}}
			defer cl.CloseIdleConnections()
			resp, err := cl.Get("https://" + r.AddrOf("https") + "/")
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		}},
	}
	for _, w := range ways {
		before, _, _ := relay.HandshakeGateForTest(r.Server)
		if err := w.do(); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		gated, inUse, bypassed := relay.HandshakeGateForTest(r.Server)
		if gated != before+1 || inUse != 0 || bypassed != 0 {
			t.Fatalf("%s: %d handshakes gated (want 1), %d slots still held, %d bypassed", w.name, gated-before, inUse, bypassed)
		}
	}
}
