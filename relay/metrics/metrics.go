// Package metrics counts what the relay does, for Prometheus, on a
// localhost listener (SPEC sections 3 and 11): events only, never who.
// Label values come from a small fixed vocabulary (protocol, result,
// delivery kind, refusal code); anything else is folded into "other" so a
// caller cannot leak a user name or grow the series without bound.
//
// Every method is safe on a nil *Metrics, so code paths need no check when
// metrics are off.
package metrics

import (
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options are where gauges read their values. Any may be nil.
type Options struct {
	// Accounts returns the number of accounts.
	Accounts func() (int, error)
	// Queue returns the outbound queue's depth and its oldest item's time
	// (zero when empty).
	Queue func() (depth int, oldest time.Time)
	// Now is the clock for the queue's oldest age; defaults to time.Now.
	Now func() time.Time
	// Version is exported as chatrelay_build_info{version}.
	Version string
	// Hibernated returns how many IMAP connections idle with their
	// imapserver connection let go (mailbox/imapext/hibernate.go).
	Hibernated func() int64
}

// Metrics is the relay's metric set, in its own registry (not the global
// default, so tests and two relays in one process stay apart).
type Metrics struct {
	reg *prometheus.Registry

	logins     *prometheus.CounterVec
	deliveries *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	refusals   *prometheus.CounterVec
	imapConns  prometheus.Gauge
	idle       prometheus.Gauge
	proxy      *Proxy
	tlsFailed  *prometheus.CounterVec

	protos  *vocab
	kinds   *vocab
	reasons *vocab
}

// New builds the metrics.
func New(opts Options) *Metrics {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_logins_total", Help: "Logins by protocol and result (ok, failed).",
		}, []string{"proto", "result"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_deliveries_total", Help: "Messages delivered, by kind: local (into a mailbox from submission), in (from another server), out (to another server).",
		}, []string{"kind"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chatrelay_delivery_seconds",
			Help:    "Time from accepting a message to delivering it, by kind.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
		}, []string{"kind"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_refusals_total", Help: "Messages and recipients refused, by reason (an SMTP code or a fixed policy word).",
		}, []string{"reason"}),
		imapConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatrelay_imap_connections", Help: "Open IMAP connections.",
		}),
		idle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatrelay_imap_idle_sessions", Help: "IMAP sessions in IDLE.",
		}),
		tlsFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_tls_handshake_failures_total", Help: "Failed TLS handshakes on the HTTPS listener (443), by reason: unknown_ca and bad_certificate (the client refused our certificate), timeout, other.",
		}, []string{"reason"}),
		protos:  newVocab(16),
		kinds:   newVocab(16),
		reasons: newVocab(64),
	}
	m.reg.MustRegister(m.logins, m.deliveries, m.latency, m.refusals, m.imapConns, m.idle, m.tlsFailed)
	m.proxy = newProxy(m.reg)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "chatrelay_build_info", Help: "Always 1; the version is a label.", ConstLabels: prometheus.Labels{"version": opts.Version},
	})
	info.Set(1)
	m.reg.MustRegister(info)
	if opts.Accounts != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "chatrelay_accounts", Help: "Accounts on this relay.",
		}, func() float64 {
			n, err := opts.Accounts()
			if err != nil {
				return -1
			}
			return float64(n)
		}))
	}
	if opts.Hibernated != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "chatrelay_imap_hibernated_connections", Help: "IMAP connections in IDLE whose protocol state is parked until the client or a mailbox change wakes them.",
		}, func() float64 { return float64(opts.Hibernated()) }))
	}
	if opts.Queue != nil {
		// One read of the queue serves both gauges of a scrape.
		var mu sync.Mutex
		var depth int
		var oldest, read time.Time
		stats := func() (int, time.Time) {
			mu.Lock()
			defer mu.Unlock()
			if now := opts.Now(); now.Sub(read) >= time.Second || now.Before(read) {
				depth, oldest = opts.Queue()
				read = now
			}
			return depth, oldest
		}
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "chatrelay_queue_depth", Help: "Messages waiting in the outbound queue.",
		}, func() float64 { d, _ := stats(); return float64(d) }))
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "chatrelay_queue_oldest_seconds", Help: "Age of the oldest message in the outbound queue; 0 when empty.",
		}, func() float64 {
			_, o := stats()
			if o.IsZero() {
				return 0
			}
			return opts.Now().Sub(o).Seconds()
		}))
	}
	return m
}

