package imapext

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// framingLog records, for one connection, every tagged response of the
// imapserver behind the layer beside the passthrough command the layer
// framed and expected it to answer.
type framingLog struct {
	mu    sync.Mutex
	diffs []string
	n     int
}

func (fl *framingLog) tagged(resp []byte, want pendingCmd) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.n++
	tag, rest, _ := bytes.Cut(resp, []byte(" "))
	switch {
	case want.tag == "":
		fl.diffs = append(fl.diffs, "imapserver answered "+string(tag)+", a command the layer never passed")
	case string(tag) != want.tag:
		fl.diffs = append(fl.diffs, "imapserver answered "+string(tag)+" where the layer passed "+want.tag+" "+want.name)
	default:
		// "tag OK NAME completed" names the command imapserver ran.
		if name, ok := bytes.CutPrefix(rest, []byte("OK ")); ok {
			if _, after, ok := bytes.Cut(name, []byte("] ")); ok && name[0] == '[' {
				name = after
			}
			if n, ok := bytes.CutSuffix(bytes.TrimRight(name, "\r\n"), []byte(" completed")); ok &&
				!strings.HasPrefix(strings.ToUpper(string(n)), want.name) && !want.internal {
				fl.diffs = append(fl.diffs, "imapserver ran "+string(n)+" where the layer passed "+want.name)
			}
		}
	}
}

func (fl *framingLog) result() []string {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return append([]string(nil), fl.diffs...)
}

// runFraming feeds in, then a final NOOP (tag zz9), to a layer with a real
// imapserver behind it (imapmemserver, LOGIN through imapserver, IDLE and
// literals passed through) and returns where the two disagreed on the
// sequence of commands, and what the client received. With complete set,
// in is a whole session and the replies are read up to the final NOOP's;
// otherwise the client's side is closed after it, and replies are read
// until the layer closes.
func runFraming(t *testing.T, in []byte, complete bool) ([]string, string) {
	t.Helper()
	fl := &framingLog{}
	env := newTestEnv(t, func(o *Options) {
		o.ExtraCaps = []string{"ID"}
		o.onTagged = fl.tagged
	})
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		// The layer may stop reading (it closes on refusals); the write
		// then fails, which is fine.
		c.Write(in)
		c.Write([]byte("\r\nzz9 NOOP\r\n"))
		if !complete {
			c.(*net.TCPConn).CloseWrite()
		}
	}()
	var out []byte
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadBytes('\n')
		out = append(out, line...)
		if err == nil && complete && bytes.HasPrefix(line, []byte("zz9 ")) {
			break
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Every command ends in a reply or a close within moments; a
			// stall is the layer waiting for answers to commands
			// imapserver reads as part of an earlier one (or the reverse).
			fl.mu.Lock()
			fl.diffs = append(fl.diffs, "stalled: the layer and imapserver wait for each other")
			fl.mu.Unlock()
		} else if err != io.EOF && !isReset(err) {
			t.Fatalf("reading the replies: %v (got %q)", err, clip(out))
		}
		break
	}
	return fl.result(), string(out)
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

func clip(b []byte) []byte {
	if len(b) > 400 {
		return append(b[:200:200], append([]byte(" ... "), b[len(b)-200:]...)...)
	}
	return b
}

const framingLogin = "l1 LOGIN " + testUser + " " + testPass + "\r\n"

// framingSeeds are the known ways to make imapserver (go-imap
// v2.0.0-beta.8) read other commands than the layer frames, each followed
// by what it smuggles.
var framingSeeds = map[string]string{
	// Its decoder stops after 50 KiB of a command, skips nothing and
	// parses the rest as a new command.
	"padding past 50 KiB":     "a NOOP " + strings.Repeat("x", 51195) + "x LOGIN " + testUser + " " + testPass + "\r\n",
	"padding in a later line": framingLogin + "a CREATE {1}\r\nb " + strings.Repeat("x", 51195) + "y NOOP\r\n",
	// A CR without LF ends a line for its error recovery.
	"bare CR":             "a NOOP x\rb LOGIN " + testUser + " " + testPass + "\r\n",
	"bare CR after login": framingLogin + "a NOOP x\rb SELECT INBOX\r\n",
	// A quoted string runs on over LF.
	"quoted string over LF": framingLogin + "a SELECT \"INBOX\r\nb NOOP\r\nc NOOP\"\r\nd NOOP\r\n",
	// A literal size of 19 digits that fits an int64.
	"19-digit literal": framingLogin + "a CREATE {0000000000000000005}\r\nab\r\nc NOOP\r\nd NOOP\r\n",
	// A command that fails right after a literal (a mailbox name that is
	// not modified UTF-7) leaves the rest of the line unread.
	"rest of a line after a literal": "a SELECT {2}\r\n&Zx LOGIN " + testUser + " " + testPass + "\r\n",
	// APPEND with text after its message answers nothing at all.
	"text after APPEND's message": framingLogin + "a APPEND INBOX {2}\r\nhi b NOOP\r\nc NOOP\r\n",
	// ReadLine on a 4096-byte buffer for IDLE's DONE and AUTHENTICATE's
	// responses.
	"long line after IDLE":         framingLogin + "i SELECT INBOX\r\ni2 IDLE\r\n" + strings.Repeat("x", 5000) + " NOOP\r\n",
	"long line after AUTHENTICATE": "a AUTHENTICATE PLAIN\r\n" + strings.Repeat("x", 5000) + " LOGIN " + testUser + " " + testPass + "\r\n",
}

