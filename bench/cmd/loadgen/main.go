// Command loadgen runs chatrelay's benchmarks (docs/BENCHMARKS.md): it
// starts chatrelay, Postfix + Dovecot and maddy one after the other on
// loopback ports from a temporary directory, measures each the same way
// (P1..P6), stops it, and writes results.json and results.md with the
// ratios of chatrelay to each peer. Run it through `make bench`
// (bench/run.sh), which builds and installs what it needs.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/bench/load"
)

type plan struct {
	Quick       bool
	Users       int           // accounts on every server
	P1Messages  int           // P1 sample size
	P1MaxGap    time.Duration // random pause before each P1 message
	P2Pings     int
	P3Clients   int
	P3Duration  time.Duration
	P3Size      int
	P4Small     int // idle connections, first measurement
	P4Large     int // and second (also the P5 storm)
	P4bCount    int // P4b: authenticated IDLE connections opened at once
	StormPar    int // connections being set up at once in the storm
	StormLimit  time.Duration
	SearchStep  int
	SearchMax   int
	SearchLimit time.Duration
	MinFreeKiB  int64           // stop the search when less memory is available
	Only        map[string]bool // nil: every measurement
}

// does reports whether measurement m (P1..P5) is part of the run.
func (p plan) does(m string) bool { return p.Only == nil || p.Only[m] }

func fullPlan() plan {
	return plan{Users: 10000, P1Messages: 500, P1MaxGap: 400 * time.Millisecond, P2Pings: 20,
		P3Clients: 32, P3Duration: 20 * time.Second, P3Size: 4096,
		P4Small: 1000, P4Large: 10000, P4bCount: 5000, StormPar: 1000, StormLimit: 240 * time.Second,
		SearchStep: 10000, SearchMax: 100000, SearchLimit: 240 * time.Second, MinFreeKiB: 3 << 20}
}

func quickPlan() plan {
	return plan{Quick: true, Users: 1000, P1Messages: 100, P1MaxGap: 300 * time.Millisecond, P2Pings: 5,
		P3Clients: 32, P3Duration: 5 * time.Second, P3Size: 4096,
		P4Small: 200, P4Large: 1000, P4bCount: 1000, StormPar: 500, StormLimit: 120 * time.Second,
		SearchStep: 0, MinFreeKiB: 3 << 20}
}

// Result is one server's figures.
type Result struct {
	Server  string   `json:"server"`
	Skipped string   `json:"skipped,omitempty"`
	Errors  []string `json:"errors,omitempty"`
	Notes   []string `json:"notes,omitempty"`

	P1 *load.LatencyResult `json:"p1_latency,omitempty"`
	// P1Second is P1 measured by bench/p1.py (Python's ssl and sockets).
	P1Second *SecondP1   `json:"p1_latency_second_client,omitempty"`
	P2       *PingResult `json:"p2_deltachat_ping,omitempty"`
	P3       *P3Result   `json:"p3_throughput,omitempty"`
	P4       []P4Result  `json:"p4_idle_memory,omitempty"`
	// P4Compress is P4's first size with COMPRESS=DEFLATE on, as Delta
	// Chat has it (chatrelay only: the peers, as configured, offer none).
	P4Compress *P4Result `json:"p4_idle_memory_compress,omitempty"`
	// P4Max is the most idle connections held (bounded search).
	P4Max *SearchResult `json:"p4_max_idle,omitempty"`
	P5    *P5Result     `json:"p5_login_storm,omitempty"`
	// P4b is P4bCount authenticated IDLE connections opened at once on a
	// restarted server.
	P4b *load.StormResult `json:"p4b_idle_open,omitempty"`
	P6  *P6Result         `json:"p6_footprint,omitempty"`
}

type P3Result struct {
	load.ThroughputResult
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	CPUMsPerMessage  float64 `json:"server_cpu_ms_per_message"`
	DrainSeconds     float64 `json:"drain_seconds"`
}

type P4Result struct {
	Connections int     `json:"connections"`
	Wanted      int     `json:"wanted"`
	BaselineKiB int64   `json:"baseline_pss_kib"`
	LoadedKiB   int64   `json:"loaded_pss_kib"`
	KiBPerConn  float64 `json:"kib_per_connection"`
	Processes   int     `json:"processes"`
	OpenSeconds float64 `json:"open_seconds"`
	FirstErr    string  `json:"first_error,omitempty"`
}

type SearchResult struct {
	Held       int     `json:"held"`
	StoppedBy  string  `json:"stopped_by"`
	PSSKiB     int64   `json:"pss_kib"`
	Seconds    float64 `json:"seconds"`
	KiBPerConn float64 `json:"kib_per_connection"`
}

