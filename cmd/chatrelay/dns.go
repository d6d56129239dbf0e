package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/install"
	"github.com/chatrelay/chatrelay/relay"
)

func dnsCmd() *cobra.Command {
	var (
		o          install.DNSOptions
		dataDir    string
		configPath string
		zone       bool
		check      bool
		resolver   string
		dev        bool
	)
	cmd := &cobra.Command{
		Use:   "dns [--domain D] [--ip A] [--ipv6 A6] [--zone] [--check]",
		Short: "Print the DNS records the relay needs, or check which are live",
		Long: `Print the DNS records a relay for the domain needs (required) and
should have (recommended): addresses, MX, SPF, DMARC, DKIM, MTA-STS, SRV
records for client setup and CAA, and the ports a firewall must let in
(mail, web, and TURN for calls: UDP and TCP 3478, a UDP relay range).
The DKIM key is read from the relay's
data directory. Domain and data directory come from the config file
(` + install.ConfigPath + `) when it exists and --domain is not given.

--zone prints a zone file fragment instead. --check asks DNS (the resolver
in /etc/resolv.conf, or --resolver) and says for each record ok, missing
or wrong; it fails when a required record is not right.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			base := relay.Default
			if dev {
				// Like the other commands: the dev relay's data and name,
				// not the production config.
				base = relay.DevDefault
				if !cmd.Flags().Changed("config") {
					configPath = ""
				}
				if !cmd.Flags().Changed("data") {
					dataDir = relay.DevDefault().DataDir
				}
				if o.Domain == "" {
					o.Domain = relay.DevDefault().Domain
					fmt.Fprintf(cmd.ErrOrStderr(), "note: a dev relay on %s needs no DNS; these are the records a relay of that name would need\n", o.Domain)
				}
			}
			// The ports to open come from the config when there is one.
			cfg := base()
			if err := cfg.LoadFile(configPath); err != nil {
				cfg = base()
			}
			if o.Domain == "" && configPath != "" {
				cfg := relay.Default()
				if err := cfg.LoadFile(configPath); err == nil {
					o.Domain = cfg.Domain
					if !cmd.Flags().Changed("data") {
						dataDir = cfg.DataDir
					}
					if cfg.IP != "" && cfg.Domain == "" {
						fmt.Fprintf(out, "%s is an IP-only relay ([%s]): it needs no DNS records.\n", configPath, cfg.IP)
						return nil
					}
				} else if !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
			if o.Domain == "" {
				return errors.New("give --domain D (or run it where " + install.ConfigPath + " exists)")
			}
			if o.DKIM == "" {
				txt, err := install.ReadDKIM(dataDir)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "note: no DKIM key (%v); give --data, the relay's data directory\n", err)
				}
				o.DKIM = txt
			}
			recs := install.Records(o)
			if !check {
				if zone {
					install.WriteZone(out, recs)
					fmt.Fprintln(out, ";")
					fmt.Fprintln(out, "; Not DNS, but needed too: open these ports in any firewall in front of the relay:")
					for _, r := range install.FirewallRules(cfg) {
						fmt.Fprintf(out, ";   %-16s %s\n", r.Spec("-"), r.What)
					}
				} else {
					install.WriteText(out, recs)
					fmt.Fprintln(out, "\nNot DNS, but needed too: open these ports in any firewall in front of the relay:")
					install.WriteFirewallRules(out, install.FirewallRules(cfg))
				}
				return nil
			}
			if resolver == "" {
				r, err := install.SystemResolver()
				if err != nil {
					return err
				}
				resolver = r
			}
			fmt.Fprintf(out, "Checking %s at %s:\n", o.Domain, resolver)
			results := install.Check(cmd.Context(), resolver, recs)
			install.WriteResults(out, results)
			failed := 0
			for _, r := range results {
				if r.Failed() {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d required DNS record(s) missing or wrong; publish them as shown by `chatrelay dns --domain %s` (changes can take up to the record's TTL to show)", failed, o.Domain)
			}
			fmt.Fprintln(out, "All required records are in place.")
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Domain, "domain", "", "mail domain")
	fl.StringVar(&o.IPv4, "ip", "", "the relay's public IPv4 address (without it any A record counts)")
	fl.StringVar(&o.IPv6, "ipv6", "", "the relay's public IPv6 address")
	fl.StringVar(&o.Selector, "selector", install.DefaultSelector, "DKIM selector")
	fl.StringVar(&dataDir, "data", install.DataDir, "the relay's data directory (for the DKIM key)")
	fl.StringVar(&configPath, "config", install.ConfigPath, "config file to take the domain and data directory from")
	fl.BoolVar(&zone, "zone", false, "print a zone file fragment")
	fl.BoolVar(&check, "check", false, "look the records up and report ok, missing or wrong")
	fl.BoolVar(&dev, "dev", false, "for the relay run with serve --dev (data in ./chatrelay-data, domain localhost)")
	fl.StringVar(&resolver, "resolver", "", "DNS server for --check, host:port (default: from /etc/resolv.conf)")
	return cmd
}
