//go:build unix

package lifecycle

import "syscall"

const canWaitReadable = true

// readableNow reports whether the socket has something to read (or has
// ended) now; it does not wait.
func readableNow(rc syscall.RawConn) bool {
	ready := false
	rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ready = err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
		return true
	})
	return ready
}

// waitReadable returns once the socket has something to read (or has
// ended), or the read deadline passed. The socket is only peeked at.
func waitReadable(rc syscall.RawConn) error {
	var b [1]byte
	return rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR
	})
}
