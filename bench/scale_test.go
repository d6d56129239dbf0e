package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/bench/load"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

var (
	scaleAccounts = flag.String("scale.accounts", "1000,10000", "BenchmarkScale: comma-separated numbers of accounts in the store")
	scaleMessages = flag.Int("scale.messages", 2, "BenchmarkScale: messages per account")
)

// BenchmarkScale measures how the store's costs grow with the number of
// accounts (docs/SCALING.md): for each size in -scale.accounts it fills a
// store (accounts as /new makes them, -scale.messages messages each, one
// account in 100 with a message past the 20-day limit), then reports
//
//	index-MiB        size of index.db
//	index-open-ms    opening the index alone (median of 3)
//	open-ms          mailbox.Open after a clean shutdown (median of 3)
//	open-crash-ms    mailbox.Open after an unclean one (the orphan sweep)
//	login-cold-us    Store.Login of accounts not logged in since start,
//	                 right after the open (p50, p99)
//	login-warm-us    the same after the expiry pass read the whole index
//	expire-ms        one retention pass (Store.Expire, SPEC defaults)
//	relay-start-ms   relaytest start on the filled directory, to listening
//	p1-ms-p50/99     end of DATA to EXISTS on an IDLE connection
//
// It measures, it asserts nothing. Run it alone on a quiet machine:
//
//	nice -n -10 go test ./bench -run '^$' -bench Scale -benchtime 1x -timeout 2h \
//	    -scale.accounts 1000,10000,100000
//
// Page cache is warm (the fill just wrote everything): figures for a
// store that does not fit in memory would be higher.
func BenchmarkScale(b *testing.B) {
	for _, f := range strings.Split(*scaleAccounts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			b.Fatalf("-scale.accounts: bad number %q", f)
		}
		b.Run(fmt.Sprintf("accounts=%d", n), func(b *testing.B) { scale(b, n, *scaleMessages) })
	}
}

func scale(b *testing.B, n, perAccount int) {
	dir := b.TempDir()
	cfg := benchConfig(dir)
	t := load.Target{Domain: cfg.MailDomain()}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts := mailbox.Options{QuotaBytes: cfg.QuotaBytes, Logger: quiet}

	start := time.Now()
	fill(b, dir, t, n, perAccount, opts)
	b.Logf("filled %d accounts, %d messages each, in %v", n, perAccount, time.Since(start).Round(time.Millisecond))

	st, err := os.Stat(filepath.Join(dir, mailbox.IndexFile))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(st.Size())/(1<<20), "index-MiB")
	b.ReportMetric(float64(st.Size())/float64(n), "index-B/account")

	// The index alone, then the whole store (which also hashes a dummy
	// password once, a fixed cost that the machine's load moves).
	var idxOpens []time.Duration
	for range 3 {
		t0 := time.Now()
		idx, err := mailbox.OpenBolt(dir, quiet)
		if err != nil {
			b.Fatal(err)
		}
		idxOpens = append(idxOpens, time.Since(t0))
		idx.Close()
	}
	slices.Sort(idxOpens)
	b.ReportMetric(ms(idxOpens[1]), "index-open-ms")
	var opens []time.Duration
	var store *mailbox.Store
	for i := range 3 {
		t0 := time.Now()
		s, err := mailbox.Open(dir, opts)
		if err != nil {
			b.Fatal(err)
		}
		opens = append(opens, time.Since(t0))
		if i < 2 {
			s.Close()
		} else {
			store = s
		}
	}
	slices.Sort(opens)
	b.ReportMetric(ms(opens[1]), "open-ms")

	// Logins of accounts the store has not seen since it opened: each
	// reads the index (the login cache is empty). Right after the open
	// the index's pages are not mapped into the process yet (cold); after
	// the expiry pass has read them all they are (warm, a running relay).
	perm := rand.Perm(n)
	half := min(n/2, 300)
	logins := func(accounts []int, name string) {
		var ds []time.Duration
		for _, i := range accounts {
			t0 := time.Now()
			if _, err := store.Login(t.User(i), load.Password, nil); err != nil {
				b.Fatalf("login %s: %v", t.User(i), err)
			}
			ds = append(ds, time.Since(t0))
		}
		sum := load.Summarize(ds)
		b.ReportMetric(sum.P50*1000, name+"-us-p50")
		b.ReportMetric(sum.P99*1000, name+"-us-p99")
	}
	logins(perm[:half], "login-cold")

	t0 := time.Now()
	exp, err := store.Expire(mailbox.DefaultLifecycle())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(time.Since(t0)), "expire-ms")
	b.Logf("expiry removed %d messages", exp.Messages)
	logins(perm[half:2*half], "login-warm")

	// An unclean shutdown: the next open walks the whole index and every
	// message directory.
	store.Close()
	if err := os.Remove(filepath.Join(dir, "clean-shutdown")); err != nil {
		b.Fatal(err)
	}
	t0 = time.Now()
	s, err := mailbox.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(time.Since(t0)), "open-crash-ms")
	s.Close()

	t0 = time.Now()
	r := relaytest.StartConfig(b, cfg)
	b.ReportMetric(ms(time.Since(t0)), "relay-start-ms")
	t = target(r)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := load.Latency(ctx, t, 0, 1, 40, 20*time.Millisecond, 4096)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(res.FromEnd.P50, "p1-ms-p50")
	b.ReportMetric(res.FromEnd.P99, "p1-ms-p99")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fill makes n accounts with perAccount messages each, without the fsyncs
// of real deliveries (the figures measured afterwards do not depend on how
// the store was filled). Message files are written directly and the index
// entries appended in batches.
func fill(b *testing.B, dir string, t load.Target, n, perAccount int, opts mailbox.Options) {
	st, err := mailbox.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	st.DB().NoSync = true
	defer func() { st.DB().NoSync = false }()
	body := load.Message(t.User(0), t.User(1), 4096)
	now := time.Now()
	var batch []mailbox.NewMessage
	flush := func() {
		if err := st.Index().Append(batch); err != nil {
			b.Fatal(err)
		}
		batch = batch[:0]
	}
	for i := range n {
		addr := t.User(i)
		if err := st.CreateAccount(addr, load.Password, mailbox.Generated); err != nil {
			b.Fatal(err)
		}
		acc, err := st.Lookup(addr)
		if err != nil {
			b.Fatal(err)
		}
		adir := filepath.Join(dir, "msgs", strconv.FormatUint(acc.ID, 10))
		if perAccount > 0 {
			if err := os.MkdirAll(adir, 0o700); err != nil {
				b.Fatal(err)
			}
		}
		for j := range perAccount {
			file := fmt.Sprintf("fill-%d", j)
			if err := os.WriteFile(filepath.Join(adir, file), body, 0o600); err != nil {
				b.Fatal(err)
			}
			date := now.Add(-time.Duration(j) * time.Hour)
			if i%100 == 0 && j == 0 {
				date = now.Add(-30 * 24 * time.Hour)
			}
			batch = append(batch, mailbox.NewMessage{AccountID: acc.ID, Addr: addr, Mailbox: "INBOX",
				Record: mailbox.MessageRecord{Size: int64(len(body)), Date: date, File: file}})
		}
		if len(batch) >= 2000 {
			flush()
		}
	}
	flush()
	if err := st.DB().Sync(); err != nil {
		b.Fatal(err)
	}
}
