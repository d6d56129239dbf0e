package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Proxy counts the Shadowsocks listener: connections, sessions handed to
// a listener of the relay (by listener name), bytes each way, refusals by
// reason. Safe on a nil *Proxy.
type Proxy struct {
	conns    prometheus.Counter
	sessions *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	refusals *prometheus.CounterVec
	targets  *vocab
	reasons  *vocab
}

// Proxy returns the proxy's counters.
func (m *Metrics) Proxy() *Proxy {
	if m == nil {
		return nil
	}
	return m.proxy
}

func newProxy(reg *prometheus.Registry) *Proxy {
	p := &Proxy{
		conns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatrelay_proxy_connections_total", Help: "Connections accepted on the Shadowsocks listener.",
		}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_proxy_sessions_total", Help: "Proxied connections handed to a listener of the relay, by listener (imaps, imap, submissions, submission, https).",
		}, []string{"target"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_proxy_bytes_total", Help: "Bytes of proxied streams after decryption, by direction (in: from clients, out: to clients).",
		}, []string{"dir"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_proxy_refusals_total", Help: "Shadowsocks connections refused, by reason (auth, replay, timestamp, target, timeout, per_ip, total).",
		}, []string{"reason"}),
		targets: newVocab(8),
		reasons: newVocab(16),
	}
	reg.MustRegister(p.conns, p.sessions, p.bytes, p.refusals)
	return p
}

// Conn counts an accepted connection.
func (p *Proxy) Conn() {
	if p != nil {
		p.conns.Inc()
	}
}

// Session counts a connection handed to the relay's listener target.
func (p *Proxy) Session(target string) {
	if p != nil {
		p.sessions.WithLabelValues(p.targets.label(target)).Inc()
	}
}

// Bytes counts proxied bytes.
func (p *Proxy) Bytes(in, out int) {
	if p == nil {
		return
	}
	if in > 0 {
		p.bytes.WithLabelValues("in").Add(float64(in))
	}
	if out > 0 {
		p.bytes.WithLabelValues("out").Add(float64(out))
	}
}

// Refused counts a refusal.
func (p *Proxy) Refused(reason string) {
	if p != nil {
		p.refusals.WithLabelValues(p.reasons.label(reason)).Inc()
	}
}
