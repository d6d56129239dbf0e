package imapext

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// A connection spends most of its life waiting for its client, in one
// goroutine of the layer's. The runtime keeps a goroutine's stack as large
// as the deepest call it made, halving it at a collection only while less
// than a quarter is in use. Two habits keep that stack small:
//
//   - TLS handshakes run in a goroutine of their own, which ends with them:
//     key exchange and certificate grow a stack to 16 KiB or more.
//   - A parked connection (park) waits for the socket to become readable
//     in a shallow call, before it reads through crypto/tls: a wait in
//     tls.Conn.Read sits a dozen frames deep. crypto/tls may hold a record
//     it read already, so it is asked first, with a deadline in the past:
//     what it holds comes back at once; otherwise the read times out
//     without touching what it holds (a timeout is not fatal in
//     crypto/tls), and the bytes still to come can only come from the
//     socket.

// handshake runs tc's handshake in a goroutine that ends with it.
func handshake(tc *tls.Conn) error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		defer cancel()
		done <- tc.HandshakeContext(ctx)
	}()
	return <-done
}

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// readParked reads at least one byte into b, waiting shallowly while
// nothing has come; see above. Connections whose socket it cannot reach
// (no syscall.Conn beneath, or a platform without waitReadable) read as
// usual.
func (r timedReader) readParked(b []byte) (int, error) {
	rc := rawConnOf(r.c)
	if rc == nil {
		return io.ReadAtLeast(r, b, 1)
	}
	if tc, ok := r.c.(*tls.Conn); ok {
		tc.SetReadDeadline(aLongTimeAgo)
		n, err := tc.Read(b)
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
	}
	r.c.SetReadDeadline(time.Now().Add(*r.timeout))
	// An error (deadline, closed) comes back from the read below as well;
	// it keeps the deadline just set.
	waitReadable(rc)
	for {
		n, err := r.c.Read(b)
		if n > 0 || err != nil {
			return n, err
		}
	}
}

// rawConnOf returns the socket beneath c (and beneath TLS), or nil when
// there is none or a wrapper in between may hold bytes of its own.
func rawConnOf(c net.Conn) syscall.RawConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