type P5Result struct {
	load.StormResult
	CPUSeconds float64 `json:"server_cpu_seconds"`
	// CPUCores is server CPU over the storm's wall time (2 = both cores).
	CPUCores float64 `json:"server_cpu_cores"`
	// P1During is P1 (end of DATA to EXISTS) for a client connected
	// before the storm, measured while it runs.
	P1During *load.Summary `json:"p1_during_storm,omitempty"`
	// P1DuringSecond is the same measured by bench/p1.py, a process of
	// its own, with pauses of 0-50 ms.
	P1DuringSecond *load.Summary `json:"p1_during_storm_second_client,omitempty"`
	// Warm is the same storm again with the server kept running (a
	// network outage rather than a restart): logins it verified before
	// may be cached.
	Warm           *load.StormResult `json:"warm_storm,omitempty"`
	WarmCPUSeconds float64           `json:"warm_server_cpu_seconds,omitempty"`
	// Resumed is the storm after a restart with every client resuming a
	// TLS session from before it.
	Resumed           *load.StormResult `json:"resumed_storm,omitempty"`
	ResumedCPUSeconds float64           `json:"resumed_server_cpu_seconds,omitempty"`
	// Apart is the storm after a restart with the load generator at a
	// lower priority than the server and a P1 client in its own process.
	Apart *StormApart `json:"storm_apart,omitempty"`
}

// StormApart is a login storm whose generator runs at nice 10 and the
// server and bench/p1.py at -10: the two cores shared as if the storm came
// from other machines.
type StormApart struct {
	Storm load.StormResult `json:"storm"`
	P1    load.Summary     `json:"p1_during"`
}

// stormApart runs the storm of StormApart with the server s just
// restarted; the connections stay open in idlers.
func stormApart(ctx context.Context, p plan, s server, t load.Target, tmp string, idlers *load.Idlers) (*StormApart, error) {
	if err := s.Group().renice(-10); err != nil {
		return nil, fmt.Errorf("server priority: %w", err)
	}
	defer s.Group().renice(0)
	wait, stop, pid, err := startSecondP1(ctx, p, t, tmp, 1<<20, 0, 50)
	if err != nil {
		return nil, err
	}
	if err := renice(pid, -10); err != nil {
		stop()
		wait()
		return nil, err
	}
	if err := renice(os.Getpid(), 10); err != nil {
		stop()
		wait()
		return nil, err
	}
	storm := idlers.Open(ctx, t, load.OpenOptions{Count: p.P4Large, Accounts: p.P4Large, Parallel: p.StormPar, Idle: true, Timeout: p.StormLimit, PerSource: 20000, MinFreeKiB: p.MinFreeKiB})
	renice(os.Getpid(), 0) // back to normal, needs root as lowering does
	stop()
	py, err := wait()
	if err != nil {
		return nil, err
	}
	return &StormApart{Storm: storm, P1: py.FromEnd}, nil
}

// accountMaker is a server that makes its accounts' passwords itself
// (chatrelay: `account add`, /new, invites).
type accountMaker interface {
	MakeAccounts(ctx context.Context, n int) error
}

type P6Result struct {
	SizeBytes  int64  `json:"size_bytes"`
	SizeWhat   string `json:"size_what"`
	IdlePSSKiB int64  `json:"idle_pss_kib"`
	IdleRSSKiB int64  `json:"idle_rss_kib"`
	// IdleAnonKiB is the anonymous part of IdlePSSKiB (no mapped files).
	IdleAnonKiB  int64   `json:"idle_pss_anon_kib"`
	Processes    int     `json:"processes"`
	FirstStartMs float64 `json:"first_start_ms"`
	RestartMs    float64 `json:"start_to_ready_ms"`
}

type Report struct {
	Date    string                        `json:"date"`
	Quick   bool                          `json:"quick"`
	Machine map[string]string             `json:"machine"`
	Results []*Result                     `json:"results"`
	Ratios  map[string]map[string]float64 `json:"ratios_chatrelay_to_peer"`
}

