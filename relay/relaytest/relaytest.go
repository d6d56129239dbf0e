// Package relaytest starts a whole relay in-process for tests: every
// listener on a loopback port chosen by the kernel, a temporary data
// directory, a self-signed certificate.
package relaytest

import (
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/relay"
)

// Relay is a running test relay.
type Relay struct {
	*relay.Server
	Cfg relay.Config
	Dir string
	// Clock is the relay's clock: real time plus an offset tests move.
	Clock *Clock
	Certs *acme.Manager
	tb    testing.TB
	stop  func()
}

// Config returns a dev config on loopback port 0 with data in dir.
func Config(dir string) relay.Config {
	cfg := relay.DevDefault()
	cfg.DataDir = dir
	cfg.Listen = relay.Listen{
		IMAPS: "127.0.0.1:0", IMAP: "127.0.0.1:0", Submissions: "127.0.0.1:0",
		Submission: "127.0.0.1:0", SMTP: "127.0.0.1:0", HTTPS: "127.0.0.1:0",
	}
	cfg.MetricsListen = "127.0.0.1:0"
	// TURN on one kernel-chosen port for UDP and TCP.
	cfg.TURN.ListenUDP, cfg.TURN.ListenTCP = "127.0.0.1:0", "127.0.0.1:0"
	// The machine running tests may be busy; the guard has its own tests.
	cfg.MaxLoad1 = 0
	cfg.MinFreeMemory = 0
	cfg.MinFreeDisk = 0
	return cfg
}

// Start runs a relay with cfg adjusted by edit (may be nil) and stops it
// when the test ends.
func Start(tb testing.TB, edit func(*Cfg)) *Relay {
	tb.Helper()
	cfg := Config(tb.TempDir())
	if edit != nil {
		edit(&cfg)
	}
	return StartConfig(tb, cfg)
}

// StartConfig runs a relay with exactly cfg.
func StartConfig(tb testing.TB, cfg relay.Config) *Relay {
	tb.Helper()
	return StartWith(tb, cfg, relay.Options{})
}

// StartWith runs a relay with exactly cfg and opts; the clock and logger
// are the test's.
func StartWith(tb testing.TB, cfg relay.Config, opts relay.Options) *Relay {
	tb.Helper()
	certs, err := acme.New(acme.Config{Mode: acme.ModeSelfSigned, Domain: cfg.Domain, IP: cfg.IP, DataDir: cfg.DataDir, Logger: testLogger()})
	if err != nil {
		tb.Fatal(err)
	}
	return StartWithCerts(tb, cfg, opts, certs)
}

// StartWithCerts runs a relay with exactly cfg and opts and the
// certificates of certs (say an "auto" Manager against an in-process CA,
// see acme/acmetest), as `chatrelay serve` does. Once the listeners are up
// it calls certs.Start, with a context that ends when the relay stops, and
// closes certs then. The clock is the test's, and so is the logger unless
// opts.Logger is set.
func StartWithCerts(tb testing.TB, cfg relay.Config, opts relay.Options, certs *acme.Manager) *Relay {
	tb.Helper()
	ctx, cancelCerts := context.WithCancel(context.Background())
	clock := &Clock{}
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	opts.Now = clock.Now
	srv, err := relay.New(cfg, certs, opts)
	if err != nil {
		cancelCerts()
		certs.Close()
		tb.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		srv.Shutdown(context.Background())
		cancelCerts()
		certs.Close()
		tb.Fatal(err)
	}
	r := &Relay{Server: srv, Cfg: cfg, Dir: cfg.DataDir, Clock: clock, Certs: certs, tb: tb}
	stopped := false
	r.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancelCerts()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		certs.Close()
	}
	tb.Cleanup(r.stop)
	if err := certs.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	return r
}

// testLogger logs warnings to stderr, everything with -v.
func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Stop shuts the relay down (also done at test end).
func (r *Relay) Stop() { r.stop() }

// AddrOf returns the host:port of a listener.
func (r *Relay) AddrOf(name string) string {
	a := r.Addr(name)
	if a == nil {
		r.tb.Fatalf("relay has no %s listener", name)
	}
	return a.String()
}

// ClientTLS is a TLS client config that accepts the relay's self-signed
// certificate.
func ClientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}
}

// Clock is real time moved forward by Advance, or stopped by Freeze.
type Clock struct {
	mu     sync.Mutex
	offset time.Duration
	frozen *time.Time
}

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen != nil {
		return c.frozen.Add(c.offset)
	}
	return time.Now().Add(c.offset)
}

// Freeze stops the clock; only Advance moves it from then on.
func (c *Clock) Freeze() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	c.frozen = &now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// Cfg is relay.Config, named here so tests need not import relay.
type Cfg = relay.Config
