package relay_test

import (
	"fmt"
	"strings"
	"testing"

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
