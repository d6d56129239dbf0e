package relay_test

import (
	"bufio"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// writerTo writes a message as a stream, so that the test does not hold
// it in memory either.
type writerTo func(w io.Writer) error

func (f writerTo) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 64<<10)
	if err := f(bw); err != nil {
		return cw.n, err
	}
	err := bw.Flush()
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func repeatLines(w io.Writer, line string, total int64) error {
	for n := int64(0); n+int64(len(line)) <= total; n += int64(len(line)) {
		if _, err := io.WriteString(w, line); err != nil {
			return err
		}
	}
	return nil
}

// bigParts is a message of about size bytes: a text part, and an
// attached message holding a base64 attachment, each about half of it.
func bigParts(size int64) (writerTo, int64) {
	textLine := strings.Repeat("x", 998) + "\r\n"
	b64Line := strings.Repeat("QUJD", 19) + "\r\n"
	half := size/2 - 4096
	textSize := half / int64(len(textLine)) * int64(len(textLine))
	return func(w io.Writer) error {
		io.WriteString(w, "From: <"+hAlice+">\r\nTo: <"+hBob+">\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n")
		io.WriteString(w, "--b1\r\nContent-Type: text/plain\r\n\r\n")
		repeatLines(w, textLine, half)
		io.WriteString(w, "\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: <"+hAlice+">\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=\"b2\"\r\n\r\n")
		io.WriteString(w, "--b2\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
		repeatLines(w, b64Line, half)
		_, err := io.WriteString(w, "\r\n--b2--\r\n\r\n--b1--\r\n")
		return err
	}, textSize
}

// manyParts is a multipart message of about size bytes in parts of about
// 300 bytes (100000 of them for 30 MiB).
func manyParts(size int64) writerTo {
	part := "--p\r\nContent-Type: text/plain\r\n\r\n" + strings.Repeat("y", 250) + "\r\n"
	return func(w io.Writer) error {
		io.WriteString(w, "From: <"+hAlice+">\r\nSubject: parts\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n")
		repeatLines(w, part, size-1024)
		_, err := io.WriteString(w, "--p--\r\n")
		return err
	}
}

// longHeader is a message whose header is about size bytes: one field of
// folded lines.
func longHeader(size int64) writerTo {
	return func(w io.Writer) error {
		io.WriteString(w, "From: <"+hAlice+">\r\nSubject: header\r\nX-Long: start\r\n")
		repeatLines(w, " "+strings.Repeat("z", 996)+"\r\n", size-1024)
		_, err := io.WriteString(w, "\r\nshort body\r\n")
		return err
	}
}

func heapNow() runtime.MemStats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms
}

// fetchPerConnBound is the most the relay's heap may grow by per
// connection answering FETCH, whatever the message and the form: about
// one parsed header block of 1 MiB and fixed buffers; the rest is slack.
const fetchPerConnBound = 4 << 20