func main() {
	quick := flag.Bool("quick", false, "small sizes, a few minutes in all")
	out := flag.String("out", ".cache/bench/results", "directory for results.json and results.md")
	cache := flag.String("cache", ".cache/bench", "where setup.sh put the binaries")
	only := flag.String("servers", "chatrelay,postfix-dovecot,maddy", "servers to measure, comma separated")
	keep := flag.Bool("keep", false, "keep the servers' temporary directory")
	remake := flag.String("report", "", "only rewrite results.md (and the ratios) from this results.json")
	onlyP := flag.String("only", "", "measure only these, comma separated (P1,P2,P3,P4,P4b,P5; P6 always), for working on one figure")
	p1n := flag.Int("p1-messages", 0, "P1 sample size (default 500, quick 100)")
	soak := flag.Duration("soak", 0, "instead of P1..P6: the soak (make soak) for this long, chatrelay only")
	soakIdle := flag.Int("soak-idle", 15000, "soak: connections in IDLE")
	soakRate := flag.Float64("soak-rate", 200, "soak: messages submitted per second")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if *remake != "" {
		var rep Report
		data, err := os.ReadFile(*remake)
		if err == nil {
			err = json.Unmarshal(data, &rep)
		}
		if err != nil {
			log.Fatal(err)
		}
		rep.Ratios = ratios(rep.Results)
		if err := writeReport(filepath.Dir(*remake), &rep); err != nil {
			log.Fatal(err)
		}
		fmt.Print(markdown(&rep))
		return
	}

	if *soak > 0 {
		if err := runSoak(*cache, *out, *soak, *soakIdle, *soakRate); err != nil {
			log.Fatal(err)
		}
		return
	}
	p := fullPlan()
	if *quick {
		p = quickPlan()
	}
	if *p1n > 0 {
		p.P1Messages = *p1n
	}
	if *onlyP != "" {
		p.Only = map[string]bool{}
		for _, m := range strings.Split(strings.ToUpper(*onlyP), ",") {
			p.Only[strings.TrimSpace(m)] = true
		}
	}
	if fds := raiseFDLimit(); p.SearchMax > fds-2000 {
		// One descriptor per connection on the client side, and the
		// server is held to the same limit.
		p.SearchMax = max(0, fds-2000)
		log.Printf("idle connection search capped at %d by the descriptor limit", p.SearchMax)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Everything is bounded: the whole run stops after 75 minutes.
	ctx, cancel := context.WithTimeout(ctx, 75*time.Minute)
	defer cancel()

	tmp, err := os.MkdirTemp("", "chatrelay-bench-")
	if err != nil {
		log.Fatal(err)
	}
	os.Chmod(tmp, 0o755)
	if !*keep {
		defer os.RemoveAll(tmp)
	}
	rep := &Report{Date: time.Now().UTC().Format(time.RFC3339), Quick: p.Quick, Machine: machine()}
	for _, name := range strings.Split(*only, ",") {
		if ctx.Err() != nil {
			break
		}
		r := &Result{Server: name}
		rep.Results = append(rep.Results, r)
		srv, err := newServer(name, tmp, *cache)
		if err != nil {
			r.Skipped = err.Error()
			log.Printf("%s: skipped: %v", name, err)
			continue
		}
		r.Notes = srv.Notes()
		measure(ctx, p, srv, r, tmp)
		srv.Group().remove()
		writeReport(*out, rep)
	}
	rep.Ratios = ratios(rep.Results)
	if err := writeReport(*out, rep); err != nil {
		log.Fatal(err)
	}
	md, _ := os.ReadFile(filepath.Join(*out, "results.md"))
	fmt.Println(string(md))
}

func newServer(name, tmp, cache string) (server, error) {
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	switch name {
	case "chatrelay":
		bin := abs(filepath.Join(cache, "chatrelay"))
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("no %s: run bench/setup.sh", bin)
		}
		return newChatrelay(tmp, bin)
	case "maddy":
		bin := abs(filepath.Join(cache, "maddy"))
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("no %s: run bench/setup.sh", bin)
		}
		return newMaddy(tmp, bin)
	case "postfix-dovecot":
		for _, b := range []string{"postfix", "dovecot", "openssl"} {
			if _, err := exec.LookPath(b); err != nil {
				return nil, fmt.Errorf("%s not installed (bench/setup.sh installs it as root)", b)
			}
		}
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("Postfix and Dovecot need root to start")
		}
		return newPostfixDovecot(tmp)
	}
	return nil, fmt.Errorf("unknown server %q", name)
}

