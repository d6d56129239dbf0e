package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/install"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/metrics"
)

func serveCmd() *cobra.Command {
	var (
		configPath string
		dev        bool
		logLevel   string
	)
	// Flags override the config file; they are applied only when given.
	var f struct {
		data, domain, ip, registration                                   string
		imaps, imap, submissions, submission, smtp, https, http, metrics string
		turn                                                             string
		proxyListen                                                      string
		proxy                                                            bool
		portBase                                                         int
	}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the relay",
		Long: `Run the relay in the foreground.

With --dev it runs on 127.0.0.1 (or --ip) on high ports without root:
IMAP 1993 (TLS) and 1143 (STARTTLS), submission 1465 (TLS) and 1587
(STARTTLS), inbound SMTP 1025, HTTPS 1443, TURN 3478 (UDP and TCP, relay
ports 49152-49251, relaying to loopback allowed, so calls work between
accounts on this machine), and with --proxy the Shadowsocks proxy on 18388;
domain localhost, data in ./chatrelay-data, a self-signed certificate; no
config file needed. --port-base 2000 moves them all at once (IMAP 2993,
..., HTTPS 2443, TURN 4478, metrics if on 10150), for a second dev relay
or when a port is taken.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := relay.Default()
			if dev {
				cfg = relay.DevDefault()
			}
			if configPath != "" {
				if err := cfg.LoadFile(configPath); err != nil {
					return err
				}
			}
			set := func(name string, dst *string, v string) {
				if cmd.Flags().Changed(name) {
					*dst = v
				}
			}
			set("data", &cfg.DataDir, f.data)
			set("domain", &cfg.Domain, f.domain)
			set("registration", &cfg.Registration, f.registration)
			if cmd.Flags().Changed("ip") {
				cfg.IP = f.ip
				if !cmd.Flags().Changed("domain") {
					cfg.Domain = ""
				}
				if dev {
					cfg.Listen = relay.DevListen(f.ip)
					cfg.MetricsListen = net.JoinHostPort(f.ip, "9150")
					devTURN(&cfg, f.ip)
				}
				cfg.TLS.Mode = "selfsigned"
			}
			if cmd.Flags().Changed("port-base") {
				if err := applyPortBase(&cfg, dev, f.portBase); err != nil {
					return err
				}
			}
			set("listen-imaps", &cfg.Listen.IMAPS, f.imaps)
			set("listen-imap", &cfg.Listen.IMAP, f.imap)
			set("listen-submissions", &cfg.Listen.Submissions, f.submissions)
			set("listen-submission", &cfg.Listen.Submission, f.submission)
			set("listen-smtp", &cfg.Listen.SMTP, f.smtp)
			set("listen-https", &cfg.Listen.HTTPS, f.https)
			set("listen-http", &cfg.Listen.HTTP, f.http)
			set("listen-metrics", &cfg.MetricsListen, f.metrics)
			set("listen-turn", &cfg.TURN.ListenUDP, f.turn)
			set("listen-turn", &cfg.TURN.ListenTCP, f.turn)
			if f.proxy && cfg.Proxy.Listen == "" {
				cfg.Proxy.Listen = ":8388"
				if dev {
					cfg.Proxy.Listen = relay.DevProxyListen
				}
			}
			set("listen-proxy", &cfg.Proxy.Listen, f.proxyListen)
			return serve(cmd, cfg, logLevel)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&configPath, "config", "", "config file (TOML)")
	fl.BoolVar(&dev, "dev", false, "development mode: loopback, high ports, self-signed, no root")
	fl.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error, off")
	fl.StringVar(&f.data, "data", "", "data directory")
	fl.StringVar(&f.domain, "domain", "", "mail domain")
	fl.StringVar(&f.ip, "ip", "", "IP-only relay: addresses are name@[IP]")
	fl.StringVar(&f.registration, "registration", "", "open, invite or closed")
	fl.StringVar(&f.imaps, "listen-imaps", "", "IMAP implicit TLS address")
	fl.StringVar(&f.imap, "listen-imap", "", "IMAP STARTTLS address")
	fl.StringVar(&f.submissions, "listen-submissions", "", "submission implicit TLS address")
	fl.StringVar(&f.submission, "listen-submission", "", "submission STARTTLS address")
	fl.StringVar(&f.smtp, "listen-smtp", "", "inbound SMTP address")
	fl.StringVar(&f.https, "listen-https", "", "HTTPS address")
	fl.StringVar(&f.http, "listen-http", "", "HTTP address (ACME HTTP-01, redirect)")
	fl.StringVar(&f.metrics, "listen-metrics", "", "Prometheus metrics address (loopback)")
	fl.StringVar(&f.turn, "listen-turn", "", "TURN address, UDP and TCP (empty: no built-in TURN)")
	fl.BoolVar(&f.proxy, "proxy", false, "run the Shadowsocks proxy (dev: on "+relay.DevProxyListen+", else :8388 unless [proxy] listen is set)")
	fl.StringVar(&f.proxyListen, "listen-proxy", "", "Shadowsocks proxy address")
	fl.IntVar(&f.portBase, "port-base", 0, "with --dev: move every port by one number, each to N + its standard port (IMAP N+993, ..., HTTPS N+443, TURN N+2478, metrics if on N+8150; --dev is N=1000)")
	return cmd
}

// devTURN moves dev mode's TURN server to ip (`serve --dev --ip`): it
// listens there, relay ports are there, and relaying to it is allowed.
func devTURN(cfg *relay.Config, ip string) {
	parsed := net.ParseIP(ip)
	if parsed == nil {
		return // Validate names the mistake
	}
	cfg.TURN.ListenUDP = net.JoinHostPort(ip, "3478")
	cfg.TURN.ListenTCP = cfg.TURN.ListenUDP
	if parsed.To4() != nil {
		cfg.TURN.RelayIP, cfg.TURN.RelayBind = ip, ip
		cfg.TURN.AllowPeers = append(cfg.TURN.AllowPeers, ip+"/32")
	}
}

func newLogger(level string) (*slog.Logger, error) {
	return newLoggerTo(os.Stderr, level, underJournal(os.Stderr))
}

// newLoggerTo logs to w; under the journal each line carries its
// priority, and the journal's own timestamp stands in for the handler's.
func newLoggerTo(w io.Writer, level string, journal bool) (*slog.Logger, error) {
	if level == "off" {
		return slog.New(slog.DiscardHandler), nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	if journal {
		w = journalWriter{w}
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

func serve(cmd *cobra.Command, cfg relay.Config, logLevel string) error {
	log, err := newLogger(logLevel)
	if err != nil {
		return err
	}
	// status shows the last errors even when logging is off.
	recent := metrics.NewRecentErrors(50)
	log = slog.New(recent.Wrap(log.Handler()))
	if err := cfg.Validate(); err != nil {
		return err
	}
	// A start that fails leaves no data directory it made behind: the
	// next try (with other ports, say) starts as fresh as this one.
	_, statErr := os.Stat(cfg.DataDir)
	madeDir := errors.Is(statErr, os.ErrNotExist)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	started := false
	defer func() {
		if madeDir && !started {
			os.RemoveAll(cfg.DataDir)
		}
	}()
	certs, err := acme.New(acme.Config{
		Mode:     acme.Mode(cfg.TLS.Mode),
		Domain:   cfg.Domain,
		IP:       cfg.IP,
		DataDir:  cfg.DataDir,
		CA:       cfg.TLS.ACMEDirectory,
		Email:    cfg.TLS.ACMEEmail,
		CertFile: cfg.TLS.CertFile,
		KeyFile:  cfg.TLS.KeyFile,
		Logger:   log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := certs.Start(ctx); err != nil {
		return err
	}
	defer certs.Close()
	srv, err := relay.New(cfg, certs, relay.Options{Logger: log, Version: version, RecentErrors: recent})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		srv.Shutdown(context.Background())
		return explainListen(err, cfg.Dev)
	}
	started = true
	printWelcome(cmd.OutOrStdout(), srv, cfg, isTerminal(os.Stdout))
	// Under systemd (Type=notify) the unit is started once listeners are up.
	if err := install.NotifyReady(); err != nil {
		log.Warn("tell systemd we are ready", "err", err)
	}
	<-ctx.Done()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// applyPortBase puts every dev listener at base + its standard port
// (serve --port-base): one flag instead of eight to run beside another.
func applyPortBase(cfg *relay.Config, dev bool, base int) error {
	if !dev {
		return errors.New("--port-base works with --dev; set each listen address in the config file instead")
	}
	if base < 0 || base+8150 > 65535 {
		return fmt.Errorf("--port-base %d: must be 0 to %d, so that every port (up to N+8150) fits", base, 65535-8150)
	}
	host := cfg.IP
	if host == "" {
		host = "127.0.0.1"
	}
	at := func(port int) string { return net.JoinHostPort(host, strconv.Itoa(base+port)) }
	cfg.Listen = relay.Listen{
		IMAPS: at(993), IMAP: at(143), Submissions: at(465), Submission: at(587),
		SMTP: at(25), HTTPS: at(443),
	}
	cfg.TURN.ListenUDP, cfg.TURN.ListenTCP = at(2478), at(2478)
	if cfg.MetricsListen != "" {
		cfg.MetricsListen = at(8150)
	}
	return nil
}

// explainListen names, for a port another process holds, the flag that
// moves it.
func explainListen(err error, dev bool) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return err
	}
	more := ""
	if dev {
		more = ", or move every port with --port-base (like --port-base 2000)"
	}
	var le *relay.ListenError
	if errors.As(err, &le) {
		return fmt.Errorf("%w\nanother process has that port: choose another with --listen-%s ADDRESS%s", err, le.Name, more)
	}
	return fmt.Errorf("%w\nanother process has that port%s", err, more)
}
