package imapext

import (
	"bufio"
	"compress/flate"
	"io"
	"strings"
	"sync"
)

// compressors holds idle DEFLATE compressors. A flate.Writer takes some
// 700 KiB to 1.2 MiB, far more than an idle connection may cost, so a
// connection borrows one only while it writes a batch of responses. Each batch
// ends with a sync flush (byte aligned), so the blocks of the next compressor
// continue the same raw DEFLATE stream; they only cannot refer back to
// earlier batches.
var compressors = sync.Pool{
	New: func() any {
		w, _ := flate.NewWriter(nil, flate.BestSpeed)
		return w
	},
}

// deflateWriter is the server-to-client half of COMPRESS=DEFLATE.
type deflateWriter struct {
	w  io.Writer
	fw *flate.Writer
}

func (d *deflateWriter) Write(p []byte) (int, error) {
	if d.fw == nil {
		d.fw = compressors.Get().(*flate.Writer)
		d.fw.Reset(d.w)
	}
	return d.fw.Write(p)
}

// Flush ends the batch with a sync flush and returns the compressor.
func (d *deflateWriter) Flush() error {
	if d.fw == nil {
		return nil
	}
	err := d.fw.Flush()
	d.fw.Reset(io.Discard) // drop the reference to the connection
	compressors.Put(d.fw)
	d.fw = nil
	return err
}

// compress is RFC 4978 section 3: COMPRESS SP algorithm. The layer allows it
// once logged in, so that credentials never travel through a compressor.
func (l *layer) compress(tag string, a *args) error {
	if !a.sp() {
		return errSyntax
	}
	alg, ok := a.atom()
	if !ok || !a.end() {
		return errSyntax
	}
	if !l.authenticated() {
		return errNotAuthenticated
	}
	l.wmu.Lock()
	active := l.dw != nil
	l.wmu.Unlock()
	if active {
		return errCompressionActive
	}
	if !strings.EqualFold(alg, "DEFLATE") {
		return errCompressAlgorithm
	}
	if err := l.replyOK(tag, "DEFLATE active"); err != nil {
		return err
	}
	// Both directions are compressed from the byte after the CRLF of the
	// tagged OK (RFC 4978 section 3). Bytes the client sent after its
	// command are already compressed: the decompressor reads them from the
	// old buffer, which it uses as its byte source (see inflate.go).
	l.wmu.Lock()
	l.dw = &deflateWriter{w: timedWriter{l.raw}}
	l.dst = l.dw
	l.wmu.Unlock()
	l.inf = newInflater(l.cr.br)
	br := readers.Get().(*bufio.Reader)
	br.Reset(l.inf)
	l.cr.br = br
	return nil
}