// Registry is the registry the metrics live in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Login counts a login attempt over proto ("imap", "smtp").
func (m *Metrics) Login(proto string, ok bool) {
	if m == nil {
		return
	}
	result := "failed"
	if ok {
		result = "ok"
	}
	m.logins.WithLabelValues(m.protos.label(proto), result).Inc()
}

// Delivered counts a delivered message of kind ("local", "in", "out") and
// how long it took from its 250 (or arrival) to delivery.
func (m *Metrics) Delivered(kind string, latency time.Duration) {
	if m == nil {
		return
	}
	k := m.kinds.label(kind)
	m.deliveries.WithLabelValues(k).Inc()
	m.latency.WithLabelValues(k).Observe(latency.Seconds())
}

// Refused counts a refusal. reason should be an SMTP code and enhanced
// code ("523 5.7.1") or a fixed word ("dkim", "quota", "rate"); never
// policy.Reply.Reason(), which carries detail. Values are trimmed to a
// safe alphabet and the first 64 distinct ones are kept, later ones count
// as "other".
func (m *Metrics) Refused(reason string) {
	if m == nil {
		return
	}
	m.refusals.WithLabelValues(m.reasons.label(reason)).Inc()
}

// TLSHandshakeFailed counts a failed TLS handshake on port 443 by what the
// error says: a client that refuses our certificate sends an alert
// (unknown_ca from rustls for an untrusted issuer, bad_certificate from
// others).
func (m *Metrics) TLSHandshakeFailed(err error) {
	if m == nil || err == nil {
		return
	}
	reason := "other"
	switch e := err.Error(); {
	case strings.Contains(e, "unknown certificate authority"):
		reason = "unknown_ca"
	case strings.Contains(e, "bad certificate"):
		reason = "bad_certificate"
	case strings.Contains(e, "timeout") || strings.Contains(e, "deadline"):
		reason = "timeout"
	}
	m.tlsFailed.WithLabelValues(reason).Inc()
}

// IMAPConn counts an open IMAP connection; call the returned func when it
// closes.
func (m *Metrics) IMAPConn() (closed func()) {
	if m == nil {
		return func() {}
	}
	m.imapConns.Inc()
	var once sync.Once
	return func() { once.Do(m.imapConns.Dec) }
}

// Idle counts an IMAP session in IDLE; call the returned func when it
// ends.
func (m *Metrics) Idle() (done func()) {
	if m == nil {
		return func() {}
	}
	m.idle.Inc()
	var once sync.Once
	return func() { once.Do(m.idle.Dec) }
}

// vocab keeps label values to a bounded set of safe strings.
type vocab struct {
	mu   sync.Mutex
	max  int
	seen map[string]bool
}

func newVocab(max int) *vocab { return &vocab{max: max, seen: map[string]bool{}} }

func (v *vocab) label(s string) string {
	s = sanitize(s)
	if s == "" {
		return "other"
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen[s] {
		return s
	}
	if len(v.seen) >= v.max {
		return "other"
	}
	v.seen[s] = true
	return s
}

// sanitize keeps [a-z0-9 ._-], at most 32 bytes. An "@" means someone
// passed an address: it is dropped whole.
func sanitize(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if strings.ContainsRune(s, '@') {
		return ""
	}
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 32; i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' || c == ' ' {
			b.WriteByte(c)
		}
	}
	return strings.TrimSpace(b.String())
}

// Register adds collectors of other parts of the relay (say the TURN
// server's) to the registry.
func (m *Metrics) Register(cs ...prometheus.Collector) {
	if m == nil {
		return
	}
	m.reg.MustRegister(cs...)
}
