package imapext

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseLiteralHeader(t *testing.T) {
	tests := []struct {
		line    string
		size    int64
		nonSync bool
	}{
		{"a LOGIN {5}\r\n", 5, false},
		{"a LOGIN {5+}\r\n", 5, true},
		{"a APPEND INBOX ~{12}\r\n", 12, false},
		{"a LOGIN {5} \r\n", 5, false}, // imapserver accepts SP before CRLF
		{"a LOGIN {5}\n", 5, false},    // and a lone LF
		{"a LOGIN {0}\r\n", 0, false},
		{"a LOGIN {}\r\n", -1, false},
		{"a LOGIN {5}x\r\n", -1, false},
		{"a LOGIN 5}\r\n", -1, false},
		{"a LOGIN {99999999999999999999}\r\n", sizeUnparsed, false},
		{"a LOGIN {0000000000000000005}\r\n", sizeUnparsed, false}, // imapserver: 5
		{"{5}", -1, false},
	}
	for _, tt := range tests {
		lit := parseLiteralHeader([]byte(tt.line))
		if lit.size != tt.size || (lit.size >= 0 && lit.nonSync != tt.nonSync) {
			t.Errorf("%q: got %+v, want size %d nonSync %v", tt.line, lit, tt.size, tt.nonSync)
		}
	}
}

