//go:build !unix

package lifecycle

import "syscall"

// canWaitReadable is false where the socket cannot be peeked at: waiting
// connections wait in their read, and do not go away.
const canWaitReadable = false

func waitReadable(syscall.RawConn) error { return nil }

func readableNow(syscall.RawConn) bool { return true }
