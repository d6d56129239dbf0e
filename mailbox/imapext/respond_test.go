package imapext

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// recordSink records what respFramer reports, hiding every tagged response
// as the layer does for internal commands.
type recordSink struct {
	got    []byte
	events []string
	hidden int
}

func (s *recordSink) respStart(kind respKind, _ []byte) bool {
	s.events = append(s.events, fmt.Sprint("start ", kind))
	return kind == respTagged && s.hidden >= 0
}
func (s *recordSink) firstLine(b []byte) { s.got = append(s.got, b...) }
func (s *recordSink) out(b []byte)       { s.got = append(s.got, b...) }
func (s *recordSink) respEnd(kind respKind, ok bool) {
	s.events = append(s.events, fmt.Sprint("end ", kind, " ", ok))
}

// feedChunks feeds in to a framer in pieces whose sizes come from cuts.
func feedChunks(in, cuts []byte, hide bool) *recordSink {
	s := &recordSink{}
	if !hide {
		s.hidden = -1
	}
	var f respFramer
	for len(in) > 0 {
		n := len(in)
		if len(cuts) > 0 {
			n = min(n, int(cuts[0])*int(cuts[0])+1)
			cuts = cuts[1:]
		}
		f.feed(in[:n], s)
		in = in[n:]
	}
	if !hide {
		// What is held back is the unfinished line at the end.
		s.got = append(s.got, f.part...)
	}
	return s
}

func TestFramerChunks(t *testing.T) {
	long := strings.Repeat("x", 5000)
	in := "* OK [CAPABILITY IMAP4rev1] hi\r\n" +
		"* 1 FETCH (BODY[] {5}\r\nabcde FLAGS (\\Seen))\r\n" +
		"* 2 FETCH (BODY[] {10}\r\n0123456789)\r\n" +
		"+ Ready\r\n" +
		"* LIST () \"/\" " + long + " {3}\r\nabc\r\n" +
		"a1 OK done\r\n"
	whole := feedChunks([]byte(in), nil, false)
	want := []string{"start 0", "end 0 false", "start 0", "end 0 false", "start 0", "end 0 false",
		"start 2", "end 2 false", "start 0", "end 0 false", "start 1", "end 1 true"}
	if fmt.Sprint(whole.events) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", whole.events, want)
	}
	if string(whole.got) != in {
		t.Fatalf("output differs")
	}
	for _, step := range []int{1, 2, 3, 7, 23, 24, 25, 100, 2047, 2048, 2049} {
		s := &recordSink{hidden: -1}
		var f respFramer
		for b := []byte(in); len(b) > 0; {
			n := min(step, len(b))
			f.feed(b[:n], s)
			b = b[n:]
		}
		if string(s.got) != in || fmt.Sprint(s.events) != fmt.Sprint(want) {
			t.Fatalf("in pieces of %d: events %v", step, s.events)
		}
		if !f.atBoundary() {
			t.Fatalf("in pieces of %d: not at a boundary at the end", step)
		}
	}
	hidden := feedChunks([]byte(in), []byte{3, 1, 9, 40}, true)
	if want := strings.TrimSuffix(in, "a1 OK done\r\n"); string(hidden.got) != want {
		t.Fatalf("hidden tagged response: got %q", hidden.got[max(0, len(hidden.got)-20):])
	}
}

func FuzzRespFramer(f *testing.F) {
	f.Add([]byte("* OK hi\r\na1 OK done\r\n"), []byte{1, 2, 3})
	f.Add([]byte("* 1 FETCH (BODY[] {5}\r\nabcde)\r\n+ go\r\nz BAD x\n"), []byte{0, 5})
	f.Add([]byte("* x {3+}\r\nab\nc\r\n* "+strings.Repeat("y", 3000)+"{2}\r\nzz\r\nt OK\r\n"), []byte{40, 0, 1})
	f.Fuzz(func(t *testing.T, in, cuts []byte) {
		whole := feedChunks(in, nil, false)
		if !bytes.Equal(whole.got, in) {
			t.Fatalf("output differs from input")
		}
		pieces := feedChunks(in, cuts, false)
		if !bytes.Equal(pieces.got, in) {
			t.Fatalf("output in pieces differs from input")
		}
		// Lines longer than maxRespLine are classified from their first
		// piece; below that the result must not depend on the pieces.
		if bytes.Count(in, []byte("\n")) > 0 && maxLineLen(in) < maxRespLine {
			if fmt.Sprint(whole.events) != fmt.Sprint(pieces.events) {
				t.Fatalf("events differ:\nwhole  %v\npieces %v", whole.events, pieces.events)
			}
		}
		hidden := feedChunks(in, cuts, true)
		if len(hidden.got) > len(in) {
			t.Fatalf("hiding added bytes")
		}
	})
}

func maxLineLen(b []byte) int {
	m := 0
	for _, l := range bytes.SplitAfter(b, []byte("\n")) {
		m = max(m, len(l))
	}
	return m
}

// countSink counts what respFramer passes on, keeping none of it.
type countSink struct{ n, ends int64 }

func (s *countSink) respStart(respKind, []byte) bool { return false }
func (s *countSink) firstLine(b []byte)              { s.n += int64(len(b)) }
func (s *countSink) out(b []byte)                    { s.n += int64(len(b)) }
func (s *countSink) respEnd(respKind, bool)          { s.ends++ }

// The layer relays a FETCH literal as it comes: every byte of it imapserver
// wrote is passed on before the next write, whatever its size, and the
// framer holds no more than a literal header's worth of a line.
func TestFramerStreamsLiterals(t *testing.T) {
	const size = 64 << 20
	head := fmt.Sprintf("* 1 FETCH (UID 1 BODY[1] {%d}\r\n", size)
	piece := bytes.Repeat([]byte("0123456789abcdef"), 256) // 4 KiB
	s := &countSink{}
	var f respFramer
	var fed int64
	feed := func(b []byte) {
		t.Helper()
		f.feed(b, s)
		fed += int64(len(b))
		if s.n != fed || len(f.part) > 0 {
			t.Fatalf("after %d bytes: %d passed on, %d held", fed, s.n, len(f.part))
		}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	feed([]byte(head))
	for left := size; left > 0; left -= len(piece) {
		feed(piece[:min(len(piece), left)])
	}
	feed([]byte(")\r\na OK FETCH completed\r\n"))
	runtime.ReadMemStats(&after)
	if s.ends != 2 || !f.atBoundary() {
		t.Fatalf("%d responses ended, at boundary %v", s.ends, f.atBoundary())
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
		t.Errorf("relaying a %d MiB literal allocated %d KiB", size>>20, grew>>10)
	}
}
