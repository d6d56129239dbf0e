package imapext

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// chunkReader delivers data as the network might: no read goes past the
// next cut (a position in data).
type chunkReader struct {
	data []byte
	cuts []int // ascending
	pos  int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.pos == len(r.data) {
		return 0, io.EOF
	}
	end := len(r.data)
	for len(r.cuts) > 0 && r.cuts[0] <= r.pos {
		r.cuts = r.cuts[1:]
	}
	if len(r.cuts) > 0 {
		end = min(end, r.cuts[0])
	}
	n := copy(p, r.data[r.pos:end])
	r.pos += n
	return n, nil
}

// imapCommands returns random IMAP-like commands, about size bytes in all.
// Some repeat a piece of what was sent 24 to 32 KiB before, so that a
// compressor refers back that far.
func imapCommands(rng *rand.Rand, size int) []string {
	var cmds []string
	var sent []byte
	tag := 0
	for len(sent) < size {
		tag++
		var c string
		switch k := rng.IntN(10); {
		case k < 2:
			c = fmt.Sprintf("a%d NOOP\r\n", tag)
		case k < 4:
			c = fmt.Sprintf("a%d UID FETCH %d:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO CHAT-VERSION)])\r\n", tag, rng.IntN(1000))
		case k < 5:
			c = fmt.Sprintf("a%d IDLE\r\n", tag)
			cmds = append(cmds, c)
			sent = append(sent, c...)
			c = "DONE\r\n"
		case k < 6:
			c = fmt.Sprintf("a%d UID STORE %d +FLAGS.SILENT (\\Seen)\r\n", tag, rng.IntN(1000))
		case k < 8:
			raw := make([]byte, rng.IntN(6000))
			for i := range raw {
				raw[i] = byte(rng.Uint32())
			}
			lit := base64.StdEncoding.EncodeToString(raw)
			c = fmt.Sprintf("a%d APPEND INBOX {%d+}\r\n%s\r\n", tag, len(lit), lit)
		default:
			if len(sent) < 33<<10 {
				continue
			}
			back := 24<<10 + rng.IntN(8<<10-300)
			from := len(sent) - back
			c = fmt.Sprintf("a%d SEARCH TEXT {300+}\r\n%s\r\n", tag, sent[from:from+300])
		}
		cmds = append(cmds, c)
		sent = append(sent, c...)
	}
	return cmds
}

// deflateCommands compresses cmds as a client does, each ended with a
// sync flush: with one compressor at level (fresh false), or with a fresh
// one per command at a level of its own. It returns the stream and where
// each command's part ends.
func deflateCommands(t testing.TB, rng *rand.Rand, cmds []string, level int, fresh bool) ([]byte, []int) {
	var buf bytes.Buffer
	var ends []int
	var w *flate.Writer
	for _, c := range cmds {
		if w == nil || fresh {
			if fresh {
				level = rng.IntN(12) - 2 // HuffmanOnly to BestCompression
			}
			var err error
			if w, err = flate.NewWriter(&buf, level); err != nil {
				t.Fatal(err)
			}
		}
		w.Write([]byte(c))
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		ends = append(ends, buf.Len())
	}
	return buf.Bytes(), ends
}