// measure runs P1..P6 against one server, recording errors and going on
// with the next measurement where it can.
func measure(ctx context.Context, p plan, s server, r *Result, tmp string) {
	fail := func(what string, err error) {
		log.Printf("%s: %s: %v", s.Name(), what, err)
		r.Errors = append(r.Errors, what+": "+err.Error())
	}
	defer s.Stop()
	t := s.Target()
	logf := func(format string, args ...any) { log.Printf(s.Name()+": "+format, args...) }

	if err := s.Setup(p.Users); err != nil {
		fail("setup", err)
		return
	}
	first, err := s.Start(ctx)
	if err != nil {
		fail("start", err)
		return
	}
	if m, ok := s.(accountMaker); ok {
		st := time.Now()
		if err := m.MakeAccounts(ctx, p.Users); err != nil {
			fail("make accounts", err)
			return
		}
		t = s.Target()
		logf("%d accounts made by the server in %.1fs", p.Users, time.Since(st).Seconds())
	}
	logf("started in %v; logging in %d accounts once", first.Round(time.Millisecond), p.Users)
	// Each account keeps the TLS tickets it was given, for the storm that
	// resumes after a restart.
	sessions := load.NewSessions(p.Users)
	prep := load.Prepare(ctx, t, 0, p.Users, 32, 20*time.Minute, sessions)
	logf("accounts ready: %d in %.1fs (failed %d %s)", prep.LoggedIn, prep.LoginSeconds, prep.Failed, prep.FirstErr)
	if prep.Failed > 0 {
		fail("prepare accounts", fmt.Errorf("%d of %d failed: %s", prep.Failed, prep.Wanted, prep.FirstErr))
	}
	restart := func() (time.Duration, bool) {
		s.Stop()
		d, err := s.Start(ctx)
		if err != nil {
			fail("restart", err)
			return 0, false
		}
		return d, true
	}
	if err := s.Measuring(); err != nil {
		fail("measuring config", err)
		return
	}
	ready, ok := restart()
	if !ok {
		return
	}
	time.Sleep(3 * time.Second)
	size, what := s.Size()
	pss, anon, procs := s.Group().pssAnon()
	r.P6 = &P6Result{SizeBytes: size, SizeWhat: what, IdlePSSKiB: pss, IdleAnonKiB: anon, IdleRSSKiB: s.Group().rss(), Processes: procs,
		FirstStartMs: ms(first), RestartMs: ms(ready)}
	logf("P6: size %d MiB, idle PSS %d KiB (anonymous %d KiB, %d processes), ready in %v", size>>20, pss, anon, procs, ready.Round(time.Millisecond))

	// P1
	senders, rcpts := 100, 200
	if p.does("P1") {
		lctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
		var res load.LatencyResult
		probe, err := load.OpenLatency(lctx, t, 1, 0)
		if err == nil {
			// Split the sample by whether the server gave memory back
			// (RSS fell by 1 MiB or more) in the pause before a message.
			last := s.Group().rss()
			probe.Mark = func() bool {
				now := s.Group().rss()
				fell := now <= last-1024
				last = now
				return fell
			}
			res, err = probe.Run(lctx, p.P1Messages, p.P1MaxGap, p.P3Size)
			probe.Close()
		}
		cancel()
		if err != nil {
			fail("P1", err)
		}
		if res.FromEnd.N > 0 {
			r.P1 = &res
			logf("P1: n=%d p50 %.2f ms p99 %.2f ms (end of DATA -> EXISTS)", res.FromEnd.N, res.FromEnd.P50, res.FromEnd.P99)
			if m, u := res.Marked, res.Unmarked; m != nil && u != nil {
				logf("P1 after the server gave memory back: n=%d p50 %.2f p99 %.2f max %.2f ms; otherwise n=%d p50 %.2f p99 %.2f max %.2f ms",
					m.N, m.P50, m.P99, m.Max, u.N, u.P50, u.P99, u.Max)
			}
		}
		// The same figure from a second client stack (Python), written
		// apart from the first: a figure must survive both.
		if py, err := secondP1(ctx, p, t, tmp); err != nil {
			fail("P1 second client", err)
		} else {
			r.P1Second = py
			logf("P1 second client: n=%d p50 %.2f ms p99 %.2f ms", py.FromEnd.N, py.FromEnd.P50, py.FromEnd.P99)
		}
	}
	// P3
	if p.does("P3") {
		if err := s.Drain(ctx); err != nil {
			fail("P3 drain before", err)
		}
		cpu0 := s.Group().cpu()
		res, err := load.Throughput(ctx, t, p.P3Clients, senders, rcpts, p.P3Duration, 0, p.P3Size)
		if err != nil {
			fail("P3", err)
		} else {
			d0 := time.Now()
			if err := s.Drain(ctx); err != nil {
				fail("P3 drain", err)
			}
			drain := time.Since(d0)
			cpu := s.Group().cpu() - cpu0
			r.P3 = &P3Result{ThroughputResult: res, ServerCPUSeconds: cpu.Seconds(), DrainSeconds: drain.Seconds()}
			if res.Accepted > 0 {
				r.P3.CPUMsPerMessage = ms(cpu) / float64(res.Accepted)
			}
			logf("P3: %.0f msg/s (%d accepted, %d failed %s), %.2f CPU-ms/msg, drain %.1fs", res.PerSec, res.Accepted, res.Failed, res.FirstErr, r.P3.CPUMsPerMessage, drain.Seconds())
		}
	}
	// P2
	if p.does("P2") {
		pctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
		res, err := pings(pctx, t, 300, 301, p.P2Pings, filepath.Join(tmp, s.Name()+"-deltachat"))
		cancel()
		if err != nil {
			fail("P2", err)
			res.Error = err.Error()
		}
		r.P2 = &res
		logf("P2: n=%d p50 %.0f ms (per leg: core send p50 %.0f ms, delivery to IncomingMsg p50 %.0f ms)", res.RTT.N, res.RTT.P50, res.Send.P50, res.Deliver.P50)
	}
	// P4, first size
	if p.does("P4") {
		if _, ok := restart(); !ok {
			return
		}
		time.Sleep(2 * time.Second)
		r.P4 = append(r.P4, idleMemory(ctx, p, s, p.P4Small, p.P4Small, 100, false, logf))
		if s.Name() == "chatrelay" {
			if _, ok := restart(); !ok {
				return
			}
			time.Sleep(2 * time.Second)
			c := idleMemory(ctx, p, s, p.P4Small, p.P4Small, 100, true, logf)
			r.P4Compress = &c
		}
	}
	if p.does("P4B") {
		if _, ok := restart(); !ok {
			return
		}
		time.Sleep(2 * time.Second)
		var idlers load.Idlers
		res := idlers.Open(ctx, t, load.OpenOptions{Count: p.P4bCount, Accounts: p.P4bCount, Parallel: p.StormPar, Idle: true, Timeout: p.StormLimit, PerSource: 20000, MinFreeKiB: p.MinFreeKiB})
		idlers.Close()
		r.P4b = &res
		logf("P4b: %d/%d idle in %.2fs (logged in %.2fs), failed %d %s", res.Idling, res.Wanted, res.IdleSeconds, res.LoginSeconds, res.Failed, res.FirstErr)
	}
	if !p.does("P4") && !p.does("P5") {
		return
	}

	// P5: a restart, then every account logs in at once; the connections
	// then stay in IDLE for P4's second size and the search.
	if _, ok := restart(); !ok {
		return
	}
	time.Sleep(2 * time.Second)
	base, _ := s.Group().pss()
	cpu0 := s.Group().cpu()
	var idlers load.Idlers
	defer idlers.Close()
	// A client that stayed connected through the storm goes on chatting:
	// P1 while the storm runs, a message every 0-50 ms.
	var during chan load.LatencyResult
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	probe, perr := load.OpenLatency(ctx, t, 5, 4)
	if perr != nil {
		fail("P1 during the storm", perr)
	} else {
		defer probe.Close()
		during = make(chan load.LatencyResult, 1)
		go func() {
			res, err := probe.Run(probeCtx, 1<<20, 50*time.Millisecond, p.P3Size)
			if err != nil && probeCtx.Err() == nil {
				log.Printf("%s: P1 during the storm: %v", s.Name(), err)
			}
			during <- res
		}()
	}
	// The same from a process of its own (bench/p1.py): the Go probe
	// shares its runtime with the storm's thousand client handshakes, a
	// connected phone does not.
	var pyDuring *load.Summary
	pyWait, pyStop, _, pyErr := startSecondP1(ctx, p, t, tmp, 1<<20, 0, 50)
	if pyErr != nil {
		fail("P1 during the storm (second client)", pyErr)
	}
	st := time.Now()
	storm := idlers.Open(ctx, t, load.OpenOptions{Count: p.P4Large, Accounts: p.P4Large, Parallel: p.StormPar, Idle: true, Timeout: p.StormLimit, PerSource: 20000, MinFreeKiB: p.MinFreeKiB})
	wall := time.Since(st)
	cpu := s.Group().cpu() - cpu0
	stopProbe()
	if pyErr == nil {
		pyStop()
		if py, err := pyWait(); err != nil {
			fail("P1 during the storm (second client)", err)
		} else {
			pyDuring = &py.FromEnd
			logf("P1 during the storm, second client (own process): n=%d p50 %.2f ms p99 %.2f ms", py.FromEnd.N, py.FromEnd.P50, py.FromEnd.P99)
		}
	}
	r.P5 = &P5Result{StormResult: storm, CPUSeconds: cpu.Seconds(), CPUCores: cpu.Seconds() / wall.Seconds(), P1DuringSecond: pyDuring}
	logf("P5: %d/%d logged in in %.2fs (idle %.2fs), failed %d %s; server CPU %.1fs (%.2f cores)", storm.LoggedIn, storm.Wanted, storm.LoginSeconds, storm.IdleSeconds, storm.Failed, storm.FirstErr, cpu.Seconds(), r.P5.CPUCores)
	if during != nil {
		res := <-during
		r.P5.P1During = &res.FromEnd
		logf("P1 during the storm: n=%d p50 %.2f ms p99 %.2f ms", res.FromEnd.N, res.FromEnd.P50, res.FromEnd.P99)
	}
	loaded, procs := settledPSS(ctx, s)
	n := idlers.Len()
	p4 := P4Result{Connections: n, Wanted: p.P4Large, BaselineKiB: base, LoadedKiB: loaded, Processes: procs, OpenSeconds: storm.IdleSeconds, FirstErr: storm.FirstErr}
	if n > 0 {
		p4.KiBPerConn = float64(loaded-base) / float64(n)
	}
	r.P4 = append(r.P4, p4)
	logf("P4: %d idle: %.1f KiB each (PSS %d -> %d KiB, %d processes)", n, p4.KiBPerConn, base, loaded, procs)

	// The storm again, the server kept running: every client drops its
	// connection and comes back at once.
	if n == p.P4Large && p.does("P5") {
		idlers.Close()
		time.Sleep(2 * time.Second)
		cpu0 := s.Group().cpu()
		warm := idlers.Open(ctx, t, load.OpenOptions{Count: p.P4Large, Accounts: p.P4Large, Parallel: p.StormPar, Idle: true, Timeout: p.StormLimit, PerSource: 20000, MinFreeKiB: p.MinFreeKiB})
		r.P5.Warm, r.P5.WarmCPUSeconds = &warm, (s.Group().cpu() - cpu0).Seconds()
		logf("P5 warm: %d/%d logged in in %.2fs, failed %d %s; server CPU %.1fs", warm.LoggedIn, warm.Wanted, warm.LoginSeconds, warm.Failed, warm.FirstErr, r.P5.WarmCPUSeconds)
		n = idlers.Len()
	}

	// The storm after a restart again, every client resuming its TLS
	// session with a ticket from before the restart (Delta Chat keeps its
	// tickets while it runs).
	if n == p.P4Large && p.does("P5") {
		idlers.Close()
		if _, ok := restart(); !ok {
			return
		}
		time.Sleep(2 * time.Second)
		cpu0 := s.Group().cpu()
		st := time.Now()
		res := idlers.Open(ctx, t, load.OpenOptions{Count: p.P4Large, Accounts: p.P4Large, Parallel: p.StormPar, Idle: true, Timeout: p.StormLimit, PerSource: 20000, MinFreeKiB: p.MinFreeKiB, Sessions: sessions})
		cpu := s.Group().cpu() - cpu0
		r.P5.Resumed, r.P5.ResumedCPUSeconds = &res, cpu.Seconds()
		logf("P5 resumed: %d/%d logged in in %.2fs (idle %.2fs), %d resumed, failed %d %s; server CPU %.1fs (%.2f cores)", res.LoggedIn, res.Wanted, res.LoginSeconds, res.IdleSeconds, res.Resumed, res.Failed, res.FirstErr, cpu.Seconds(), cpu.Seconds()/time.Since(st).Seconds())
		n = idlers.Len()
	}

	// The storm after a restart once more, the load generator's storm at a
	// lower priority than the server and a P1 client of its own process,
	// as when the reconnecting clients are other machines: what a phone
	// that stayed connected sees. Root only (priorities above normal).
	if n == p.P4Large && p.does("P5") && os.Geteuid() == 0 {
		idlers.Close()
		if _, ok := restart(); !ok {
			return
		}
		time.Sleep(2 * time.Second)
		if a, err := stormApart(ctx, p, s, t, tmp, &idlers); err != nil {
			fail("P5 apart", err)
		} else {
			r.P5.Apart = a
			logf("P5 apart: %d/%d logged in in %.2fs, failed %d %s; P1 meanwhile (own process) n=%d p50 %.2f ms p99 %.2f ms", a.Storm.LoggedIn, a.Storm.Wanted, a.Storm.LoginSeconds, a.Storm.Failed, a.Storm.FirstErr, a.P1.N, a.P1.P50, a.P1.P99)
		}
		n = idlers.Len()
	}

	// The search goes on from a storm that finished; a server that could
	// not take the storm in time would not get further in the search.
	if p.SearchStep > 0 && n == p.P4Large && p.does("P4") {
		r.P4Max = search(ctx, p, s, &idlers, base, logf)
	}
	idlers.Close()
}

