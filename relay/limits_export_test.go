package relay

import (
	"net"
	"time"
)

// Hooks for the external tests of this package.

// SetMaxWaitForTest shortens every read and write deadline of client
// connections to at most d, so that slow-client timeouts fire in tests.
func SetMaxWaitForTest(s *Server, d time.Duration) { s.limits.maxWait.Store(int64(d)) }

// IPKeyForTest is what the per-address caps count for addr.
func IPKeyForTest(addr net.Addr) string { return ipKey(addr) }
