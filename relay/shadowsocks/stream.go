package shadowsocks

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
)

// bufPool holds chunk buffers: a whole SIP022 chunk with its header fits.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, saltSize+2*(2+tagSize)+maxChunk2022+tagSize+64)
	return &b
}}

// errAuth is any failure to decrypt or parse what the peer sent.
var errAuth = errors.New("shadowsocks: bad data")

// reader decrypts the chunk stream after the header: each chunk is an
// encrypted 2-byte big-endian length, then the encrypted payload.
type reader struct {
	r        io.Reader
	aead     cipher.AEAD
	nonce    nonce
	maxChunk int
	buf      *[]byte // from bufPool while pending holds part of it
	pending  []byte  // plaintext not yet returned
	err      error
}

func newReader(r io.Reader, aead cipher.AEAD, maxChunk int) *reader {
	return &reader{r: r, aead: aead, maxChunk: maxChunk}
}

// open decrypts b in place and steps the nonce.
func (r *reader) open(b []byte) ([]byte, error) {
	pt, err := r.aead.Open(b[:0], r.nonce[:], b, nil)
	r.nonce.next()
	if err != nil {
		return nil, errAuth
	}
	return pt, nil
}

// readSealed reads n plaintext bytes' worth of sealed data and opens it.
func (r *reader) readSealed(n int, atStart bool) ([]byte, error) {
	if r.buf == nil {
		r.buf = bufPool.Get().(*[]byte)
	}
	if cap(*r.buf) < n+tagSize {
		*r.buf = make([]byte, n+tagSize)
	}
	b := (*r.buf)[:n+tagSize]
	if k, err := io.ReadFull(r.r, b); err != nil {
		if atStart && k == 0 && errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, io.ErrUnexpectedEOF
	}
	return r.open(b)
}

func (r *reader) readChunk() ([]byte, error) {
	lb, err := r.readSealed(2, true)
	if err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(lb))
	if n > r.maxChunk {
		return nil, errAuth
	}
	return r.readSealed(n, false)
}

func (r *reader) Read(p []byte) (int, error) {
	for len(r.pending) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		chunk, err := r.readChunk()
		if err != nil {
			r.err = err
			return 0, err
		}
		r.pending = chunk
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	if len(r.pending) == 0 && r.buf != nil {
		// An idle connection holds no chunk buffer.
		bufPool.Put(r.buf)
		r.buf = nil
	}
	return n, nil
}

// writer encrypts into chunks. first, when set, writes what goes before
// the first chunk (the salt, and for SIP022 the response header) and may
// take the first chunk's payload into its own sealed part.
type writer struct {
	w        io.Writer
	aead     cipher.AEAD
	nonce    nonce
	maxChunk int
	// prefix is written once, before the first chunk.
	prefix []byte
	// header, when set (SIP022), seals the fixed-length header for the
	// first payload of length n, which then goes without a length chunk.
	header func(n int) []byte
}

func (w *writer) seal(dst, pt []byte) []byte {
	dst = w.aead.Seal(dst, w.nonce[:], pt, nil)
	w.nonce.next()
	return dst
}

func (w *writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), w.maxChunk)
		bp := bufPool.Get().(*[]byte)
		out := append((*bp)[:0], w.prefix...)
		w.prefix = nil
		if w.header != nil {
			out = w.seal(out, w.header(n))
			w.header = nil
		} else {
			var lb [2]byte
			binary.BigEndian.PutUint16(lb[:], uint16(n))
			out = w.seal(out, lb[:])
		}
		out = w.seal(out, p[:n])
		_, err := w.w.Write(out)
		*bp = out
		bufPool.Put(bp)
		if err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// Address types of the SOCKS-like target address (SIP004, SIP022).
const (
	atypIPv4   = 1
	atypDomain = 3
	atypIPv6   = 4
)

// Target is the host and port a client asks for: a name as the client
// sent it, or an IP address.
type Target struct {
	Host string
	Port uint16
}

func (t Target) String() string { return net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))) }

// parseTarget reads a target address from the front of b and returns the
// rest.
func parseTarget(b []byte) (Target, []byte, error) {
	if len(b) < 1 {
		return Target{}, nil, errAuth
	}
	var t Target
	switch b[0] {
	case atypIPv4:
		if len(b) < 1+4+2 {
			return Target{}, nil, errAuth
		}
		t.Host = net.IP(b[1:5]).String()
		b = b[5:]
	case atypIPv6:
		if len(b) < 1+16+2 {
			return Target{}, nil, errAuth
		}
		t.Host = net.IP(b[1:17]).String()
		b = b[17:]
	case atypDomain:
		if len(b) < 2 {
			return Target{}, nil, errAuth
		}
		n := int(b[1])
		if n == 0 || len(b) < 2+n+2 {
			return Target{}, nil, errAuth
		}
		t.Host = string(b[2 : 2+n])
		b = b[2+n:]
	default:
		return Target{}, nil, errAuth
	}
	t.Port = binary.BigEndian.Uint16(b)
	return t, b[2:], nil
}

// appendTarget encodes t as a target address.
func appendTarget(b []byte, t Target) ([]byte, error) {
	if ip := net.ParseIP(t.Host); ip != nil {
		if v4 := ip.To4(); v4 != nil {
			b = append(append(b, atypIPv4), v4...)
		} else {
			b = append(append(b, atypIPv6), ip.To16()...)
		}
	} else {
		if len(t.Host) == 0 || len(t.Host) > 255 {
			return nil, fmt.Errorf("shadowsocks: bad host name %q", t.Host)
		}
		b = append(append(b, atypDomain, byte(len(t.Host))), t.Host...)
	}
	return binary.BigEndian.AppendUint16(b, t.Port), nil
}