// The decoder of a client's stream goes at every sync flush and comes back
// with the history: what comes out is what went in, byte for byte, though
// the stream refers back up to 32 KiB across the parks.
func TestInflaterParksAtEverySyncFlush(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cmds := imapCommands(rng, 160<<10)
	type mode struct {
		level int
		fresh bool
	}
	modes := []mode{{flate.HuffmanOnly, false}, {flate.NoCompression, false}, {flate.BestSpeed, false},
		{flate.DefaultCompression, false}, {flate.BestCompression, false}, {0, true}}
	for _, m := range modes {
		t.Run(fmt.Sprintf("level=%d,fresh=%v", m.level, m.fresh), func(t *testing.T) {
			stream, ends := deflateCommands(t, rng, cmds, m.level, m.fresh)
			for _, exact := range []bool{true, false} {
				cr := &chunkReader{data: stream, cuts: ends}
				z := newInflater(bufio.NewReaderSize(cr, bufSize))
				var all []byte
				buf := make([]byte, 70<<10)
				for i, c := range cmds {
					got := buf[:0]
					for len(got) < len(c) {
						p := buf[len(got):]
						if exact {
							// Ends where the command does: the probe finds out
							// that nothing more is coming.
							p = p[:len(c)-len(got)]
						} else {
							p = p[:1+rng.IntN(len(p)-1)]
						}
						n, err := z.Read(p)
						if err != nil {
							t.Fatalf("command %d: %v", i, err)
						}
						got = buf[:len(got)+n]
					}
					if string(got) != c {
						t.Fatalf("command %d: got %q, want %q", i, got, c)
					}
					all = append(all, got...)
					before := inflaterParks.Load()
					if !z.park() {
						t.Fatalf("command %d: not parked at its sync flush", i)
					}
					if z.dec != nil || z.in.src != nil || inflaterParks.Load() != before+1 {
						t.Fatalf("command %d: parked still holding its decoder or buffer", i)
					}
					h := all[max(0, len(all)-maxHistory):]
					if !bytes.Equal(z.hist.bytes(), h) || cap(z.hist.b) > maxHistory {
						t.Fatalf("command %d: history of %d bytes (cap %d), want the last %d", i, len(z.hist.b), cap(z.hist.b), len(h))
					}
					z.resume(cr)
				}
			}
		})
	}
}

// checkInflater decodes stream read in pieces cut at cuts, parking
// whenever the inflater allows it, and checks that the output is that of
// a decoder that never parks. It returns how many times it parked.
func checkInflater(t *testing.T, stream []byte, cuts []int, sizes []byte) int {
	t.Helper()
	want, wantErr := io.ReadAll(flate.NewReader(bytes.NewReader(stream)))
	cr := &chunkReader{data: stream, cuts: cuts}
	z := newInflater(bufio.NewReaderSize(cr, bufSize))
	var got []byte
	var err error
	buf := make([]byte, 4096)
	parks := 0
	for i := 0; err == nil; i++ {
		size := len(buf)
		if len(sizes) > 0 {
			size = 1 + int(sizes[i%len(sizes)])*int(sizes[(i+1)%len(sizes)])%len(buf)
		}
		var n int
		n, err = z.Read(buf[:size])
		got = append(got, buf[:n]...)
		if n == 0 && err == nil {
			t.Fatal("Read returned nothing")
		}
		if err == nil && z.park() {
			parks++
			z.resume(cr)
		}
	}
	if err == errInflateStep {
		t.Fatal("the probe found the decoder out of step")
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("parking changed the output: got %d bytes, want %d (%v)", len(got), len(want), wantErr)
	}
	if (err == io.EOF) != (wantErr == nil) {
		t.Fatalf("ended with %v, want %v", err, wantErr)
	}
	return parks
}

// Delivered byte by byte, the stream parks exactly where the inflater says
// it may, which must not change what comes out: at the sync flushes.
func TestInflaterByteByByte(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	cmds := imapCommands(rng, 80<<10)
	stream, _ := deflateCommands(t, rng, cmds, flate.DefaultCompression, false)
	cuts := make([]int, len(stream))
	for i := range cuts {
		cuts[i] = i + 1
	}
	if parks := checkInflater(t, stream, cuts, []byte{7, 200, 3}); parks < len(cmds)/2 {
		t.Fatalf("parked %d times for %d commands", parks, len(cmds))
	}
}

// stored is a DEFLATE stored block (not final) with data p.
func stored(p []byte) []byte {
	n := len(p)
	return append([]byte{0, byte(n), byte(n >> 8), ^byte(n), ^byte(n >> 8)}, p...)
}

var syncFlush = []byte{0, 0, 0, 0xff, 0xff}