// TestIMAPCommandSmugglingFramingAgrees runs each known smuggling trick
// through the layer with a real imapserver behind it: imapserver must
// answer exactly the commands the layer passed, in order, and the smuggled
// login must not happen.
func TestIMAPCommandSmugglingFramingAgrees(t *testing.T) {
	for name, in := range framingSeeds {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			diffs, out := runFraming(t, []byte(in), false)
			if len(diffs) > 0 {
				t.Fatalf("layer and imapserver disagree: %q\nreplies: %q", diffs, clip([]byte(out)))
			}
			if !strings.HasPrefix(in, framingLogin) && strings.Contains(out, "OK LOGIN completed") {
				t.Fatalf("smuggled LOGIN succeeded: %q", clip([]byte(out)))
			}
			if !strings.Contains(out, "BAD") && !strings.Contains(out, "* BYE") {
				t.Fatalf("no BAD or BYE for the smuggling attempt: %q", clip([]byte(out)))
			}
		})
	}
}

// TestIMAPCommandSmugglingLegitimateFraming: well-formed sessions, literals
// of all kinds included, are framed alike and answered in full.
func TestIMAPCommandSmugglingLegitimateFraming(t *testing.T) {
	for _, in := range framingLegit {
		diffs, out := runFraming(t, []byte(in), true)
		if len(diffs) > 0 {
			t.Fatalf("%q: layer and imapserver disagree: %q\nreplies: %q", in, diffs, out)
		}
		if !strings.Contains(out, "zz9 OK NOOP completed") {
			t.Fatalf("%q: session did not reach the final NOOP: %q", in, clip([]byte(out)))
		}
	}
}

var framingLegit = []string{
	framingLogin + "a SELECT INBOX\r\nb UID FETCH 1:* (FLAGS)\r\nc NOOP\r\n",
	framingLogin + "a CREATE \"x \\\"y\\\\\"\r\nb LIST \"\" *\r\n",
	framingLogin + "a APPEND INBOX {5}\r\nhello\r\nb APPEND INBOX (\\Seen) {6+}\r\nhello!\r\n",
	framingLogin + "a APPEND INBOX ~{3}\r\nabc\r\n",
	framingLogin + "a SELECT {5}\r\nINBOX\r\nb IDLE\r\nDONE\r\n",
	"a LOGIN {" + itoa(len(testUser)) + "}\r\n" + testUser + " {" + itoa(len(testPass)) + "+}\r\n" + testPass + "\r\n",
	"a AUTHENTICATE PLAIN\r\n" + plainResp() + "\r\n",
	framingLogin + "a NOOP " + strings.Repeat("x", 40000) + "\r\n",
	framingLogin + "a ID NIL\r\nb CREATE  x\r\n\r\n",
}

func itoa(n int) string { return string(appendInt(nil, int64(n))) }

func plainResp() string {
	return "AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==" // "\0alice@example.org\0secret"
}

// FuzzIMAPCommandSmuggling is the differential fuzz target: the same bytes
// go through the layer's framing and, behind it, imapserver's decoder;
// any command imapserver answers that the layer did not frame and pass,
// or answers out of the layer's order, is a failure.
func FuzzIMAPCommandSmuggling(f *testing.F) {
	for _, s := range framingSeeds {
		f.Add([]byte(s))
	}
	for _, s := range framingLegit {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if diffs, out := runFraming(t, in, false); len(diffs) > 0 {
			t.Fatalf("layer and imapserver disagree on %q: %q\nreplies: %q", clip(in), diffs, clip([]byte(out)))
		}
	})
}
