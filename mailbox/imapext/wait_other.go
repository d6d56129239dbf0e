//go:build !unix

package imapext

import "syscall"

// waitReadable returns at once where the socket cannot be peeked at: the
// read that follows waits instead.
func waitReadable(syscall.RawConn) error { return nil }