// idleMemory opens n IDLE connections (accounts 0..accounts-1) on a fresh
// server and reports the server's memory per connection.
func idleMemory(ctx context.Context, p plan, s server, n, accounts, par int, compress bool, logf func(string, ...any)) P4Result {
	base, _ := s.Group().pss()
	var idlers load.Idlers
	defer idlers.Close()
	res := idlers.Open(ctx, s.Target(), load.OpenOptions{Count: n, Accounts: accounts, Parallel: par, Idle: true, Compress: compress, Timeout: p.StormLimit, PerSource: 20000, MinFreeKiB: p.MinFreeKiB})
	loaded, procs := settledPSS(ctx, s)
	r := P4Result{Connections: idlers.Len(), Wanted: n, BaselineKiB: base, LoadedKiB: loaded, Processes: procs, OpenSeconds: res.IdleSeconds, FirstErr: res.FirstErr}
	if r.Connections > 0 {
		r.KiBPerConn = float64(loaded-base) / float64(r.Connections)
	}
	what := ""
	if compress {
		what = " with COMPRESS"
	}
	logf("P4: %d idle%s: %.1f KiB each (PSS %d -> %d KiB, %d processes) %s", r.Connections, what, r.KiBPerConn, base, loaded, procs, res.FirstErr)
	return r
}

