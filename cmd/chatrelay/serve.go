package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
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
	}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the relay",
		Long: `Run the relay in the foreground.

With --dev it runs on 127.0.0.1 (or --ip) on high ports without root:
IMAP 1993 (TLS) and 1143 (STARTTLS), submission 1465 (TLS) and 1587
(STARTTLS), inbound SMTP 1025, HTTPS 1443, TURN 3478 (UDP and TCP, relay
ports 49152-49251, relaying to loopback allowed, so calls work between
accounts on this machine); domain localhost, data in ./chatrelay-data, a
self-signed certificate; no config file needed.`,
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
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
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
		return err
	}
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
