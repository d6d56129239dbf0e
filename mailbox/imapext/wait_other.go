//go:build !unix

package imapext

import "syscall"

// canWaitReadable is false where the socket cannot be peeked at: parked
// connections wait in their read, and do not go away.
const canWaitReadable = false

func waitReadable(syscall.RawConn) error { return nil }