// search adds idle connections in steps (accounts reused, spread over
// loopback source addresses) until a step fails, memory runs low, the
// count cap or the time limit is reached.
func search(ctx context.Context, p plan, s server, idlers *load.Idlers, base int64, logf func(string, ...any)) *SearchResult {
	start := time.Now()
	res := &SearchResult{StoppedBy: "count cap"}
	for step := 1; ; step++ {
		have := idlers.Len()
		if have >= p.SearchMax {
			break
		}
		left := p.SearchLimit - time.Since(start)
		if left <= 5*time.Second {
			res.StoppedBy = "time limit"
			break
		}
		if load.MemAvailableKiB() < p.MinFreeKiB {
			res.StoppedBy = "memory low"
			break
		}
		want := min(p.SearchStep, p.SearchMax-have)
		st := idlers.Open(ctx, s.Target(), load.OpenOptions{Count: want, Accounts: p.Users, Parallel: p.StormPar, Idle: true, Timeout: left,
			PerSource: 20000, SourceBase: 1 + step, MaxFail: want / 100, MinFreeKiB: p.MinFreeKiB})
		logf("search: +%d idle (failed %d %s), now %d, MemAvailable %d MiB", st.Idling, st.Failed, st.FirstErr, idlers.Len(), load.MemAvailableKiB()>>10)
		if st.MemoryLow {
			res.StoppedBy = "memory low"
			break
		}
		if st.TimedOut {
			res.StoppedBy = "time limit"
			break
		}
		if st.Failed > 0 {
			res.StoppedBy = "connections failed: " + st.FirstErr
			break
		}
	}
	res.Held = idlers.Len()
	res.PSSKiB, _ = settledPSS(ctx, s)
	res.Seconds = time.Since(start).Seconds()
	if res.Held > 0 {
		res.KiBPerConn = float64(res.PSSKiB-base) / float64(res.Held)
	}
	logf("search: held %d idle connections (%s), PSS %d MiB", res.Held, res.StoppedBy, res.PSSKiB>>10)
	return res
}

