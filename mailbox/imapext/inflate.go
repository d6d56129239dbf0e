package imapext

import (
	"bufio"
	"compress/flate"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// The client-to-server half of COMPRESS=DEFLATE. A flate reader holds a
// 32 KiB window and its Huffman tables, some 45 KiB, which an idle
// connection should not keep. Clients end each command with a sync flush
// (zlib's Z_SYNC_FLUSH; RFC 4978 section 4): an empty stored block, whose
// LEN and NLEN are the bytes 00 00 FF FF, byte aligned. Right after it the
// decoder has handed out all its output and stands at a block boundary
// with no bits pending: its only state is its window, the last 32 KiB of
// output. So the inflater keeps a copy of that history (as much as was
// produced, at most 32 KiB; a few hundred bytes for most clients), and
// while the connection is parked at such a point it holds no decoder; the
// next byte gets one from a pool, Reset with the history as its
// dictionary, which continues the stream exactly.
//
// Knowing the point. compress/flate reads from an io.ByteReader without
// reading ahead: the bits of block headers and Huffman blocks with
// ReadByte, a stored block's LEN and NLEN and then its data with
// io.ReadFull, which are one Read each from feed (it fills them whole).
// A stored block's data always follows its LEN and NLEN, and LEN and NLEN
// always follow a ReadByte (the block header's bits). So a Read that
// follows a ReadByte is a stored block's LEN and NLEN, and if it is 00 00
// FF FF the block was empty. The same bytes inside a Huffman block (read
// with ReadByte) or a stored block's data (a Read after a Read) do not
// count. Before the decoder goes, a probe checks that it asks for input
// before it produces any output. Whatever a client sends, a wrong guess
// could only garble that client's own commands: the layer answers BAD or
// ends the connection. A client that never sync-flushes (Z_PARTIAL_FLUSH,
// say) keeps its decoder, as do final blocks and streams ended in error.

// maxHistory is DEFLATE's window: how far back a stream may refer.
const maxHistory = 32 << 10

// errWouldWait is what feed returns to the probe instead of waiting for
// the client.
var errWouldWait = errors.New("imapext: no input buffered")

// errInflateStep means the probe found the decoder elsewhere than where
// feed had it: the connection ends rather than decode garbage.
var errInflateStep = errors.New("imapext: compressed stream out of step")

// decoders holds idle flate readers (their windows and tables).
var decoders = sync.Pool{New: func() any { return flate.NewReader(noInput) }}

// noInput is what pooled decoders read from: they hold no connection.
var noInput = strings.NewReader("")

// inflaterParks counts the decoders given back by parked connections
// (tests).
var inflaterParks atomic.Int64

// inflater is the decompressor of a COMPRESS connection: it reads the
// client's compressed bytes from in.src and returns what they decompress
// to. Only the layer's reader goroutine uses it.
type inflater struct {
	in   feed
	dec  io.ReadCloser // nil while parked
	hist history       // the output so far, the last maxHistory bytes of it
	err  error         // the decoder's error, for good
	pend [1]byte       // output the probe got, handed out first
	npen int
}

// feed is the decoder's io.ByteReader. It notes whether the decoder's last
// read was the LEN and NLEN of an empty stored block.
type feed struct {
	src      *bufio.Reader // the client's compressed bytes; nil while parked
	lastByte bool          // the last read was a ReadByte
	sync     bool          // the last read was 00 00 FF FF after a ReadByte
	noWait   bool          // the probe: fail instead of waiting for input
}

func (f *feed) ReadByte() (byte, error) {
	if f.noWait && f.src.Buffered() == 0 {
		return 0, errWouldWait
	}
	f.lastByte, f.sync = true, false
	return f.src.ReadByte()
}

func (f *feed) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if f.noWait && f.src.Buffered() < len(p) {
		return 0, errWouldWait
	}
	n, err := io.ReadFull(f.src, p)
	f.sync = f.lastByte && n == 4 && p[0] == 0 && p[1] == 0 && p[2] == 0xff && p[3] == 0xff
	f.lastByte = false
	return n, err
}

func newInflater(src *bufio.Reader) *inflater {
	return &inflater{in: feed{src: src}}
}

func (z *inflater) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if z.npen > 0 {
		n := copy(p, z.pend[:z.npen])
		z.npen = copy(z.pend[:], z.pend[n:z.npen])
		return n, nil
	}
	if z.err != nil {
		return 0, z.err
	}
	if z.dec == nil {
		z.dec = decoders.Get().(io.ReadCloser)
		z.dec.(flate.Resetter).Reset(&z.in, z.hist.bytes())
		z.in.lastByte, z.in.sync = false, false
	}
	n, err := z.dec.Read(p)
	z.hist.write(p[:n])
	if err != nil {
		z.err = err
	}
	return n, err
}

// park gives the decoder back if the stream stands at a sync flush with
// nothing buffered, and then also the buffer of compressed bytes; it
// reports whether it did. The caller then waits for the client's next
// byte and calls resume.
func (z *inflater) park() bool {
	if z.err != nil || z.npen > 0 || z.in.src.Buffered() > 0 {
		return false
	}
	if z.dec != nil {
		if !z.in.sync {
			return false
		}
		// The decoder must ask for input before it gives any output.
		z.in.noWait = true
		n, err := z.dec.Read(z.pend[:])
		z.in.noWait = false
		z.hist.write(z.pend[:n])
		z.npen = n
		switch {
		case err == errWouldWait && n > 0:
			z.err = errInflateStep
			return false
		case err == errWouldWait:
			z.dec.(flate.Resetter).Reset(noInput, nil)
			decoders.Put(z.dec)
			z.dec = nil
			inflaterParks.Add(1)
		case err != nil:
			z.err = err
			return false
		default:
			return false // more output: the next Read hands it out
		}
	}
	z.in.src.Reset(nil)
	readers.Put(z.in.src)
	z.in.src = nil
	return true
}

// resume gives a parked inflater a buffer of compressed bytes again,
// reading from r; the decoder comes with the first Read.
func (z *inflater) resume(r io.Reader) {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	z.in.src = br
}

// history keeps the last maxHistory bytes written to it, in a buffer that
// grows with them.
type history struct {
	b   []byte
	pos int // once b is full: the oldest byte, where the next write goes
}

func (h *history) write(p []byte) {
	if len(p) > maxHistory {
		p = p[len(p)-maxHistory:]
	}
	if n := len(h.b); n < maxHistory {
		k := min(len(p), maxHistory-n)
		if n+k > cap(h.b) {
			b := make([]byte, n, min(max(2*cap(h.b), n+k, 256), maxHistory))
			copy(b, h.b)
			h.b = b
		}
		h.b = append(h.b, p[:k]...)
		p = p[k:]
	}
	for len(p) > 0 {
		k := copy(h.b[h.pos:], p)
		p = p[k:]
		h.pos = (h.pos + k) % maxHistory
	}
}

// bytes returns the history, oldest byte first.
func (h *history) bytes() []byte {
	if h.pos > 0 {
		slices.Reverse(h.b[:h.pos])
		slices.Reverse(h.b[h.pos:])
		slices.Reverse(h.b)
		h.pos = 0
	}
	return h.b
}