// Output that comes out elsewhere than at a sync flush does not let the
// decoder go, even when the last bytes it read were 00 00 FF FF: here the
// data of a stored block, handed out as the window fills.
func TestInflaterNotParkedMidStream(t *testing.T) {
	fill := bytes.Repeat([]byte("a NOOP\r\n"), (maxHistory-4)/8)
	fill = append(fill, "abcd"[:maxHistory-4-len(fill)]...)
	var s []byte
	s = append(s, stored(fill)...)
	s = append(s, syncFlush...)
	s = append(s, stored([]byte{0, 0, 0xff, 0xff})...) // fills the window
	tail := []byte("b NOOP\r\n")
	s = append(s, stored(tail)...)
	s = append(s, syncFlush...)
	for _, parkFirst := range []bool{false, true} {
		cr := &chunkReader{data: s, cuts: []int{len(stored(fill)) + len(syncFlush), len(s) - len(tail) - 10}}
		z := newInflater(bufio.NewReaderSize(cr, bufSize))
		got := make([]byte, len(fill))
		if _, err := io.ReadFull(z, got); err != nil || !bytes.Equal(got, fill) {
			t.Fatalf("first block: %v", err)
		}
		if parkFirst {
			if !z.park() {
				t.Fatal("not parked at the sync flush")
			}
			z.resume(cr)
		}
		p := make([]byte, 100)
		n, err := z.Read(p)
		if err != nil || !bytes.Equal(p[:n], []byte{0, 0, 0xff, 0xff}) {
			t.Fatalf("got %q, %v", p[:n], err)
		}
		if z.in.src.Buffered() != 0 {
			t.Fatal("the test means the decoder to have read all it was given")
		}
		if z.park() {
			t.Fatal("parked after the data of a stored block")
		}
		if z.err != nil || z.dec == nil {
			t.Fatalf("the check cost the decoder: %v", z.err)
		}
		n, err = io.ReadFull(z, p[:len(tail)])
		if err != nil || !bytes.Equal(p[:n], tail) {
			t.Fatalf("after it: got %q, %v", p[:n], err)
		}
		if !z.park() {
			t.Fatal("not parked at the last sync flush")
		}
	}
}

// A decoder that handed out output the window filled up mid-block, with
// a command ending right there, is not at a block boundary: no park, and
// what follows decodes.
func TestInflaterNotParkedAtFullWindow(t *testing.T) {
	var cmds []byte
	for i := 0; len(cmds) < maxHistory-40; i++ {
		cmds = fmt.Appendf(cmds, "a%d NOOP\r\n", i)
	}
	cmds = append(cmds, "z "+string(bytes.Repeat([]byte("X"), maxHistory-len(cmds)-9))+" NOOP\r\n"...)
	if len(cmds) != maxHistory {
		t.Fatal(len(cmds))
	}
	more := []byte("b IDLE\r\nDONE\r\n")
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestSpeed)
	w.Write(cmds)
	w.Write(more) // no flush between: one block runs on
	w.Flush()
	stream := buf.Bytes()
	cuts := make([]int, len(stream))
	for i := range cuts {
		cuts[i] = i + 1
	}
	z := newInflater(bufio.NewReaderSize(&chunkReader{data: stream, cuts: cuts}, bufSize))
	got := make([]byte, maxHistory)
	if _, err := io.ReadFull(z, got); err != nil || !bytes.Equal(got, cmds) {
		t.Fatalf("first window: %v", err)
	}
	if z.in.src.Buffered() != 0 {
		t.Fatal("the test means the decoder to have read all it was given")
	}
	if z.park() {
		t.Fatal("parked at a full window")
	}
	got = got[:len(more)]
	if _, err := io.ReadFull(z, got); err != nil || !bytes.Equal(got, more) {
		t.Fatalf("after it: %q %v", got, err)
	}
	if !z.park() {
		t.Fatal("not parked at the sync flush")
	}
}

