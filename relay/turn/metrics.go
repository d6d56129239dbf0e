package turn

import "github.com/prometheus/client_golang/prometheus"

// Collectors are the server's Prometheus metrics: counts only, never who.
func (s *Server) Collectors() []prometheus.Collector {
	counter := func(name, help string, labels prometheus.Labels, f func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 { return float64(f()) })
	}
	const bytesHelp = "Bytes relayed by TURN: in arrived at relay ports from peers, out was sent from them to peers."
	const refusedHelp = "TURN requests refused, by reason: auth (expired, forged or malformed credentials), peer (a peer the policy forbids), quota (over an allocation or connection cap)."
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "chatrelay_turn_allocations", Help: "Live TURN allocations."},
			func() float64 { return float64(s.Stats().Allocations) }),
		counter("chatrelay_turn_allocations_total", "TURN allocations made.", nil, s.stats.allocations.Load),
		counter("chatrelay_turn_relayed_bytes_total", bytesHelp, prometheus.Labels{"direction": "in"}, s.stats.bytesIn.Load),
		counter("chatrelay_turn_relayed_bytes_total", bytesHelp, prometheus.Labels{"direction": "out"}, s.stats.bytesOut.Load),
		counter("chatrelay_turn_refusals_total", refusedHelp, prometheus.Labels{"reason": "auth"}, s.stats.refusedAuth.Load),
		counter("chatrelay_turn_refusals_total", refusedHelp, prometheus.Labels{"reason": "peer"}, s.stats.refusedPeer.Load),
		counter("chatrelay_turn_refusals_total", refusedHelp, prometheus.Labels{"reason": "quota"}, s.stats.refusedQuota.Load),
		counter("chatrelay_turn_dropped_datagrams_total", "Datagrams dropped over a client's TURN bandwidth cap.", nil, s.stats.droppedPackets.Load),
	}
}
