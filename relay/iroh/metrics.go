package iroh

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the relay carries: how many, never who.
type Metrics struct {
	Nodes       prometheus.Gauge
	Accepts     *prometheus.CounterVec
	Packets     prometheus.Counter
	Bytes       prometheus.Counter
	Dropped     *prometheus.CounterVec
	Refusals    *prometheus.CounterVec
	RateLimited prometheus.Counter
}

// NewMetrics makes the counters and registers them on reg (when not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Nodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatrelay_iroh_nodes", Help: "Nodes connected to the iroh relay.",
		}),
		Accepts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_iroh_accepts_total", Help: "iroh relay clients that completed the handshake, by transport (relay, websocket).",
		}, []string{"proto"}),
		Packets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatrelay_iroh_packets_forwarded_total", Help: "Packets the iroh relay delivered to their destination node.",
		}),
		Bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatrelay_iroh_bytes_forwarded_total", Help: "Packet bytes the iroh relay delivered to their destination node.",
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_iroh_packets_dropped_total", Help: "Packets the iroh relay dropped, by reason (no_peer, queue_full).",
		}, []string{"reason"}),
		Refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_iroh_refusals_total", Help: "iroh relay connections refused or closed, by reason (busy, busy_ip, shutdown, bad_upgrade, handshake, version, malformed, idle).",
		}, []string{"reason"}),
		RateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatrelay_iroh_rate_limited_total", Help: "Packets the iroh relay delayed to hold a client to its bytes per second.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Nodes, m.Accepts, m.Packets, m.Bytes, m.Dropped, m.Refusals, m.RateLimited)
	}
	return m
}

// accepted counts a client that completed the handshake; a node that
// replaced its own older connection is no new node.
func (m *Metrics) accepted(proto string, replaced bool) {
	if m != nil {
		m.Accepts.WithLabelValues(proto).Inc()
		if !replaced {
			m.Nodes.Inc()
		}
	}
}

func (m *Metrics) left() {
	if m != nil {
		m.Nodes.Dec()
	}
}

func (m *Metrics) forwarded(n int) {
	if m != nil {
		m.Packets.Inc()
		m.Bytes.Add(float64(n))
	}
}

func (m *Metrics) dropped(reason string) {
	if m != nil {
		m.Dropped.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) refused(reason string) {
	if m != nil {
		m.Refusals.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) rateLimited() {
	if m != nil {
		m.RateLimited.Inc()
	}
}
