package metrics

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("scrape: %s", resp.Status)
	}
	return string(b)
}

// value finds the sample line "name{labels} v" and returns v.
func value(body, series string) string {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			return rest
		}
	}
	return ""
}

func TestMetricsMoveWithEvents(t *testing.T) {
	base := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	var accounts, depth, offset atomic.Int64
	accounts.Store(3)
	now := func() time.Time { return base.Add(time.Duration(offset.Load())) }
	m := New(Options{
		Accounts: func() (int, error) { return int(accounts.Load()), nil },
		Queue: func() (int, time.Time) {
			if depth.Load() == 0 {
				return 0, time.Time{}
			}
			return int(depth.Load()), base.Add(-90 * time.Second)
		},
		Now:     now,
		Version: "test",
	})
	e, err := m.Serve("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	url := "http://" + e.Addr().String() + "/metrics"

	body := scrape(t, url)
	for series, want := range map[string]string{
		"chatrelay_accounts":                   "3",
		"chatrelay_queue_depth":                "0",
		"chatrelay_queue_oldest_seconds":       "0",
		"chatrelay_imap_connections":           "0",
		`chatrelay_build_info{version="test"}`: "1",
	} {
		if got := value(body, series); got != want {
			t.Errorf("before: %s = %q, want %q", series, got, want)
		}
	}

	m.Login("imap", true)
	m.Login("imap", true)
	m.Login("smtp", false)
	m.Delivered("local", 20*time.Millisecond)
	m.Delivered("out", 3*time.Second)
	m.Refused("523 5.7.1")
	m.Refused("bob@example.org") // an address never becomes a label
	closeConn := m.IMAPConn()
	m.IMAPConn()
	endIdle := m.Idle()
	closeConn()
	closeConn() // twice is once
	endIdle()
	accounts.Store(4)
	depth.Store(2)
	// The queue is read once a second at most.
	offset.Store(int64(2 * time.Second))
	body = scrape(t, url)
	for series, want := range map[string]string{
		`chatrelay_logins_total{proto="imap",result="ok"}`:           "2",
		`chatrelay_logins_total{proto="smtp",result="failed"}`:       "1",
		`chatrelay_deliveries_total{kind="local"}`:                   "1",
		`chatrelay_deliveries_total{kind="out"}`:                     "1",
		`chatrelay_delivery_seconds_count{kind="out"}`:               "1",
		`chatrelay_delivery_seconds_bucket{kind="local",le="0.025"}`: "1",
		`chatrelay_refusals_total{reason="523 5.7.1"}`:               "1",
		`chatrelay_refusals_total{reason="other"}`:                   "1",
		"chatrelay_imap_connections":                                 "1",
		"chatrelay_imap_idle_sessions":                               "0",
		"chatrelay_accounts":                                         "4",
		"chatrelay_queue_depth":                                      "2",
		"chatrelay_queue_oldest_seconds":                             "92",
	} {
		if got := value(body, series); got != want {
			t.Errorf("after: %s = %q, want %q", series, got, want)
		}
	}
	if strings.Contains(body, "example.org") {
		t.Error("an address reached the metrics")
	}
}

func TestMetricsNilIsOff(t *testing.T) {
	var m *Metrics
	m.Login("imap", true)
	m.Delivered("in", time.Second)
	m.Refused("550")
	m.IMAPConn()()
	m.Idle()()
}

func TestMetricsLabelVocabularyIsBounded(t *testing.T) {
	v := newVocab(2)
	for _, c := range []struct{ in, want string }{
		{"IMAP", "imap"},
		{"smtp", "smtp"},
		{"http", "other"},
		{"imap", "imap"},
		{"", "other"},
		{"x@y", "other"},
	} {
		if got := v.label(c.in); got != c.want {
			t.Errorf("label(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if got := sanitize(`550 5.1.1 "quoted"` + strings.Repeat("z", 50)); len(got) > 32 || strings.Contains(got, `"`) {
		t.Errorf("sanitize: %q", got)
	}
}

func TestMetricsServeRefusesPublicAddresses(t *testing.T) {
	m := New(Options{})
	for _, addr := range []string{":9150", "0.0.0.0:0", "[::]:0", "192.0.2.1:0", "example.org:9150", "nonsense"} {
		if e, err := m.Serve(addr, false); err == nil {
			e.Close()
			t.Errorf("%s accepted", addr)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "127.0.0.5:0"} {
		e, err := m.Serve(addr, false)
		if err != nil {
			t.Errorf("%s: %v", addr, err)
			continue
		}
		e.Close()
	}
}

func TestRecentErrorsKeepsLastErrorLines(t *testing.T) {
	var out bytes.Buffer
	r := NewRecentErrors(3)
	log := slog.New(r.Wrap(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn})))
	log.Info("not kept, not logged")
	log.Warn("logged, not kept")
	for i := range 5 {
		log.With("part", "queue").WithGroup("g").Error("failed", "n", i)
	}
	lines := r.Lines()
	if len(lines) != 3 {
		t.Fatalf("%d lines: %q", len(lines), lines)
	}
	for i, l := range lines {
		if !strings.Contains(l, "msg=failed") || !strings.Contains(l, "part=queue") || !strings.Contains(l, "g.n="+string(rune('2'+i))) {
			t.Errorf("line %d: %q", i, l)
		}
	}
	if strings.Count(out.String(), "\n") != 6 {
		t.Errorf("wrapped handler got:\n%s", out.String())
	}
	// With the log off, errors are still kept.
	r2 := NewRecentErrors(3)
	slog.New(r2.Wrap(slog.DiscardHandler)).Error("kept anyway")
	if got := r2.Lines(); len(got) != 1 || !strings.Contains(got[0], "kept anyway") {
		t.Errorf("log off: %q", got)
	}
}
