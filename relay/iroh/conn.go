package iroh

import (
	"bufio"
	"context"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// transport carries frames for one client: the native length-prefixed
// stream or WebSocket binary messages.
type transport interface {
	// read returns the next frame; max bounds its payload.
	read(deadline time.Time, max int) (typ byte, payload []byte, err error)
	// write sends one frame made of typ and parts, before deadline.
	write(deadline time.Time, typ byte, parts ...[]byte) error
	// close ends the connection; protocol says the peer broke the
	// protocol (a WebSocket then gets close code 1002).
	close(protocol bool, reason string)
}

// streamTransport is the native "iroh derp http" stream after the 101.
type streamTransport struct {
	conn net.Conn
	r    *bufio.Reader
	buf  []byte // write buffer, used by the single writer only
}

func (t *streamTransport) read(deadline time.Time, max int) (byte, []byte, error) {
	t.conn.SetReadDeadline(deadline)
	return ReadFrame(t.r, max)
}

func (t *streamTransport) write(deadline time.Time, typ byte, parts ...[]byte) error {
	t.conn.SetWriteDeadline(deadline)
	t.buf = AppendFrame(t.buf[:0], typ, parts...)
	_, err := t.conn.Write(t.buf)
	if cap(t.buf) > 4*MaxPacketSize {
		t.buf = nil
	}
	return err
}

func (t *streamTransport) close(bool, string) { t.conn.Close() }

// wsTransport is a WebSocket connection; each binary message is one frame
// without the length prefix.
type wsTransport struct {
	c    *websocket.Conn
	once sync.Once
	buf  []byte
}

func (t *wsTransport) read(deadline time.Time, max int) (byte, []byte, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	t.c.SetReadLimit(int64(max) + 1)
	typ, msg, err := t.c.Read(ctx)
	if err != nil {
		return 0, nil, err
	}
	if typ != websocket.MessageBinary {
		return 0, nil, frameErr("text message")
	}
	if len(msg) == 0 {
		return 0, nil, frameErr("empty message")
	}
	return msg[0], msg[1:], nil
}

func (t *wsTransport) write(deadline time.Time, typ byte, parts ...[]byte) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	t.buf = append(t.buf[:0], typ)
	for _, p := range parts {
		t.buf = append(t.buf, p...)
	}
	err := t.c.Write(ctx, websocket.MessageBinary, t.buf)
	if cap(t.buf) > 4*MaxPacketSize {
		t.buf = nil
	}
	return err
}

func (t *wsTransport) close(protocol bool, reason string) {
	t.once.Do(func() {
		if protocol {
			// Close waits up to a few seconds for the peer's answer;
			// nobody should wait on a peer that broke the protocol.
			go t.c.Close(websocket.StatusProtocolError, reason)
			return
		}
		t.c.CloseNow()
	})
}
