package imapext

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// A connection spends most of its life waiting for its client. The runtime
// keeps a goroutine's stack as large as the deepest call it made, halving
// it at a collection only while less than a quarter is in use. Two habits
// keep that stack small:
//
//   - TLS handshakes run in a goroutine of their own, which ends with them:
//     key exchange and certificate grow a stack to 16 KiB or more.
//   - A parked connection (park) waits for the socket to become readable
//     in a shallow call, before it reads through crypto/tls: a wait in
//     tls.Conn.Read sits a dozen frames deep. crypto/tls may hold a record
//     it read already, so it is asked first, with a deadline in the past
//     (readHeld): what it holds comes back at once; otherwise the read
//     times out without touching what it holds (a timeout is not fatal in
//     crypto/tls), and the bytes still to come can only come from the
//     socket.
//
// A hibernated connection goes further and lets its goroutine go (away.go).

// handshake runs tc's handshake in a goroutine that ends with it. The
// deadline is the connection's (which may shorten it).
func handshake(tc *tls.Conn) error {
	done := make(chan error, 1)
	go func() {
		tc.SetDeadline(time.Now().Add(handshakeTimeout))
		done <- tc.Handshake()
	}()
	return <-done
}

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// readHeld returns what crypto/tls holds already, if anything (held).
func (r timedReader) readHeld(b []byte) (n int, err error, held bool) {
	tc, ok := r.c.(*tls.Conn)
	if !ok {
		return 0, nil, false
	}
	tc.SetReadDeadline(aLongTimeAgo)
	n, err = tc.Read(b)
	if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil, false
	}
	return n, err, true
}

func readAtLeastOne(r io.Reader, b []byte) (int, error) {
	return io.ReadAtLeast(r, b, 1)
}

// rawConnOf returns the socket beneath c (and beneath TLS), or nil when
// there is none or a wrapper in between may hold bytes of its own.
func rawConnOf(c net.Conn) syscall.RawConn {
	sc, ok := beneathTLS(c).(syscall.Conn)
	if !ok || !canWaitReadable {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