// Bytes of the next command already buffered, a final block, or a stream
// without sync flushes: no park.
func TestInflaterNotParked(t *testing.T) {
	cmd := []byte("a NOOP\r\n")
	t.Run("buffered", func(t *testing.T) {
		s := append(append(stored(cmd), syncFlush...), stored(cmd)...)
		z := newInflater(bufio.NewReaderSize(bytes.NewReader(s), bufSize))
		if _, err := io.ReadFull(z, make([]byte, len(cmd))); err != nil {
			t.Fatal(err)
		}
		if z.park() {
			t.Fatal("parked with input buffered")
		}
	})
	t.Run("final", func(t *testing.T) {
		s := append(stored(cmd), 1, 0, 0, 0xff, 0xff)
		s = append(s, stored(cmd)...)
		z := newInflater(bufio.NewReaderSize(&chunkReader{data: s, cuts: []int{len(cmd) + 10}}, bufSize))
		p := make([]byte, 100)
		n, err := z.Read(p)
		if n != len(cmd) || err != io.EOF {
			t.Fatalf("got %d, %v", n, err)
		}
		if z.park() {
			t.Fatal("parked after the final block")
		}
	})
	t.Run("before the flush", func(t *testing.T) {
		// The window fills before the end of the block; the sync flush
		// has not come yet.
		var buf bytes.Buffer
		w, _ := flate.NewWriter(&buf, flate.HuffmanOnly)
		w.Write(bytes.Repeat(cmd, maxHistory/len(cmd)))
		w.Flush()
		s := buf.Bytes()
		z := newInflater(bufio.NewReaderSize(&chunkReader{data: s, cuts: []int{len(s) - 5}}, bufSize))
		if _, err := io.ReadFull(z, make([]byte, maxHistory)); err != nil {
			t.Fatal(err)
		}
		if z.park() {
			t.Fatalf("parked before the sync flush")
		}
	})
}

// The history keeps the last maxHistory bytes written, whatever the sizes
// of the writes.
func TestHistory(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var h history
	var all []byte
	for range 2000 {
		p := make([]byte, rng.IntN(3*maxHistory/2)>>rng.IntN(12))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		h.write(p)
		all = append(all, p...)
		if rng.IntN(4) == 0 {
			if !bytes.Equal(h.bytes(), all[max(0, len(all)-maxHistory):]) {
				t.Fatalf("after %d bytes: wrong history", len(all))
			}
		}
		if cap(h.b) > maxHistory {
			t.Fatalf("history holds %d bytes", cap(h.b))
		}
	}
}

// FuzzInflaterPark: for any input, parking wherever the inflater allows
// it gives the output of a decoder that never parks.
func FuzzInflaterPark(f *testing.F) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, level := range []int{flate.HuffmanOnly, flate.NoCompression, flate.BestSpeed, flate.BestCompression} {
		cmds := imapCommands(rng, 2000)
		stream, ends := deflateCommands(f, rng, cmds, level, false)
		f.Add(stream, cutBytes(ends), []byte{3, 250})
	}
	cmds := imapCommands(rng, 40<<10)
	stream, ends := deflateCommands(f, rng, cmds, flate.DefaultCompression, true)
	f.Add(stream, cutBytes(ends), []byte{255})
	s := append(stored([]byte("a NOOP\r\n")), syncFlush...)
	s = append(s, stored([]byte{0, 0, 0xff, 0xff})...)
	f.Add(append(s, syncFlush...), []byte{12, 8}, []byte{4})
	f.Fuzz(func(t *testing.T, stream, cutsb, sizes []byte) {
		// Each byte of cutsb is a piece's length, less one.
		var cuts []int
		pos := 0
		for _, c := range cutsb {
			pos += int(c) + 1
			cuts = append(cuts, pos)
		}
		checkInflater(t, stream, cuts, sizes)
	})
}

// cutBytes encodes ends for FuzzInflaterPark: pieces of at most 256 bytes
// that end at each of them.
func cutBytes(ends []int) []byte {
	var b []byte
	pos := 0
	for _, e := range ends {
		for e-pos > 256 {
			b = append(b, 255)
			pos += 256
		}
		if e > pos {
			b = append(b, byte(e-pos-1))
			pos = e
		}
	}
	return b
}

