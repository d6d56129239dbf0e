package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// A user who types a name the relay will not take hears why from Delta
// Chat itself: core passes the relay's NO text into its error.
func TestDeltaChatShowsAccountRule(t *testing.T) {
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	r := startRelay(t)
	dc := dctest.StartT(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	acc, err := dc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = dc.AddOrUpdateTransport(ctx, acc, r.Transport("short@localhost", "long-enough-password"))
	if err == nil {
		t.Fatal("core configured an account whose name breaks the rules")
	}
	if !strings.Contains(err.Error(), "must have 9 characters, not 5") {
		t.Fatalf("core's error does not carry the relay's reason: %v", err)
	}
	t.Logf("core says: %v", err)
}
