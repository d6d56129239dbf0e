package relay_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// imapConn is a raw IMAP client connection that reads whole responses,
// literals included.
type imapConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func (x *imapConn) send(s string) {
	x.t.Helper()
	x.c.SetWriteDeadline(time.Now().Add(time.Minute))
	if _, err := io.WriteString(x.c, s); err != nil {
		x.t.Fatalf("send %.60q: %v", s, err)
	}
}

// literalSize is the size of the literal a response line ends with, or -1.
func literalSize(line string) int64 {
	s := strings.TrimSuffix(line, "\r\n")
	if !strings.HasSuffix(s, "}") {
		return -1
	}
	i := strings.LastIndexByte(s, '{')
	if i < 0 {
		return -1
	}
	n, err := strconv.ParseInt(s[i+1:len(s)-1], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// line reads one response line (without a literal after it).
func (x *imapConn) line() (string, error) {
	x.c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	return x.br.ReadString('\n')
}

// until reads responses up to the tagged one for tag. With keep, it
// returns them, literals included; literals are read in pieces either way.
func (x *imapConn) until(tag string, keep bool) ([]byte, error) {
	var out bytes.Buffer
	for range 1_000_000 {
		l, err := x.line()
		if err != nil {
			return out.Bytes(), fmt.Errorf("reading for %s: %v (after %q)", tag, err, l)
		}
		if keep {
			out.WriteString(l)
		}
		if n := literalSize(l); n >= 0 {
			w := io.Discard
			if keep {
				w = &out
			}
			x.c.SetReadDeadline(time.Now().Add(2 * time.Minute))
			if _, err := io.CopyN(w, x.br, n); err != nil {
				return out.Bytes(), fmt.Errorf("literal of %d for %s: %v", n, tag, err)
			}
			continue
		}
		if strings.HasPrefix(l, tag+" ") {
			if !strings.HasPrefix(l, tag+" OK") {
				return out.Bytes(), fmt.Errorf("%s: %q", tag, l)
			}
			return out.Bytes(), nil
		}
	}
	return out.Bytes(), fmt.Errorf("%s: too many lines", tag)
}

func (x *imapConn) do(tag, cmd string) []byte {
	x.t.Helper()
	x.send(tag + " " + cmd + "\r\n")
	b, err := x.until(tag, true)
	if err != nil {
		x.t.Fatal(err)
	}
	return b
}

func relayIMAP(t testing.TB, r *relaytest.Relay, user string) *imapConn {
	t.Helper()
	c, err := tls.Dial("tcp", r.AddrOf("imaps"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	x := &imapConn{t: t, c: c, br: bufio.NewReaderSize(c, 4096)}
	if l, err := x.line(); err != nil || !strings.HasPrefix(l, "* OK") {
		t.Fatalf("greeting %q %v", l, err)
	}
	x.do("l", "LOGIN "+user+" "+password)
	return x
}

// referenceIMAP serves the messages from go-imap's own in-memory server,
// whose FETCH extracts every section in memory with imapserver's functions:
// the answers the relay gave before it streamed them.
func referenceIMAP(t *testing.T, msgs [][]byte) *imapConn {
	t.Helper()
	mem := imapmemserver.New()
	u := imapmemserver.NewUser("ref", "ref")
	u.Create("INBOX", nil)
	mem.AddUser(u)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}},
		InsecureAuth: true,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	x := &imapConn{t: t, c: c, br: bufio.NewReader(c)}
	x.line()
	x.do("l", "LOGIN ref ref")
	for i, m := range msgs {
		tag := fmt.Sprintf("a%d", i)
		x.send(fmt.Sprintf("%s APPEND INBOX {%d}\r\n", tag, len(m)))
		if l, _ := x.line(); !strings.HasPrefix(l, "+") {
			t.Fatalf("APPEND: %q", l)
		}
		x.send(string(m) + "\r\n")
		if _, err := x.until(tag, false); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

var flagUpdate = regexp.MustCompile(`(?m)^\* \d+ FETCH \(UID \d+ FLAGS \([^)]*\)\)\r\n`)

// noFlagUpdates drops the flag updates go-imap's in-memory server sends
// after a FETCH that is not a PEEK, even in a mailbox opened read-only.
func noFlagUpdates(b []byte) []byte { return flagUpdate.ReplaceAll(b, nil) }

// deliver stores msg in user's INBOX as it is, past the policy.
func deliver(t testing.TB, r *relaytest.Relay, user string, msg io.WriterTo) {
	t.Helper()
	acc, err := r.Store().Lookup(user)
	if err != nil {
		t.Fatal(err)
	}
	in, err := r.Store().NewIncoming()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := msg.WriteTo(in); err != nil {
		in.Abort()
		t.Fatal(err)
	}
	if _, err := in.Deliver([]*mailbox.Account{acc}, "INBOX"); err != nil {
		t.Fatal(err)
	}
}

func crlf(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }

type corpusMsg struct {
	name string
	msg  []byte
	// normal messages (CRLF, a header that parses) get the same bytes for
	// every form. For the others the relay always sent the file for
	// BODY[] (go-imap rewrites the header), and now also for a range of
	// it.
	normal bool
	// noParts: a multipart without parts, for which go-imap cannot write
	// a BODYSTRUCTURE (it panics and drops the connection).
	noParts bool
}

func fetchCorpus(t *testing.T) []corpusMsg {
	mixed := crlf(`From: "Alice A." <alice@example.org>
To: bob@example.org, "Carol" <carol@example.net>
Cc: dave@example.org
Reply-To: list@example.org
Subject: =?utf-8?q?caf=C3=A9?= and
 a folded subject
Date: Mon, 02 Jan 2006 15:04:05 -0700
Message-ID: <m1@example.org>
In-Reply-To: <m0@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"
Content-Language: en, de

This is a multi-part message in MIME format.
--outer
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable
Content-ID: <t1@example.org>
Content-Description: the text

caf=C3=A9 line one
line two=
 continued
--outer
Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain

plain alternative
--alt
Content-Type: text/html; charset=us-ascii

<p>html alternative</p>
--alt--

--outer
Content-Type: application/octet-stream; name="a.bin"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="a.bin"
Content-Location: http://example.org/a.bin

AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v
MDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5f
--outer--
epilogue
`)
	attached := crlf(`From: bob@example.org
To: alice@example.org
Subject: fwd
Content-Type: multipart/mixed; boundary=b1

--b1
Content-Type: text/plain

see attached
--b1
Content-Type: message/rfc822
Content-Disposition: inline

From: carol@example.net
To: bob@example.org
Sender: s@example.net
Subject: inner
Date: Tue, 03 Jan 2006 10:00:00 +0000
Message-ID: <inner@example.net>
Content-Type: multipart/mixed; boundary=b2

--b2
Content-Type: text/plain

inner text
--b2
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

aGVsbG8gd29ybGQK
--b2--
--b1--
`)
	digest := crlf(`From: list@example.org
Subject: digest
Content-Type: multipart/digest; boundary=d

--d

From: a@example.org
Subject: one

first
--d

From: b@example.org
Subject: two

second
--d--
`)
	plain := crlf(`From: a@example.org
To: b@example.org
Subject: plain
Content-Type: text/plain

one line
two lines
`)
	deep := crlf(`From: a@example.org
Content-Type: multipart/mixed; boundary=l1

--l1
Content-Type: multipart/mixed; boundary=l2

--l2
Content-Type: multipart/mixed; boundary=l3

--l3
Content-Type: multipart/mixed; boundary=l4

--l4
Content-Type: text/plain

deepest
--l4--
--l3--
--l2--
--l1--
`)
	noClose := crlf(`From: a@example.org
Content-Type: multipart/mixed; boundary=nc

--nc
Content-Type: text/plain

part one
--nc
Content-Type: text/plain

part two never closed
`)
	topMessage := crlf(`From: a@example.org
Content-Type: message/rfc822

From: inner@example.org
Subject: wrapped
Content-Type: text/plain

wrapped text
`)
	lf := strings.ReplaceAll(string(attached), "\r\n", "\n")
	return []corpusMsg{
		{name: "Delta Chat encrypted", msg: testmsg.Encrypted(hAlice, hBob, 3000), normal: true},
		{name: "mixed with alternative and attachment", msg: mixed, normal: true},
		{name: "attached message", msg: attached, normal: true},
		{name: "digest", msg: digest, normal: true},
		{name: "plain", msg: plain, normal: true},
		{name: "nested four deep", msg: deep, normal: true},
		{name: "top-level message/rfc822", msg: topMessage, normal: true},
		{name: "empty body", msg: crlf("From: a@example.org\nSubject: empty\n\n"), normal: true},
		{name: "multipart without closing boundary", msg: noClose, normal: true},
		{name: "LF line ends", msg: []byte(lf)},
		{name: "header only, no blank line", msg: crlf("From: a@example.org\nSubject: x")},
		{name: "malformed header line", msg: crlf("From: a@example.org\nno colon here\n\nbody\n")},
		{name: "multipart without parts", msg: crlf("From: a@example.org\nContent-Type: multipart/mixed; boundary=x\n\njust text\n"), normal: true, noParts: true},
	}
}

// fetchForms are FETCH items, each asked alone and then all at once.
var fetchForms = []string{
	"BODY.PEEK[]", "BODY.PEEK[]<0.10>", "BODY.PEEK[]<7.100000>", "BODY.PEEK[]<100000.5>",
	"RFC822.HEADER", "RFC822.TEXT", "RFC822", "BODY[HEADER]", "BODY.PEEK[TEXT]",
	"BODY.PEEK[TEXT]<0.1>", "BODY.PEEK[TEXT]<3.17>",
	"BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)]",
	"BODY.PEEK[HEADER.FIELDS.NOT (Subject Autocrypt)]",
	"BODY.PEEK[1]", "BODY.PEEK[2]", "BODY.PEEK[3]", "BODY.PEEK[4]",
	"BODY.PEEK[1.1]", "BODY.PEEK[1.2]", "BODY.PEEK[2.1]", "BODY.PEEK[2.2]", "BODY.PEEK[2.3]",
	"BODY.PEEK[1.MIME]", "BODY.PEEK[2.MIME]", "BODY.PEEK[3.MIME]", "BODY.PEEK[2.1.MIME]",
	"BODY.PEEK[1.TEXT]", "BODY.PEEK[2.TEXT]", "BODY.PEEK[3.TEXT]",
	"BODY.PEEK[1.HEADER]", "BODY.PEEK[2.HEADER]", "BODY.PEEK[2.HEADER.FIELDS (Subject)]",
	"BODY.PEEK[2.HEADER.FIELDS.NOT (Subject)]", "BODY.PEEK[2.2.1]", "BODY.PEEK[2]<3.20>",
	"BODY.PEEK[1.1.1.1]", "BODY.PEEK[1.1.1.1.MIME]", "BODY.PEEK[1.1.1.1.1]",
	"BINARY.PEEK[]", "BINARY.PEEK[1]", "BINARY.PEEK[2]", "BINARY.PEEK[3]", "BINARY.PEEK[2.2]",
	"BINARY.PEEK[3]<2.5>", "BINARY.SIZE[]", "BINARY.SIZE[1]", "BINARY.SIZE[3]", "BINARY.SIZE[2.2]",
	"ENVELOPE", "BODYSTRUCTURE", "BODY",
}

// TestFetchMatchesGoIMAPReference: every FETCH form the relay streams
// answers byte for byte what go-imap's in-memory extraction answers (what
// the relay answered before), on a corpus of messages.
func TestFetchMatchesGoIMAPReference(t *testing.T) {
	corpus := fetchCorpus(t)
	r := relaytest.Start(t, nil)
	const u = "fetchrefs@localhost"
	if err := r.Store().CreateAccount(u, password, mailbox.Generated); err != nil {
		t.Fatal(err)
	}
	var msgs [][]byte
	for _, m := range corpus {
		deliver(t, r, u, bytes.NewReader(m.msg))
		msgs = append(msgs, m.msg)
	}
	ours := relayIMAP(t, r, u)
	ref := referenceIMAP(t, msgs)
	ours.do("s", "EXAMINE INBOX")
	ref.do("s", "EXAMINE INBOX")
	compare := func(name, items string, seq int) {
		t.Helper()
		cmd := fmt.Sprintf("FETCH %d (%s)", seq, items)
		got, want := ours.do("f", cmd), noFlagUpdates(ref.do("f", cmd))
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %s\n got %q\nwant %q", name, cmd, got, want)
		}
	}
	for i, m := range corpus {
		seq := i + 1
		var all []string
		for _, form := range fetchForms {
			if m.noParts && (form == "BODYSTRUCTURE" || form == "BODY") {
				continue
			}
			if !m.normal && (strings.HasPrefix(form, "BODY.PEEK[]") || form == "RFC822") {
				// The whole message was always the file, as it is.
				continue
			}
			compare(m.name, form, seq)
			all = append(all, form)
		}
		compare(m.name, strings.Join(all, " "), seq)
		if !m.normal {
			// A range of BODY[] is a range of the file.
			got := ours.do("f", fmt.Sprintf("FETCH %d (BODY.PEEK[]<3.20>)", seq))
			want := fmt.Sprintf("* %d FETCH (UID %d BODY[]<3> {20}\r\n%s)\r\n", seq, seq, m.msg[3:23])
			if !bytes.HasPrefix(got, []byte(want)) {
				t.Errorf("%s: BODY[]<3.20>: %q, want %q", m.name, got, want)
			}
		}
		if m.noParts {
			// go-imap cannot describe it; the relay gives the multipart
			// one empty text part (it used to drop the connection).
			got := ours.do("f", fmt.Sprintf("FETCH %d (BODYSTRUCTURE)", seq))
			if !bytes.Contains(got, []byte(`BODYSTRUCTURE (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed"`)) {
				t.Errorf("%s: BODYSTRUCTURE %q", m.name, got)
			}
		}
	}
	// Many messages at once, and pipelined.
	var pipelined strings.Builder
	for i := range 3 {
		fmt.Fprintf(&pipelined, "p%d FETCH 1:* (BODY.PEEK[1] BODY.PEEK[2.MIME] BINARY.SIZE[1] ENVELOPE)\r\n", i)
	}
	ours.send(pipelined.String())
	ref.send(pipelined.String())
	for i := range 3 {
		tag := fmt.Sprintf("p%d", i)
		got, err1 := ours.until(tag, true)
		want, err2 := ref.until(tag, true)
		want = noFlagUpdates(want)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("pipelined 1:*: got %q\nwant %q", got, want)
		}
	}
}

// SEARCH BODY and TEXT read the message file in pieces, the whole of it
// (they read only its first MiB before), and SEARCH HEADER a bounded header.
func TestSearchReadsWholeMessageInPieces(t *testing.T) {
	r := relaytest.Start(t, nil)
	const u = "searchers@localhost"
	if err := r.Store().CreateAccount(u, password, mailbox.Generated); err != nil {
		t.Fatal(err)
	}
	filler := strings.Repeat("filler line\r\n", 200_000) // 2.6 MiB
	deliver(t, r, u, strings.NewReader("From: a@example.org\r\nSubject: first\r\n\r\n"+filler+"Zebra at the end\r\n"))
	deliver(t, r, u, strings.NewReader("From: b@example.org\r\nSubject: zebra\r\n\r\nnothing\r\n"))
	x := relayIMAP(t, r, u)
	x.do("s", "EXAMINE INBOX")
	for _, c := range []struct{ criteria, want string }{
		{"BODY zEBRA", "* SEARCH 1\r\n"},
		{"TEXT zebra", "* SEARCH 1 2\r\n"},
		{"HEADER Subject ZEBRA", "* SEARCH 2\r\n"},
		{"BODY subject", "* SEARCH\r\n"},
		{"TEXT \"line Zebra\"", "* SEARCH\r\n"},
	} {
		got := x.do("q", "SEARCH "+c.criteria)
		if !bytes.HasPrefix(got, []byte(c.want)) {
			t.Errorf("SEARCH %s: %q, want %q", c.criteria, got, c.want)
		}
	}
}
