// Package bench holds chatrelay's benchmark harness. The comparison with
// Postfix + Dovecot and maddy is `make bench` (cmd/loadgen, run.sh); the
// benchmarks in this file run the same scenarios against a relay started
// in-process (relaytest), so that pprof sees the relay's code:
//
//	go test ./bench -run '^$' -bench P3 -benchtime 1x -profdir /tmp/prof
//	go tool pprof -top /tmp/prof/P3.cpu.pprof
//
// With -profdir each benchmark writes a CPU profile of its measured part
// only (not of the set-up), and P4 also a heap profile. Without it they
// are ordinary Go benchmarks that report their figures as metrics. The
// load generator shares the process, so profiles show client frames too
// (package bench/load, crypto/tls client side): read them by package.
package bench

import (
	"context"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/bench/load"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

var profDir = flag.String("profdir", "", "write CPU (and heap) profiles of each benchmark's measured part to this directory")

// hibernateAfter is the relay's IMAPHibernateAfter in benchmarks.
const hibernateAfter = 200 * time.Millisecond

// benchConfig is a relaytest config with the limits that would measure
// themselves instead of the relay turned off, as in cmd/loadgen.
func benchConfig(dir string) relay.Config {
	cfg := relaytest.Config(dir)
	cfg.SendRatePerMinute, cfg.SendRateBurst = 1e9, 1e9
	cfg.Limits = relay.ConnLimits{}
	cfg.NewAccountsPerMinute = 0 // every account made at first login, from one address
	// Idle connections hibernate soon, so that P4 sees them hibernated.
	cfg.IMAPHibernateAfter = hibernateAfter
	return cfg
}

func target(r *relaytest.Relay) load.Target {
	return load.Target{IMAPS: r.AddrOf("imaps"), Submissions: r.AddrOf("submissions"), Domain: r.Cfg.MailDomain()}
}

// makeAccounts adds accounts [0, n) with passwords of the shape and kind
// the relay makes for /new and invites, and returns t with them.
func makeAccounts(b *testing.B, r *relaytest.Relay, t load.Target, n int) load.Target {
	b.Helper()
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	t.Passwords = make([]string, n)
	for i := range n {
		pw := make([]byte, 24)
		for j := range pw {
			pw[j] = letters[rand.IntN(len(letters))]
		}
		pw[0], pw[1], pw[2] = 'a', 'A', '0' // all three classes
		t.Passwords[i] = string(pw)
		if err := r.Server.Store().CreateAccount(t.User(i), t.Passwords[i], mailbox.Generated); err != nil {
			b.Fatal(err)
		}
	}
	return t
}

// profile starts a CPU profile named name when -profdir is set and returns
// the function that stops it.
func profile(b *testing.B, name string) func() {
	b.Helper()
	if *profDir == "" {
		return func() {}
	}
	if err := os.MkdirAll(*profDir, 0o755); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(filepath.Join(*profDir, name+".cpu.pprof"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatalf("%v (do not combine -profdir with -cpuprofile)", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		b.Logf("CPU profile: %s", f.Name())
	}
}

func heapProfile(b *testing.B, name string) {
	if *profDir == "" {
		return
	}
	runtime.GC()
	f, err := os.Create(filepath.Join(*profDir, name+".heap.pprof"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	pprof.Lookup("heap").WriteTo(f, 0)
	b.Logf("heap profile: %s", f.Name())
}

func prepare(b *testing.B, t load.Target, n int) {
	b.Helper()
	res := load.Prepare(context.Background(), t, 0, n, 32, 10*time.Minute, nil)
	if res.Failed > 0 {
		b.Fatalf("preparing %d accounts: %d failed: %s", n, res.Failed, res.FirstErr)
	}
}

// BenchmarkP1Latency: one message at a time, end of DATA until the
// recipient's IDLE reads EXISTS.
func BenchmarkP1Latency(b *testing.B) {
	r := relaytest.StartConfig(b, benchConfig(b.TempDir()))
	t := target(r)
	prepare(b, t, 2)
	stop := profile(b, "P1")
	b.ResetTimer()
	res, err := load.Latency(b.Context(), t, 1, 0, max(b.N, 20), 0, 4096)
	b.StopTimer()
	stop()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(res.FromEnd.P50, "p50-ms")
	b.ReportMetric(res.FromEnd.P99, "p99-ms")
	b.ReportMetric(res.Submit.P50, "p50-250-ms")
}

// BenchmarkP3Submit: 32 clients submit 4 KiB encrypted-format messages;
// b.N messages in all (at least 2000).
func BenchmarkP3Submit(b *testing.B) {
	r := relaytest.StartConfig(b, benchConfig(b.TempDir()))
	t := target(r)
	prepare(b, t, 64)
	stop := profile(b, "P3")
	b.ResetTimer()
	res, err := load.Throughput(b.Context(), t, 32, 0, 32, 5*time.Minute, int64(max(b.N, 2000)), 4096)
	b.StopTimer()
	stop()
	if err != nil {
		b.Fatal(err)
	}
	if res.Failed > 0 {
		b.Fatalf("%d failed: %s", res.Failed, res.FirstErr)
	}
	b.ReportMetric(res.PerSec, "msgs/s")
}

// BenchmarkP4Idle: 2000 IMAP connections logged in, INBOX selected, in
// IDLE; reports the process's heap and stacks per connection (client side
// included: the heap profile tells them apart).
func BenchmarkP4Idle(b *testing.B) { p4Idle(b, "P4", false) }

// BenchmarkP4IdleCompress is P4 with COMPRESS=DEFLATE on every connection,
// as Delta Chat has it. The load generator's own inflater per connection
// counts too; the heap profile tells it apart.
func BenchmarkP4IdleCompress(b *testing.B) { p4Idle(b, "P4compress", true) }

func p4Idle(b *testing.B, name string, compress bool) {
	const n = 2000
	r := relaytest.StartConfig(b, benchConfig(b.TempDir()))
	t := target(r)
	prepare(b, t, n)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := profile(b, name)
	b.ResetTimer()
	var idlers load.Idlers
	defer idlers.Close()
	res := idlers.Open(b.Context(), t, load.OpenOptions{Count: n, Accounts: n, Parallel: 100, Idle: true, Compress: compress, Timeout: 5 * time.Minute})
	b.StopTimer()
	if res.Failed > 0 {
		b.Fatalf("%d failed: %s", res.Failed, res.FirstErr)
	}
	stop()
	// Long enough for the last connections to hibernate.
	time.Sleep(2*hibernateAfter + time.Second)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heapProfile(b, name)
	per := func(a, b uint64) float64 { return float64(int64(a)-int64(b)) / 1024 / n }
	b.ReportMetric(per(after.HeapInuse, before.HeapInuse), "heap-KiB/conn")
	b.ReportMetric(per(after.StackInuse, before.StackInuse), "stack-KiB/conn")
	b.ReportMetric(float64(runtime.NumGoroutine())/n, "goroutines/conn")
}

// BenchmarkP5Storm: accounts made, the relay restarted (no login cache),
// then every account logs in at once.
func BenchmarkP5Storm(b *testing.B) {
	n := 2000
	if testing.Short() {
		n = 500
	}
	dir := b.TempDir()
	r := relaytest.StartConfig(b, benchConfig(dir))
	t := makeAccounts(b, r, target(r), n)
	prepare(b, t, n)
	r.Stop()
	r = relaytest.StartConfig(b, benchConfig(dir))
	pw := t.Passwords
	t = target(r)
	t.Passwords = pw
	stop := profile(b, "P5")
	b.ResetTimer()
	var idlers load.Idlers
	defer idlers.Close()
	res := idlers.Open(b.Context(), t, load.OpenOptions{Count: n, Accounts: n, Parallel: 500, Timeout: 5 * time.Minute})
	b.StopTimer()
	stop()
	reportStorm(b, res, n)
}

// BenchmarkP5WarmStorm: every account logs in once and idles, then all
// drop and come back at once, the relay kept running (its login cache
// warm); the profile covers the second storm.
func BenchmarkP5WarmStorm(b *testing.B) {
	n := 2000
	if testing.Short() {
		n = 500
	}
	r := relaytest.StartConfig(b, benchConfig(b.TempDir()))
	t := makeAccounts(b, r, target(r), n)
	prepare(b, t, n)
	var first load.Idlers
	res := first.Open(b.Context(), t, load.OpenOptions{Count: n, Accounts: n, Parallel: 500, Idle: true, Timeout: 5 * time.Minute})
	first.Close()
	if res.Failed > 0 {
		b.Fatalf("%d failed: %s", res.Failed, res.FirstErr)
	}
	stop := profile(b, "P5warm")
	b.ResetTimer()
	var idlers load.Idlers
	defer idlers.Close()
	res = idlers.Open(b.Context(), t, load.OpenOptions{Count: n, Accounts: n, Parallel: 500, Idle: true, Timeout: 5 * time.Minute})
	b.StopTimer()
	stop()
	reportStorm(b, res, n)
}

// reportStorm reports a login storm of n accounts.
func reportStorm(b *testing.B, res load.StormResult, n int) {
	b.Helper()
	if res.Failed > 0 {
		b.Fatalf("%d failed: %s", res.Failed, res.FirstErr)
	}
	b.ReportMetric(res.LoginSeconds, "s-all-in")
	b.ReportMetric(float64(n)/res.LoginSeconds, "logins/s")
}
