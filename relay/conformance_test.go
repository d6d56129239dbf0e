package relay_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// "*" in a search key is the last message in the mailbox (RFC 3501
// section 6.4.4 and 9, "seq-number"); Delta Chat's move-and-markseen path
// asks "UID SEARCH *" (and "UID SEARCH n:*") to learn the highest UID.
func TestSearchStarIsTheLastMessage(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice = "starsearc@localhost"
	c := login(t, r, alice)
	for range 3 {
		if _, err := appendMsg(c, "INBOX", testmsg.Encrypted(alice, alice, 100)); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	x := dialRawIMAP(t, r)
	x.send("a LOGIN " + alice + " " + password + "\r\n")
	x.expect("a OK")
	x.send("b SELECT INBOX\r\n")
	x.expect("b OK")
	for i, tc := range []struct{ cmd, want string }{
		{"UID SEARCH *", "* SEARCH 3"},
		{"SEARCH *", "* SEARCH 3"},
		{"UID SEARCH 2:*", "* SEARCH 2 3"},
		{"UID SEARCH UID *", "* SEARCH 3"},
		{"UID SEARCH NOT *", "* SEARCH 1 2"},
		{"UID SEARCH OR 1 *", "* SEARCH 1 3"},
		{"UID SEARCH 5:*", "* SEARCH 3"},
		{"UID SEARCH ALL", "* SEARCH 1 2 3"},
	} {
		tag := fmt.Sprintf("s%d", i)
		x.send(tag + " " + tc.cmd + "\r\n")
		got := strings.TrimRight(x.expect("* SEARCH"), "\r\n")
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.cmd, got, tc.want)
		}
		x.expect(tag + " OK")
	}
}

