package main

import (
	"fmt"
	"strings"
)

// metric is one row of the table.
type metric struct {
	key, label   string
	higherBetter bool
	get          func(*Result) (float64, bool)
}

func p4At(r *Result, i int) (float64, bool) {
	if len(r.P4) <= i || r.P4[i].Connections == 0 {
		return 0, false
	}
	return r.P4[i].KiBPerConn, true
}

var metrics = []metric{
	{"p1_p50_ms", "P1 delivery latency p50 (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P1 != nil, func() float64 { return r.P1.FromEnd.P50 })
	}},
	{"p1_p99_ms", "P1 delivery latency p99 (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P1 != nil, func() float64 { return r.P1.FromEnd.P99 })
	}},
	{"p1_second_p50_ms", "P1 the same, second client (Python) p50 (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P1Second != nil, func() float64 { return r.P1Second.FromEnd.P50 })
	}},
	{"p1_second_p99_ms", "P1 the same, second client (Python) p99 (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P1Second != nil, func() float64 { return r.P1Second.FromEnd.P99 })
	}},
	{"p2_p50_ms", "P2 Delta Chat ping round trip p50 (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P2 != nil && r.P2.RTT.N > 0, func() float64 { return r.P2.RTT.P50 })
	}},
	{"p3_msgs_per_s", "P3 submission throughput (msg/s, 32 clients, 4 KiB)", true, func(r *Result) (float64, bool) {
		return val(r.P3 != nil, func() float64 { return r.P3.PerSec })
	}},
	{"p3_cpu_ms_per_msg", "P3 server CPU per message (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P3 != nil && r.P3.Accepted > 0, func() float64 { return r.P3.CPUMsPerMessage })
	}},
	{"p4_kib_per_conn_small", "P4 memory per idle IMAP connection, first size (KiB)", false, func(r *Result) (float64, bool) { return p4At(r, 0) }},
	{"p4_kib_per_conn_large", "P4 memory per idle IMAP connection, second size (KiB)", false, func(r *Result) (float64, bool) { return p4At(r, 1) }},
	{"p4_compress_kib", "P4 the same, first size, with COMPRESS=DEFLATE as Delta Chat (KiB)", false, func(r *Result) (float64, bool) {
		return val(r.P4Compress != nil && r.P4Compress.Connections > 0, func() float64 { return r.P4Compress.KiBPerConn })
	}},
	{"p4_max_idle", "P4 most idle connections held (bounded search)", true, func(r *Result) (float64, bool) {
		return val(r.P4Max != nil, func() float64 { return float64(r.P4Max.Held) })
	}},
	{"p5_login_s", "P5 login storm: all logged in (s)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.LoggedIn == r.P5.Wanted, func() float64 { return r.P5.LoginSeconds })
	}},
	{"p5_logins_per_s", "P5 login storm: logins per second", true, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.LoginSeconds > 0, func() float64 { return float64(r.P5.LoggedIn) / r.P5.LoginSeconds })
	}},
	{"p5_cpu_ms_per_login", "P5 server CPU per login (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.LoggedIn > 0, func() float64 { return r.P5.CPUSeconds * 1000 / float64(r.P5.LoggedIn) })
	}},
	{"p5_cpu_s", "P5 server CPU during the storm (s)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil, func() float64 { return r.P5.CPUSeconds })
	}},
	{"p5_p1_during_p99_ms", "P5 during the storm: P1 p99 of a client that stayed connected (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.P1During != nil && r.P5.P1During.N > 0, func() float64 { return r.P5.P1During.P99 })
	}},
	{"p5_p1_during_second_p50_ms", "P5 during the storm: the same, second client in its own process, p50 (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.P1DuringSecond != nil && r.P5.P1DuringSecond.N > 0, func() float64 { return r.P5.P1DuringSecond.P50 })
	}},
	{"p5_p1_during_second_p99_ms", "P5 during the storm: the same, second client in its own process, p99 (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.P1DuringSecond != nil && r.P5.P1DuringSecond.N > 0, func() float64 { return r.P5.P1DuringSecond.P99 })
	}},
	{"p5_apart_p1_p50_ms", "P5 storm from a generator at lower priority (as other machines): P1 p50 of a connected client, own process (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.Apart != nil && r.P5.Apart.P1.N > 0, func() float64 { return r.P5.Apart.P1.P50 })
	}},
	{"p5_apart_p1_p99_ms", "P5 the same: P1 p99 (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.Apart != nil && r.P5.Apart.P1.N > 0, func() float64 { return r.P5.Apart.P1.P99 })
	}},
	{"p5_apart_login_s", "P5 the same: all logged in (s)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.Apart != nil && r.P5.Apart.Storm.LoggedIn == r.P5.Apart.Storm.Wanted, func() float64 { return r.P5.Apart.Storm.LoginSeconds })
	}},
	{"p5_warm_login_s", "P5 the storm again, server kept running: all logged in (s)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.Warm != nil && r.P5.Warm.LoggedIn == r.P5.Warm.Wanted, func() float64 { return r.P5.Warm.LoginSeconds })
	}},
	{"p5_resumed_login_s", "P5 the storm after a restart, clients resuming TLS: all logged in (s)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.Resumed != nil && r.P5.Resumed.LoggedIn == r.P5.Resumed.Wanted, func() float64 { return r.P5.Resumed.LoginSeconds })
	}},
	{"p5_resumed_share", "P5 the same: handshakes resumed (share)", true, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.Resumed != nil && r.P5.Resumed.Wanted > 0, func() float64 { return float64(r.P5.Resumed.Resumed) / float64(r.P5.Resumed.Wanted) })
	}},
	{"p5_resumed_cpu_ms_per_login", "P5 the same: server CPU per login (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.Resumed != nil && r.P5.Resumed.LoggedIn > 0, func() float64 { return r.P5.ResumedCPUSeconds * 1000 / float64(r.P5.Resumed.LoggedIn) })
	}},
	{"p4b_idle_s", "P4b authenticated IDLE connections (login, SELECT, IDLE) opened at once: all idle (s)", false, func(r *Result) (float64, bool) {
		return val(r.P4b != nil && r.P4b.Idling == r.P4b.Wanted, func() float64 { return r.P4b.IdleSeconds })
	}},
	{"p5_warm_cpu_ms_per_login", "P5 the storm again: server CPU per login (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P5 != nil && r.P5.Warm != nil && r.P5.Warm.LoggedIn > 0, func() float64 { return r.P5.WarmCPUSeconds * 1000 / float64(r.P5.Warm.LoggedIn) })
	}},
	{"p6_size_mib", "P6 size on disk (MiB)", false, func(r *Result) (float64, bool) {
		return val(r.P6 != nil && r.P6.SizeBytes > 0, func() float64 { return float64(r.P6.SizeBytes) / (1 << 20) })
	}},
	{"p6_idle_mib", "P6 idle memory, PSS (MiB)", false, func(r *Result) (float64, bool) {
		return val(r.P6 != nil, func() float64 { return float64(r.P6.IdlePSSKiB) / 1024 })
	}},
	{"p6_idle_anon_mib", "P6 idle memory, anonymous PSS (MiB)", false, func(r *Result) (float64, bool) {
		return val(r.P6 != nil && r.P6.IdleAnonKiB > 0, func() float64 { return float64(r.P6.IdleAnonKiB) / 1024 })
	}},
	{"p6_ready_ms", "P6 start to ready (ms)", false, func(r *Result) (float64, bool) {
		return val(r.P6 != nil, func() float64 { return r.P6.RestartMs })
	}},
}

