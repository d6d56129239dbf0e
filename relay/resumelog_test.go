package relay_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// recordLog keeps every log record's level and message.
type recordLog struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r)
	return nil
}
func (h *recordLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordLog) WithGroup(string) slog.Handler      { return h }

func (h *recordLog) find(sub string) (slog.Record, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if strings.Contains(r.Message, sub) {
			return r, true
		}
	}
	return slog.Record{}, false
}

// A client that closes a hibernated IDLE connection is the everyday end
// of a session: its refused resume is logged at debug, not as a warning.
func TestClientClosingHibernatedSessionIsNoWarning(t *testing.T) {
	logs := &recordLog{}
	cfg := relaytest.Config(t.TempDir())
	cfg.IMAPHibernateAfter = 30 * time.Millisecond
	r := relaytest.StartWith(t, cfg, relay.Options{Logger: slog.New(logs)})
	const bob = "bobbobbob@localhost"
	c := login(t, r, bob)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Idle(); err != nil {
		t.Fatal(err)
	}
	waitHibernated(t, r, 1)
	c.Close()
	waitHibernated(t, r, 0)
	var rec slog.Record
	waitFor(t, "the refused resume to be logged", func() bool {
		var ok bool
		rec, ok = logs.find("resume refused")
		return ok
	})
	if rec.Level != slog.LevelDebug {
		t.Fatalf("%q logged at %v, want DEBUG", rec.Message, rec.Level)
	}
}