func TestParseCommandStart(t *testing.T) {
	tests := []struct{ line, tag, name string }{
		{"a1 noop\r\n", "a1", "NOOP"},
		{"a1 UID FETCH 1 (FLAGS)\r\n", "a1", "UID"},
		{"a1 ID(\"x\" NIL)\r\n", "a1", "ID"},
		{"+ a NOOP\r\n", "", ""},
		{"a+ NOOP\r\n", "", ""},
		{"a1\r\n", "", ""},
		{" NOOP\r\n", "", ""},
		{"a] NOOP\r\n", "", ""},
	}
	for _, tt := range tests {
		tag, name, ok := parseCommandStart([]byte(tt.line))
		if ok != (tt.tag != "") || tag != tt.tag || name != tt.name {
			t.Errorf("%q: got %q %q %v", tt.line, tag, name, ok)
		}
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// fuzzDispatcher plays the layer for serveCommands: it records every byte
// passed through and every command kept back, and takes the server's
// decisions (literal accepted or refused, continuation or completion) from
// the fuzzer.
type fuzzDispatcher struct {
	t        *testing.T
	r        *commandReader
	in       []byte
	cr       *countingReader
	decide   []byte
	out      []byte // passthrough bytes and kept-back commands, in order
	cmdStart int
	ownNames map[string]bool
	// skipFrom is where the rest of a command refused by the server starts;
	// passCommand skips it (non-synchronizing literal data).
	skipFrom int
}

func (d *fuzzDispatcher) accountSkipped() {
	if d.skipFrom >= 0 {
		d.out = append(d.out, d.in[d.skipFrom:d.consumed()]...)
		d.skipFrom = -1
	}
}

func (d *fuzzDispatcher) consumed() int { return d.cr.n - d.r.br.Buffered() }

func (d *fuzzDispatcher) yes() bool {
	if len(d.decide) == 0 {
		return true
	}
	b := d.decide[0]
	d.decide = d.decide[1:]
	return b&1 == 0
}

// keepBack records a command the layer consumed without passing it on.
func (d *fuzzDispatcher) keepBack(tag, name string) {
	start := d.in[d.cmdStart:]
	if tag != "" && !hasPrefixFold(start, tag+" "+name) {
		d.t.Fatalf("command %s %s kept back at offset %d, where the input is %q", tag, name, d.cmdStart, start[:min(len(start), 40)])
	}
	d.out = append(d.out, d.in[d.cmdStart:d.consumed()]...)
}

func (d *fuzzDispatcher) waiting() error {
	d.accountSkipped()
	d.cmdStart = d.consumed()
	return nil
}
func (d *fuzzDispatcher) reading()                {}
func (d *fuzzDispatcher) continuationLine(string) {}
func (d *fuzzDispatcher) isOwn(name string) bool  { return d.ownNames[name] }
func (d *fuzzDispatcher) send(p []byte) error     { d.out = append(d.out, p...); return nil }
func (d *fuzzDispatcher) begin(tag, name string) error {
	if d.ownNames[name] {
		d.t.Fatalf("own command %s passed through", name)
	}
	if !bytes.HasPrefix(d.in[d.cmdStart:], []byte(tag+" ")) {
		d.t.Fatalf("passthrough command %s does not start at a command boundary", tag)
	}
	return nil
}

func (d *fuzzDispatcher) sendAwait(p []byte, lit literal) (bool, error) {
	d.out = append(d.out, p...)
	more := d.yes()
	if !more && lit.size >= 0 {
		d.skipFrom = d.consumed()
	}
	return more, nil
}

func (d *fuzzDispatcher) refuse(tag string, lit literal) error {
	if err := d.r.discardRest(lit); err != nil {
		return err
	}
	d.keepBack(tag, "")
	return nil
}

func (d *fuzzDispatcher) mark() int                { return 0 }
func (d *fuzzDispatcher) settle(int) (bool, error) { return false, nil }
func (d *fuzzDispatcher) refuseFraming(tag string, e *framingError) error {
	d.keepBack(tag, "")
	return e
}

func (d *fuzzDispatcher) invalid(line []byte, lit literal) error {
	if err := d.r.discardRest(lit); err != nil {
		return err
	}
	d.keepBack("", "")
	return nil
}

func (d *fuzzDispatcher) handle(tag, name string, line []byte, lit literal) error {
	accept := d.yes()
	cmd, rej, err := d.r.readOwn(line, lit, maxOwnCommand, func(int64) error {
		if accept {
			return nil
		}
		return errTooBig
	}, func() error { return nil })
	if err != nil {
		return err
	}
	if rej == nil {
		if !bytes.Equal(cmd, d.in[d.cmdStart:d.consumed()]) {
			d.t.Fatalf("buffered command %q differs from its input bytes", cmd)
		}
		// The argument parsers must not panic on any buffered command.
		a := newArgs(cmd)
		a.astring()
		a.sp()
		a.nstring()
		a.list(true, func() bool { _, ok := a.str(); return ok })
	}
	d.keepBack(tag, name)
	return nil
}

func FuzzFraming(f *testing.F) {
	seeds := []string{
		"a1 NOOP\r\na2 GETMETADATA \"\" /shared/comment\r\na3 NOOP\r\n",
		"s1 SETMETADATA INBOX (/private/devicetoken {5}\r\nabcde)\r\ns2 NOOP\r\n",
		"s1 SETMETADATA INBOX (/private/x {5+}\r\nabcde /private/y {3}\r\nxyz)\r\n",
		"a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\na2 NOOP\r\n",
		"i1 IDLE\r\nDONE\r\ni2 ID NIL\r\n",
		"p1 APPEND INBOX {10}\r\n0123456789\r\np2 LOGOUT\r\n",
		"p1 APPEND INBOX {5000+}\r\n" + strings.Repeat("x", 5000) + "\r\n",
		"p1 LOGIN {5000+}\r\n" + strings.Repeat("a1 NOOP\r\n", 600) + "\r\n",
		"\r\n+ junk {3+}\r\nabc\r\n* x\r\n",
		"c1 COMPRESS DEFLATE\r\nx1 UID FETCH 1:* (FLAGS)\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s), []byte{0, 1, 0, 0, 1})
	}
	f.Fuzz(func(t *testing.T, in, decide []byte) {
		done := make(chan struct{})
		defer close(done)
		go func() {
			select {
			case <-done:
			case <-time.After(3 * time.Second):
				buf := make([]byte, 1<<16)
				n := runtime.Stack(buf, true)
				panic(fmt.Sprintf("HANG %q %q\n%s", in, decide, buf[:n]))
			}
		}()
		cr := &countingReader{r: bytes.NewReader(in)}
		r := &commandReader{br: bufio.NewReaderSize(cr, 64)}
		d := &fuzzDispatcher{
			t: t, r: r, in: in, cr: cr, decide: decide,
			ownNames: map[string]bool{"GETMETADATA": true, "SETMETADATA": true, "ID": true, "COMPRESS": true, "GETQUOTA": true},
		}
		d.skipFrom = -1
		err := serveCommands(r, d)
		d.accountSkipped()
		if !bytes.HasPrefix(in, d.out) {
			t.Fatalf("forwarded bytes are not the input in order:\nin  %q\nout %q", in, d.out)
		}
		if errors.Is(err, io.EOF) && len(d.out) != len(in) {
			t.Fatalf("clean end but %d of %d bytes accounted for", len(d.out), len(in))
		}
	})
}
