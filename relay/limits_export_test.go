package relay

import (
	"net"
	"time"
)

// Hooks for the external tests of this package.

// IPKeyForTest is what the per-address caps count for addr.
func IPKeyForTest(addr net.Addr) string { return ipKey(addr) }

// RecordAuthDelaysForTest replaces the wait of a login on an account
// guessed from many addresses: the delays asked for are sent to the
// returned channel instead of slept.
func RecordAuthDelaysForTest(s *Server) <-chan time.Duration {
	ch := make(chan time.Duration, 1000)
	s.auth.sleep = func(d time.Duration) {
		select {
		case ch <- d:
		default:
		}
	}
	return ch
}

// SlowAuthDelaysForTest makes a login on an account guessed from many
// addresses wait d, as a login queued behind slow hashes waits.
func SlowAuthDelaysForTest(s *Server, d time.Duration) {
	s.auth.sleep = func(time.Duration) { time.Sleep(d) }
}

// HandshakeGateForTest reports how many TLS handshakes went through s's
// handshake gate, how many slots are held now and how many waits ran out.
func HandshakeGateForTest(s *Server) (gated int64, inUse int, bypassed int64) {
	return s.hsGate.gated.Load(), s.hsGate.inUse(), s.hsGate.bypassed.Load()
}