// keptSession lets a connection of the test server hibernate: its Close
// keeps the session while the layer detaches, as the mailbox package's
// does.
type keptSession struct {
	*loginSession
	mu       sync.Mutex
	mailbox  string
	readOnly bool
	selected bool
}

func (s *keptSession) Select(name string, opts *imap.SelectOptions) (*imap.SelectData, error) {
	d, err := s.loginSession.Select(name, opts)
	if err == nil {
		s.mu.Lock()
		s.mailbox, s.readOnly, s.selected = name, opts != nil && opts.ReadOnly, true
		s.mu.Unlock()
	}
	return d, err
}

func (s *keptSession) Selection() (string, bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mailbox, s.readOnly, s.selected
}

func (s *keptSession) Close() error {
	if c, ok := s.conn.NetConn().(*Conn); ok && c.Keep(s) {
		return nil
	}
	return s.loginSession.Close()
}

// waitParks waits until the inflater park counter passed n.
func waitParks(t *testing.T, n int64) int64 {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); inflaterParks.Load() <= n; {
		if time.Now().After(deadline) {
			t.Fatal("the connection did not give back its decoder")
		}
		time.Sleep(time.Millisecond)
	}
	return inflaterParks.Load()
}

// A COMPRESS connection waiting in IDLE, or between commands, holds no
// decoder; the next command decodes with the history it kept, and IDLE
// goes on working, also once the connection hibernated and woke up.
func TestCompressIdleParksDecoder(t *testing.T) {
	for _, hibernate := range []bool{false, true} {
		t.Run(fmt.Sprint("hibernate=", hibernate), func(t *testing.T) {
			env := newTestEnv(t, func(o *Options) {
				o.IdleNotify = true
				if hibernate {
					o.HibernateAfter = 20 * time.Millisecond
				}
			})
			other := env.loggedIn(t)
			r := env.raw(t)
			r.login()
			r.compress(flate.DefaultCompression)
			parks := inflaterParks.Load()
			r.send("z2 SELECT INBOX\r\n")
			r.expect("z2 OK")
			parks = waitParks(t, parks) // between commands
			for i := range 3 {
				r.send(fmt.Sprintf("z%d IDLE\r\n", 3+i))
				r.expect("+ idling")
				parks = waitParks(t, parks)
				if hibernate {
					// DONE wakes it up. (The test's sessions do not keep
					// their selection across a resume, as the mailbox
					// package's do, so no EXISTS here.)
					waitFor(t, func() bool { return env.srv.Hibernated() == 1 })
				} else {
					appendMsg(t, other)
					env.notifyAll()
					if l := r.line(); l != fmt.Sprintf("* %d EXISTS\r\n", i+1) {
						t.Fatalf("during IDLE got %q", l)
					}
				}
				// The stream refers back to what was sent before the park.
				r.send("DONE\r\n")
				r.expect(fmt.Sprintf("z%d OK", 3+i))
				r.send(fmt.Sprintf("y%d UID FETCH 1:* (UID FLAGS)\r\n", i))
				r.expect(fmt.Sprintf("y%d OK", i))
				parks = waitParks(t, parks)
			}
			// A long command, past the window.
			long := strings.Repeat("x", 40<<10)
			r.send("q1 GETQUOTAROOT INBOX\r\nq2 ID (\"name\" \"" + long[:1000] + "\")\r\nq3 NOOP\r\n")
			r.expect("q1 OK")
			r.expect("q2 OK")
			r.expect("q3 OK")
			r.send("q4 APPEND INBOX {" + fmt.Sprint(len(long)+4) + "+}\r\n\r\n\r\n" + long + "\r\nq5 NOOP\r\n")
			r.expect("q4 OK")
			r.expect("q5 OK")
			r.send("q6 SEARCH TEXT " + long[:3000] + "\r\n")
			r.expect("q6 OK")
			waitParks(t, parks)
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}
