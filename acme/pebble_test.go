package acme

import (
	"testing"

	"github.com/chatrelay/chatrelay/acme/acmetest"
)

// testCA is a Pebble ACME server inside the test process (see acmetest).
type testCA = acmetest.CA

// startTestCA runs Pebble validating HTTP-01 on httpPort and TLS-ALPN-01
// on tlsPort of 127.0.0.1 (port 1: nothing answers).
func startTestCA(t *testing.T, httpPort, tlsPort int) *testCA {
	t.Helper()
	return acmetest.Start(t, acmetest.Options{HTTPPort: httpPort, TLSALPNPort: tlsPort})
}
