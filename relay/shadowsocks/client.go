package shadowsocks

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Client wraps c, a connection to a Shadowsocks server, into a stream to
// target through it (what a proxy client such as Delta Chat does). The
// request header goes out with the first Write, or at once when the
// caller writes nothing first. now is the clock for SIP022 timestamps
// (nil: time.Now).
func Client(c net.Conn, k Key, target Target, now func() time.Time) (net.Conn, error) {
	if now == nil {
		now = time.Now
	}
	addr, err := appendTarget(nil, target)
	if err != nil {
		return nil, err
	}
	salt := make([]byte, saltSize)
	rand.Read(salt)
	aead, err := k.sessionAEAD(salt)
	if err != nil {
		return nil, err
	}
	cc := &clientConn{Conn: c, k: k, now: now, reqSalt: salt}
	cc.w = &writer{w: c, aead: aead, maxChunk: k.maxChunk(), prefix: salt}
	if k.is2022() {
		// SIP022: the address and padding go in the variable-length
		// header; the fixed-length header before it gives its length.
		cc.w.prefix = nil
		pad := 1 + int(salt[0])%maxPadding
		cc.header = func(payload []byte) []byte {
			vh := append(append([]byte(nil), addr...), 0, 0)
			binary.BigEndian.PutUint16(vh[len(addr):], uint16(pad))
			vh = append(vh, make([]byte, pad)...)
			vh = append(vh, payload...)
			fh := []byte{0}
			fh = binary.BigEndian.AppendUint64(fh, uint64(now().Unix()))
			fh = binary.BigEndian.AppendUint16(fh, uint16(len(vh)))
			out := append([]byte(nil), salt...)
			out = cc.w.seal(out, fh)
			return cc.w.seal(out, vh)
		}
	} else {
		cc.header = func(payload []byte) []byte {
			first := append(append([]byte(nil), addr...), payload...)
			var buf bytes.Buffer
			cc.w.w = &buf
			cc.w.Write(first)
			cc.w.w = c
			return buf.Bytes()
		}
	}
	return cc, nil
}

type clientConn struct {
	net.Conn
	k       Key
	now     func() time.Time
	reqSalt []byte
	wmu     sync.Mutex
	w       *writer
	header  func(payload []byte) []byte // until the header is sent
	r       *reader
}

// SendHeader sends the request header with no payload.
func (c *clientConn) SendHeader() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sendHeader(nil)
}

func (c *clientConn) sendHeader(payload []byte) error {
	if c.header == nil {
		return nil
	}
	h := c.header(payload)
	c.header = nil
	_, err := c.Conn.Write(h)
	return err
}

func (c *clientConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.header != nil {
		first := p[:min(len(p), 1000)]
		if err := c.sendHeader(first); err != nil {
			return 0, err
		}
		n, err := c.w.Write(p[len(first):])
		return len(first) + n, err
	}
	return c.w.Write(p)
}

var errResponse = errors.New("shadowsocks: bad response header")

func (c *clientConn) Read(p []byte) (int, error) {
	if c.r == nil {
		if err := c.readResponseHeader(); err != nil {
			return 0, err
		}
	}
	return c.r.Read(p)
}

func (c *clientConn) readResponseHeader() error {
	salt := make([]byte, saltSize)
	if _, err := io.ReadFull(c.Conn, salt); err != nil {
		return err
	}
	aead, err := c.k.sessionAEAD(salt)
	if err != nil {
		return err
	}
	r := newReader(c.Conn, aead, c.k.maxChunk())
	if c.k.is2022() {
		h, err := r.readSealed(1+8+saltSize+2, false)
		if err != nil {
			return err
		}
		ts := time.Unix(int64(binary.BigEndian.Uint64(h[1:9])), 0)
		if h[0] != 1 || !bytes.Equal(h[9:9+saltSize], c.reqSalt) ||
			c.now().Sub(ts) > maxClockSkew || ts.Sub(c.now()) > maxClockSkew {
			return errResponse
		}
		n := int(binary.BigEndian.Uint16(h[9+saltSize:]))
		first, err := r.readSealed(n, false)
		if err != nil {
			return err
		}
		r.pending = append([]byte(nil), first...)
	}
	c.r = r
	return nil
}

// HeaderSender is the client side's way to send the request header before
// any payload (a client waiting for a server that speaks first).
type HeaderSender interface{ SendHeader() error }
