package metrics

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"
)

// RecentErrors keeps the last few error log lines in memory for
// `chatrelay status`. Install it by wrapping the relay's log handler:
//
//	recent := metrics.NewRecentErrors(20)
//	log := slog.New(recent.Wrap(handler))
//
// It records records at slog.LevelError and above whether or not the
// wrapped handler is enabled for them, so status shows errors even when
// the log itself is off; the lines never leave the process except through
// the 0600 control socket.
type RecentErrors struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
}

// NewRecentErrors keeps the last n lines (at least 1).
func NewRecentErrors(n int) *RecentErrors {
	return &RecentErrors{lines: make([]string, max(n, 1))}
}

// Lines returns the kept lines, oldest first.
func (r *RecentErrors) Lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	if r.full {
		out = append(out, r.lines[r.next:]...)
	}
	return append(out, r.lines[:r.next]...)
}

func (r *RecentErrors) add(line string) {
	r.mu.Lock()
	r.lines[r.next] = line
	r.next++
	if r.next == len(r.lines) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// Wrap returns a handler that passes everything to next and keeps error
// records in r.
func (r *RecentErrors) Wrap(next slog.Handler) slog.Handler {
	return &recentHandler{r: r, next: next}
}

type recentHandler struct {
	r    *RecentErrors
	next slog.Handler
	// ops replays WithAttrs and WithGroup, in order, on the handler that
	// formats our lines.
	ops []func(slog.Handler) slog.Handler
}

func (h *recentHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.next.Enabled(ctx, l)
}

func (h *recentHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelError {
		h.r.add(h.format(rec))
	}
	if h.next.Enabled(ctx, rec.Level) {
		return h.next.Handle(ctx, rec)
	}
	return nil
}

// format renders a record as one line of the text handler's format.
func (h *recentHandler) format(rec slog.Record) string {
	var buf bytes.Buffer
	var th slog.Handler = slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.String(slog.TimeKey, a.Value.Time().UTC().Format(time.RFC3339))
			}
			return a
		},
	})
	for _, op := range h.ops {
		th = op(th)
	}
	th.Handle(context.Background(), rec)
	return string(bytes.TrimRight(buf.Bytes(), "\n"))
}

func (h *recentHandler) with(next slog.Handler, op func(slog.Handler) slog.Handler) *recentHandler {
	return &recentHandler{r: h.r, next: next, ops: append(h.ops[:len(h.ops):len(h.ops)], op)}
}

func (h *recentHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return h.with(h.next.WithAttrs(attrs), func(th slog.Handler) slog.Handler { return th.WithAttrs(attrs) })
}

func (h *recentHandler) WithGroup(name string) slog.Handler {
	return h.with(h.next.WithGroup(name), func(th slog.Handler) slog.Handler { return th.WithGroup(name) })
}