func val(ok bool, f func() float64) (float64, bool) {
	if !ok {
		return 0, false
	}
	return f(), true
}

// ratios are chatrelay's value over each peer's, per metric.
func ratios(rs []*Result) map[string]map[string]float64 {
	var cr *Result
	for _, r := range rs {
		if r.Server == "chatrelay" {
			cr = r
		}
	}
	out := map[string]map[string]float64{}
	if cr == nil {
		return out
	}
	for _, r := range rs {
		if r == cr || r.Skipped != "" {
			continue
		}
		m := map[string]float64{}
		for _, mt := range metrics {
			a, ok1 := mt.get(cr)
			b, ok2 := mt.get(r)
			if ok1 && ok2 && b != 0 {
				m[mt.key] = a / b
			}
		}
		out[r.Server] = m
	}
	return out
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func markdown(rep *Report) string {
	var b strings.Builder
	mode := "full"
	if rep.Quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "Run %s (%s mode) on %s, %s CPUs, %s memory, %s.\n\n", rep.Date, mode, rep.Machine["cpu"], rep.Machine["cpus"], rep.Machine["memory"], rep.Machine["os"])
	var peers []*Result
	for _, r := range rep.Results {
		if r.Server != "chatrelay" && r.Skipped == "" {
			peers = append(peers, r)
		}
	}
	b.WriteString("| metric |")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, " %s |", r.Server)
	}
	for _, p := range peers {
		fmt.Fprintf(&b, " chatrelay / %s |", p.Server)
	}
	b.WriteString("\n|---|")
	for range len(rep.Results) + len(peers) {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, mt := range metrics {
		fmt.Fprintf(&b, "| %s |", label(rep, mt))
		for _, r := range rep.Results {
			if v, ok := mt.get(r); ok {
				fmt.Fprintf(&b, " %s |", num(v))
			} else {
				b.WriteString(" – |")
			}
		}
		for _, p := range peers {
			if v, ok := rep.Ratios[p.Server][mt.key]; ok {
				fmt.Fprintf(&b, " %s× |", num(v))
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\nLower is better except throughput and idle connections held. Ratios are chatrelay's figure over the peer's.\n")
	for _, r := range rep.Results {
		var lines []string
		if r.Skipped != "" {
			lines = append(lines, "skipped: "+r.Skipped)
		}
		for _, e := range r.Errors {
			lines = append(lines, "error: "+e)
		}
		if r.P4Max != nil {
			lines = append(lines, fmt.Sprintf("idle search stopped by: %s (%.1f KiB per connection at %d)", r.P4Max.StoppedBy, r.P4Max.KiBPerConn, r.P4Max.Held))
		}
		if r.P5 != nil && r.P5.LoggedIn != r.P5.Wanted {
			why := r.P5.FirstErr
			switch {
			case r.P5.MemoryLow:
				why = "stopped: the machine ran low on memory"
			case r.P5.TimedOut:
				why = "stopped at the time limit; " + why
			}
			lines = append(lines, fmt.Sprintf("login storm: %d of %d logged in within %.0fs (%s)", r.P5.LoggedIn, r.P5.Wanted, r.P5.LoginSeconds, why))
		}
		if r.P5 != nil {
			lines = append(lines, fmt.Sprintf("login storm: server used %.2f cores on average", r.P5.CPUCores))
		}
		if r.P6 != nil {
			lines = append(lines, fmt.Sprintf("%d processes at idle; size counts %s", r.P6.Processes, r.P6.SizeWhat))
		}
		lines = append(lines, r.Notes...)
		if len(lines) > 0 {
			fmt.Fprintf(&b, "\n%s:\n", r.Server)
			for _, l := range lines {
				fmt.Fprintf(&b, "- %s\n", l)
			}
		}
	}
	return b.String()
}

// label adds the connection counts to the P4 rows.
func label(rep *Report, mt metric) string {
	i := -1
	switch mt.key {
	case "p4_kib_per_conn_small":
		i = 0
	case "p4_kib_per_conn_large":
		i = 1
	}
	if i < 0 {
		return mt.label
	}
	for _, r := range rep.Results {
		if len(r.P4) > i {
			return strings.Replace(mt.label, map[int]string{0: "first size", 1: "second size"}[i], fmt.Sprintf("at %d", r.P4[i].Wanted), 1)
		}
	}
	return mt.label
}