// On an empty mailbox "UID MOVE *" and "UID COPY *" name no message: a
// UID command that matches nothing is not an error (RFC 3501 section 6.4.8),
// so the answer is a plain OK, never NO [SERVERBUG].
func TestUIDMoveStarOnEmptyMailbox(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice = "emptymove@localhost"
	c := login(t, r, alice)
	if err := c.Create("DeltaChat", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	x := dialRawIMAP(t, r)
	x.send("a LOGIN " + alice + " " + password + "\r\n")
	x.expect("a OK")
	x.send("b SELECT INBOX\r\n")
	x.expect("b OK")
	for _, cmd := range []string{"UID MOVE * DeltaChat", "UID COPY * DeltaChat", "UID MOVE 1:* DeltaChat"} {
		x.send("m " + cmd + "\r\n")
		l := x.expect("m ")
		if !strings.HasPrefix(l, "m OK") {
			t.Errorf("%s: %q", cmd, strings.TrimSpace(l))
		}
	}
	x.send("n STATUS DeltaChat (MESSAGES)\r\n")
	if l := x.expect("* STATUS"); !strings.Contains(l, "MESSAGES 0") {
		t.Errorf("DeltaChat after moves of nothing: %q", l)
	}
	x.expect("n OK")
}

// The sender checks answer at RCPT, once per recipient, with the reference
// relay's texts: MAIL FROM itself is accepted (SPEC section 5).
func TestSubmissionSenderChecksAnswerAtRCPT(t *testing.T) {
	r := relaytest.Start(t, nil)
	r.Clock.Freeze()
	const alice, bob = "rcptalice@localhost", "rcptbobbo@localhost"
	login(t, r, bob).Close()
	c, err := smtp.DialTLS(r.AddrOf("submissions"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", alice, password)); err != nil {
		t.Fatal(err)
	}
	reply := func(err error) string {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return fmt.Sprint(err)
		}
		if se.EnhancedCode == smtp.NoEnhancedCode || se.EnhancedCode == (smtp.EnhancedCode{}) {
			return fmt.Sprintf("%d %s", se.Code, se.Message)
		}
		return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	}
	rcpts := func(want string) {
		t.Helper()
		for _, to := range []string{bob, "someone@elsewhere.test"} {
			if got := reply(c.Rcpt(to, nil)); got != want {
				t.Errorf("RCPT %s: %q, want %q", to, got, want)
			}
		}
	}
	if err := c.Mail(bob, nil); err != nil {
		t.Fatalf("MAIL FROM another address: %v, want it accepted and refused at RCPT", err)
	}
	rcpts("553 5.7.1 Envelope sender must equal the login name")
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	// The burst of 10 (SPEC default), then the rate refusal, also per RCPT.
	for i := range 11 {
		if err := c.Mail(alice, nil); err != nil {
			t.Fatalf("MAIL %d: %v", i, err)
		}
		if i == 10 {
			rcpts("450 4.7.1: Too much mail from " + alice)
			break
		}
		if err := c.Rcpt(bob, nil); err != nil {
			t.Fatalf("RCPT %d: %v", i, err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		w.Write(testmsg.Encrypted(alice, bob, i))
		if err := w.Close(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// METADATA as Delta Chat meets it on the reference relay: SETMETADATA takes
// a space before ")", the client reads back its own device tokens
// (space-separated), another account does not see them, and the
// completion texts are the reference's.
func TestMetadataDeviceTokenAsTheReferenceRelay(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice, bob = "metaalice@localhost", "metabobbo@localhost"
	x := dialRawIMAP(t, r)
	x.send("a LOGIN " + alice + " " + password + "\r\n")
	x.expect("a OK")
	x.send("b SETMETADATA INBOX (/private/devicetoken \"tok-1\" )\r\n")
	if l := x.expect("b "); l != "b OK Setmetadata completed\r\n" {
		t.Fatalf("SETMETADATA with a space before ): %q", l)
	}
	x.send("c SETMETADATA INBOX ( /private/devicetoken  \"tok-2\")\r\n")
	x.expect("c OK")
	x.send("d GETMETADATA INBOX /private/devicetoken\r\n")
	got := x.expect("* METADATA")
	if done := x.expect("d "); done != "d OK Getmetadata completed\r\n" {
		t.Errorf("GETMETADATA: %q", done)
	}
	tokens, _ := r.Store().PushTokens(alice)
	want := `* METADATA "INBOX" ("/private/devicetoken" "` + strings.Join(tokens, " ") + "\")\r\n"
	if len(tokens) != 2 || got != want {
		t.Fatalf("read back %q, want %q (store: %v)", got, want, tokens)
	}
	y := dialRawIMAP(t, r)
	y.send("a LOGIN " + bob + " " + password + "\r\n")
	y.expect("a OK")
	y.send("b GETMETADATA INBOX /private/devicetoken\r\n")
	if l := y.expect("* METADATA"); strings.Contains(l, "tok-") {
		t.Fatalf("another account reads alice's tokens: %q", l)
	}
	y.expect("b OK")
}

// Port 25 takes MAIL only after STARTTLS (SPEC section 5): mail between
// relays never travels in the clear; after STARTTLS the same command works.
func TestInboundNeedsSTARTTLSBeforeMAIL(t *testing.T) {
	r := relaytest.Start(t, nil)
	c, err := smtp.Dial(r.AddrOf("smtp"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var se *smtp.SMTPError
	if err := c.Mail("someone@example.org", nil); !errors.As(err, &se) || se.Code != 530 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 0}) {
		t.Fatalf("MAIL without TLS: %v, want 530 5.7.0", err)
	}
	tc, err := smtp.DialStartTLS(r.AddrOf("smtp"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if err := tc.Mail("someone@example.org", nil); err != nil {
		t.Fatalf("MAIL after STARTTLS: %v", err)
	}
}

// Client ports speak TLS 1.3 only (SPEC section 5, as the reference
// relay); port 25 still takes TLS 1.2 from other mail servers.
func TestClientPortsAreTLS13Only(t *testing.T) {
	r := relaytest.Start(t, nil)
	tls12 := relaytest.ClientTLS()
	tls12.MaxVersion = tls.VersionTLS12
	for _, name := range []string{"imaps", "submissions", "https"} {
		if c, err := tls.Dial("tcp", r.AddrOf(name), tls12); err == nil {
			c.Close()
			t.Errorf("%s: TLS 1.2 handshake accepted", name)
		}
		c, err := tls.Dial("tcp", r.AddrOf(name), relaytest.ClientTLS())
		if err != nil {
			t.Fatalf("%s: TLS 1.3: %v", name, err)
		}
		if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Errorf("%s: version %x", name, v)
		}
		c.Close()
	}
	// go-smtp's client handshakes on the first command after STARTTLS.
	if c, err := smtp.DialStartTLS(r.AddrOf("submission"), tls12); err == nil {
		if err := c.Noop(); err == nil {
			t.Error("submission STARTTLS: TLS 1.2 accepted")
		}
		c.Close()
	}
	c, err := smtp.DialStartTLS(r.AddrOf("smtp"), tls12)
	if err != nil {
		t.Fatalf("port 25 with TLS 1.2: %v", err)
	}
	if err := c.Noop(); err != nil {
		t.Fatalf("port 25 with TLS 1.2: %v", err)
	}
	c.Close()
}
