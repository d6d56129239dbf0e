//go:build unix

package imapext

import "syscall"

const canWaitReadable = true

// waitReadable returns once the socket has something to read (or has
// ended), or the read deadline passed. The socket is only peeked at.
func waitReadable(rc syscall.RawConn) error {
	var b [1]byte
	return rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR
	})
}