// settledPSS is the server's memory once connections are idle: the
// smallest of samples every 2 s over 30 s. A garbage-collected server
// (chatrelay, maddy) holds garbage from setting the connections up for a
// while and returns it to the kernel gradually.
func settledPSS(ctx context.Context, s server) (kib int64, procs int) {
	kib, procs = s.Group().pss()
	for range 15 {
		select {
		case <-ctx.Done():
			return kib, procs
		case <-time.After(2 * time.Second):
		}
		if k, p := s.Group().pss(); k < kib {
			kib, procs = k, p
		}
	}
	return kib, procs
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// raiseFDLimit raises the descriptor limit as far as allowed (servers
// started from here inherit it) and returns it.
func raiseFDLimit() int {
	lim := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		var cur syscall.Rlimit
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur)
		cur.Cur = cur.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &cur)
		log.Printf("fd limit %d (could not raise to %d: %v)", cur.Cur, lim.Cur, err)
		return int(cur.Cur)
	}
	return int(lim.Cur)
}

func machine() map[string]string {
	m := map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		m["memory"] = strings.Join(strings.Fields(line)[1:], " ")
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m["kernel"] = strings.TrimSpace(string(out))
	}
	if data, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m["os"] = strings.Trim(v, `"`)
			}
		}
	}
	for _, c := range [][]string{{"postfix", "postconf", "-h", "mail_version"}, {"dovecot", "dovecot", "--version"}} {
		if out, err := exec.Command(c[1], c[2:]...).Output(); err == nil {
			m[c[0]] = strings.TrimSpace(string(out))
		}
	}
	m["maddy"] = "v0.8.1"
	return m
}

func writeReport(dir string, rep *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), data, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.md"), []byte(markdown(rep)), 0o644)
}

// SecondP1 is bench/p1.py's report.
type SecondP1 struct {
	Client   string       `json:"client"`
	FromEnd  load.Summary `json:"end_of_data_to_exists"`
	Submit   load.Summary `json:"end_of_data_to_250"`
	Failures int          `json:"failures"`
}

// secondP1 runs bench/p1.py against t: accounts 3 -> 2 (not P1's own),
// the same message, pauses of 100-500 ms.
func secondP1(ctx context.Context, p plan, t load.Target, tmp string) (*SecondP1, error) {
	wait, _, _, err := startSecondP1(ctx, p, t, tmp, p.P1Messages, 100, 500)
	if err != nil {
		return nil, err
	}
	return wait()
}

