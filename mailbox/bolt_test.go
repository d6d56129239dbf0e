package mailbox_test

import (
	"testing"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/mailbox/storetest"
)

// TestBoltConformance runs the backend conformance suite against the
// embedded index.
func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string) mailbox.Backend {
		b, err := mailbox.OpenBolt(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}