// TestHostileFetchMemoryExhaustion: connections of one account FETCHing
// the worst forms (sections, partials, BINARY, BODYSTRUCTURE, ENVELOPE,
// 1:*, pipelined) of the largest messages allowed, a 30 MiB multipart, one
// of 100000 parts and one with a 30 MiB header, make the relay's heap
// grow by less than fetchPerConnBound (4 MiB) per connection: FETCH streams from
// the message file (docs/SECURITY.md, "Memory exhaustion by FETCH").
func TestHostileFetchMemoryExhaustion(t *testing.T) {
	// The relay's own timeouts: the slow-client ones of hostileRelay
	// would cut off a 30 MiB FETCH on a busy machine.
	r := relaytest.Start(t, nil)
	if err := r.Store().CreateAccount(hBob, password, mailbox.Generated); err != nil {
		t.Fatal(err)
	}
	size := r.Cfg.MaxMessageSize
	big, textSize := bigParts(size)
	deliver(t, r, hBob, big)
	deliver(t, r, hBob, manyParts(size))
	deliver(t, r, hBob, longHeader(size))
	const conns = 20

	open := func() []*imapConn {
		xs := make([]*imapConn, conns)
		for i := range xs {
			xs[i] = relayIMAP(t, r, hBob)
			xs[i].do("s", "SELECT INBOX")
		}
		return xs
	}

	// Literals: every connection starts a large literal and stops reading
	// it, so that the relay is in the middle of all of them at once.
	bigForms := []string{
		"BODY.PEEK[TEXT]", "BODY.PEEK[1]", "BODY.PEEK[2]", "BODY.PEEK[2.1]",
		"BINARY.PEEK[2.1]", "BODY.PEEK[2.TEXT]", "BODY.PEEK[1]<0.20000000>",
		"RFC822.TEXT", "BODY.PEEK[2.1.TEXT]", "BINARY.PEEK[1]",
	}
	xs := open()
	base := heapNow()
	var wg sync.WaitGroup
	for i, x := range xs {
		form := bigForms[i%len(bigForms)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			// 1:* over all three messages, many sections, and a pipelined
			// second FETCH.
			x.send("f UID FETCH 1:* (" + form + " BODYSTRUCTURE ENVELOPE " + form + ")\r\ng FETCH 1 (" + form + ")\r\n")
			for range 100 {
				l, err := x.line()
				if err != nil {
					t.Errorf("%s: %v", form, err)
					return
				}
				if literalSize(l) > 1<<20 {
					return // in the middle of a large literal
				}
				if strings.HasPrefix(l, "f ") {
					t.Errorf("%s: %q before a large literal", form, l)
					return
				}
			}
			t.Errorf("%s: no large literal", form)
		}()
	}
	wg.Wait()
	mid := heapNow()
	literalGrowth := int64(mid.HeapAlloc) - int64(base.HeapAlloc)
	t.Logf("heap: %d KiB before, %d KiB with %d connections inside a literal: %d KiB per connection",
		base.HeapAlloc>>10, mid.HeapAlloc>>10, conns, literalGrowth/conns>>10)
	if literalGrowth > conns*fetchPerConnBound {
		t.Errorf("heap grew by %d MiB (%d KiB per connection) while %d connections were inside a FETCH literal, want under %d KiB each",
			literalGrowth>>20, literalGrowth/conns>>10, conns, fetchPerConnBound>>10)
	}
	for _, x := range xs {
		x.c.Close()
	}

	// Answers without large literals: what the relay parses to give them
	// is never held; the heap is sampled while they run.
	smallForms := []string{
		"1 (BODYSTRUCTURE)", "1 (BODY.PEEK[1]<0.1>)", "1 (BODY.PEEK[TEXT]<1000.10>)",
		"1 (BINARY.SIZE[2.1])", "1 (BINARY.PEEK[2.1]<5.5>)", "1 (BODY.PEEK[2.1.MIME] BODY.PEEK[2.HEADER])",
		"2 (BODYSTRUCTURE)", "2 (BODY.PEEK[99999])", "2 (BODY.PEEK[50000.MIME])", "2 (BODY)",
		"3 (ENVELOPE)", "3 (BODYSTRUCTURE)", "3 (BODY.PEEK[HEADER.FIELDS (Subject)])",
		"3 (BODY.PEEK[HEADER]<0.100>)", "3 (BODY.PEEK[TEXT])", "1:* (ENVELOPE BODY BINARY.SIZE[1])",
	}
	old := debug.SetGCPercent(10)
	defer debug.SetGCPercent(old)
	parsePeak := func(what string, forms []string) int64 {
		xs := open()
		base := heapNow()
		stop := make(chan struct{})
		peak := peakHeap(stop, 5*time.Millisecond, func(ms *runtime.MemStats) uint64 { return ms.HeapAlloc })
		for i, x := range xs {
			form := forms[i%len(forms)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				x.send("h FETCH " + form + "\r\n")
				if _, err := x.until("h", false); err != nil {
					t.Errorf("FETCH %s: %v", form, err)
				}
			}()
		}
		wg.Wait()
		close(stop)
		p := <-peak
		growth := int64(p) - int64(base.HeapAlloc)
		t.Logf("%s: heap %d KiB before, peak %d KiB while %d connections parsed: %d KiB per connection",
			what, base.HeapAlloc>>10, p>>10, conns, growth/conns>>10)
		if growth > conns*fetchPerConnBound {
			t.Errorf("%s: heap peaked %d MiB (%d KiB per connection) above the start while %d connections parsed, want under %d KiB each",
				what, growth>>20, growth/conns>>10, conns, fetchPerConnBound>>10)
		}
		for _, x := range xs {
			x.c.Close()
		}
		return growth / conns
	}
	mixGrowth := parsePeak("all forms", smallForms)
	// The most one connection may hold: a header block of 1 MiB parsed.
	headerGrowth := parsePeak("30 MiB header", smallForms[10:15])

	// The answers are whole and right: the largest section in full.
	x := relayIMAP(t, r, hBob)
	x.do("s", "EXAMINE INBOX")
	x.send("t FETCH 1 (BODY.PEEK[1])\r\n")
	l, err := x.line()
	if err != nil || literalSize(l) != textSize {
		t.Fatalf("BODY[1]: %q %v, want a literal of %d", l, err, textSize)
	}
	if _, err := x.until("t", false); err != nil {
		t.Fatal(err)
	}
	x.do("n", "NOOP")
	record(t, "FETCH of the worst forms of 30 MiB messages, 20 connections", "imaps",
		fmt.Sprintf("heap growth per connection: %d KiB inside large literals, peaks of %d KiB parsing all forms and %d KiB parsing the 30 MiB header (bound %d KiB)",
			literalGrowth/conns>>10, mixGrowth>>10, headerGrowth>>10, fetchPerConnBound>>10))
}