// startSecondP1 starts bench/p1.py for n messages with pauses of gapMin to
// gapMax ms; stop ends it early (SIGTERM: it finishes the message under
// way and reports), wait returns its report; pid is its process.
func startSecondP1(ctx context.Context, p plan, t load.Target, tmp string, n, gapMin, gapMax int) (wait func() (*SecondP1, error), stop func(), pid int, err error) {
	py, err := exec.LookPath("python3")
	if err != nil {
		return nil, nil, 0, err
	}
	msgFile := filepath.Join(tmp, "p1-message.eml")
	if err := os.WriteFile(msgFile, load.Message(t.User(3), t.User(2), p.P3Size), 0o644); err != nil {
		return nil, nil, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	cmd := exec.CommandContext(ctx, py, filepath.Join("bench", "p1.py"))
	cmd.Env = append(os.Environ(),
		"BENCH_IMAPS="+t.IMAPS, "BENCH_SUBMISSIONS="+t.Submissions,
		"BENCH_FROM="+t.User(3), "BENCH_FROM_PASS="+t.Pass(3),
		"BENCH_TO="+t.User(2), "BENCH_TO_PASS="+t.Pass(2),
		fmt.Sprintf("BENCH_N=%d", n), fmt.Sprintf("BENCH_GAP_MIN_MS=%d", gapMin), fmt.Sprintf("BENCH_GAP_MAX_MS=%d", gapMax),
		"BENCH_MSG_FILE="+msgFile, "BENCH_REIDLE="+os.Getenv("BENCH_REIDLE"))
	cmd.Stderr = os.Stderr
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, nil, 0, err
	}
	wait = func() (*SecondP1, error) {
		defer cancel()
		if err := cmd.Wait(); err != nil {
			return nil, err
		}
		var res SecondP1
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			return nil, fmt.Errorf("bench/p1.py said %q: %w", out.String(), err)
		}
		if res.FromEnd.N == 0 {
			return nil, fmt.Errorf("bench/p1.py measured nothing (%d failures)", res.Failures)
		}
		return &res, nil
	}
	stop = func() { cmd.Process.Signal(syscall.SIGTERM) }
	return wait, stop, cmd.Process.Pid, nil
}

// runSoak is `make soak`: chatrelay with idle accounts each in IDLE and a
// steady stream of submissions to them (bench/load.Soak), reported in
// soak.json and on stdout.
func runSoak(cache, out string, d time.Duration, idle int, rate float64) error {
	if fds := raiseFDLimit(); idle > fds-2000 {
		return fmt.Errorf("%d idle connections need more than the %d descriptors this process may open", idle, fds)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Minute)
	defer cancel()
	tmp, err := os.MkdirTemp("", "chatrelay-soak-")
	if err != nil {
		return err
	}
	os.Chmod(tmp, 0o755)
	defer os.RemoveAll(tmp)
	srv, err := newServer("chatrelay", tmp, cache)
	if err != nil {
		return err
	}
	s := srv.(*chatrelay)
	defer s.Group().remove()
	defer s.Stop()
	const senders = 16
	if err := s.Setup(idle + senders); err != nil {
		return err
	}
	if _, err := s.Start(ctx); err != nil {
		return err
	}
	st := time.Now()
	if err := s.MakeAccounts(ctx, idle+senders); err != nil {
		return err
	}
	log.Printf("soak: %d accounts made in %.1fs", idle+senders, time.Since(st).Seconds())
	log.Printf("soak: %d connections to IDLE, then %.0f messages/s for %v", idle, rate, d)
	res, err := load.Soak(ctx, s.Target(), load.SoakOptions{Idle: idle, Senders: senders, Rate: rate, Duration: d, Size: 4096, Parallel: 500,
		Sample: func() (int64, int64) { pss, _ := s.Group().pss(); return s.Group().rss(), pss }})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "machine": machine(), "soak": res}, "", "  ")
	if err := os.WriteFile(filepath.Join(out, "soak.json"), data, 0o644); err != nil {
		return err
	}
	fmt.Printf("soak: %d idle connections (open in %.1fs), %d sent (%.1f/s), %d delivered, %d missing, %d send errors, %d idle connections dropped, %d sends late\n",
		res.Idle, res.OpenSeconds, res.Sent, res.RateAchieved, res.Delivered, res.Missing, res.SendErrors, res.IdleDropped, res.Late)
	fmt.Printf("server RSS %d -> %d KiB, PSS %d -> %d KiB; end of DATA -> EXISTS p50 %.2f ms p99 %.2f ms max %.1f ms\n",
		res.StartRSSKiB, res.EndRSSKiB, res.StartPSSKiB, res.EndPSSKiB, res.Latency.P50, res.Latency.P99, res.Latency.Max)
	fmt.Println("| minute | sent | delivered | p50 (ms) | p99 (ms) | max (ms) | server RSS (MiB) |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|---:|")
	for _, m := range res.Minutes {
		fmt.Printf("| %d | %d | %d | %.2f | %.2f | %.1f | %.1f |\n", m.Minute, m.Sent, m.Delivered, m.Latency.P50, m.Latency.P99, m.Latency.Max, float64(m.RSSKiB)/1024)
	}
	if res.FirstErr != "" {
		fmt.Println("first error:", res.FirstErr)
	}
	return nil
}
