package relay

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/chatrelay/chatrelay/mailbox"
)

// Config is everything an operator can set. Default() holds the SPEC
// defaults; the TOML file (and the serve flags) override them. Keys use the
// toml tag names; an unknown key in the file is an error.
type Config struct {
	// Domain is the mail domain: addresses are name@Domain. Empty in IP mode.
	Domain string `toml:"domain"`
	// IP switches to IP mode: addresses are name@[IP], a self-signed
	// certificate is used, and (in dev mode) listeners bind to this address.
	IP string `toml:"ip"`
	// DataDir holds the store, certificates, keys and the control socket.
	DataDir string `toml:"data_dir"`

	Listen Listen `toml:"listen"`

	// Registration is "open" (accounts are created at first login and by
	// /new), "invite" (only /new with a valid token) or "closed" (only the
	// admin command).
	Registration string `toml:"registration"`
	// Account name length bounds and the shortest password accepted.
	MinNameLen     int `toml:"min_name_len"`
	MaxNameLen     int `toml:"max_name_len"`
	MinPasswordLen int `toml:"min_password_len"`

	// MaxMessageSize in bytes, for submission, inbound and APPEND.
	MaxMessageSize int64 `toml:"max_message_size"`
	// IMAPHibernateAfter is how long an IMAP client idles (in IDLE) before
	// its connection hibernates (mailbox/imapext/hibernate.go): 0 means 10
	// seconds, negative never. Not in the config file; tests and benchmarks
	// set it.
	IMAPHibernateAfter time.Duration `toml:"-"`
	// MaxRecipients per message; announced to clients via METADATA.
	MaxRecipients int `toml:"max_recipients"`
	// Per-sender rate: messages per minute and burst.
	SendRatePerMinute float64 `toml:"send_rate_per_minute"`
	SendRateBurst     int     `toml:"send_rate_burst"`
	// QuotaBytes per account.
	QuotaBytes int64 `toml:"quota_bytes"`

	// Retention (SPEC section 7): messages go after MaxMessageAgeDays; read
	// messages over LargeMessageSize after LargeReadAgeDays; accounts with
	// no login for AccountIdleDays.
	MaxMessageAgeDays int   `toml:"max_message_age_days"`
	LargeReadAgeDays  int   `toml:"large_read_age_days"`
	LargeMessageSize  int64 `toml:"large_message_size"`
	AccountIdleDays   int   `toml:"account_idle_days"`

	// New accounts are refused while the machine is starved.
	MaxLoad1      float64 `toml:"max_load1"`
	MinFreeMemory int64   `toml:"min_free_memory"`
	MinFreeDisk   int64   `toml:"min_free_disk"`
	// New accounts per client address (IPv6 per /64), one budget for
	// /new and creation at first login: a burst of NewAccountsBurst, then
	// NewAccountsPerMinute; a rate of 0 means no limit.
	NewAccountsPerMinute float64 `toml:"new_accounts_per_minute"`
	NewAccountsBurst     int     `toml:"new_accounts_burst"`

	TLS TLSConfig `toml:"tls"`

	// AdminContact is an email address shown on the web page and sent as
	// METADATA /shared/admin (mailto:).
	AdminContact string `toml:"admin_contact"`
	// Comment is METADATA /shared/comment: a line about this relay.
	Comment string `toml:"comment"`
	// IrohRelay is the iroh relay URL Delta Chat uses for realtime
	// (METADATA /shared/vendor/deltachat/irohrelay); empty: not offered.
	IrohRelay string `toml:"iroh_relay"`
	// TURN server for calls, announced via METADATA.
	TURN TURNConfig `toml:"turn"`
	// NotifyURL is the push notification proxy tokens are POSTed to.
	NotifyURL string `toml:"notify_url"`

	// Federation.
	Federation Federation `toml:"federation"`

	// MetricsListen is the Prometheus endpoint's address (loopback unless
	// MetricsAllowPublic); empty turns it off.
	MetricsListen      string `toml:"metrics_listen"`
	MetricsAllowPublic bool   `toml:"metrics_allow_public"`

	// Dev marks a loopback development relay (set by serve --dev).
	Dev bool `toml:"-"`

	// Web site

	// OperatorName is who runs this relay (a person or an organisation),
	// named on the web pages and in the privacy policy; empty: the pages
	// name the admin contact only.
	OperatorName string `toml:"operator_name"`
	// PrivacyExtraFile is a file whose content is added to /privacy:
	// HTML if its name ends in .html or .htm, plain text otherwise.
	// Read at each request, so edits show at once; empty: none.
	PrivacyExtraFile string `toml:"privacy_extra_file"`
	// DownloadsDir is a folder of client app files served under
	// /downloads with their SHA-256 sums; empty means DataDir/downloads.
	// A missing or empty folder hides the page.
	DownloadsDir string `toml:"downloads_dir"`

	// Limits

	// Limits caps simultaneous connections per protocol, in total and per
	// client address (see ConnLimits); 0 means no cap.
	Limits ConnLimits `toml:"limits"`
}

// Listen holds the listener addresses; an empty string disables one.
type Listen struct {
	IMAPS       string `toml:"imaps"`       // implicit TLS IMAP (993)
	IMAP        string `toml:"imap"`        // IMAP with STARTTLS (143)
	Submissions string `toml:"submissions"` // implicit TLS submission (465)
	Submission  string `toml:"submission"`  // submission with STARTTLS (587)
	SMTP        string `toml:"smtp"`        // inbound from other servers (25)
	HTTPS       string `toml:"https"`       // web, /new, /mxdeliv, and IMAP/SMTP by ALPN (443)
	HTTP        string `toml:"http"`        // ACME HTTP-01 and redirect (80)
}

// Federation configures mail to and from other relays.
type Federation struct {
	// DKIMSelector names our DKIM key in DNS: SELECTOR._domainkey.DOMAIN.
	DKIMSelector string `toml:"dkim_selector"`
	// Resolver is the DNS server (host:port) for MX, address and DKIM
	// lookups; empty means the system's.
	Resolver string `toml:"resolver"`
	// StaticRoutes send mail for a domain to a host[:port], overriding
	// MX, for networks whose DNS is gone. The peer's DKIM key is then
	// fetched from it over HTTPS.
	StaticRoutes map[string]string `toml:"static_routes"`
	// SMTPPort and HTTPSPort are the ports of other relays: 25 and 443, or
	// the dev ports when relays run in dev mode.
	SMTPPort  int `toml:"smtp_port"`
	HTTPSPort int `toml:"https_port"`
	// DisableMXDeliv turns off receiving over HTTPS /mxdeliv (and trying it
	// when sending).
	DisableMXDeliv bool `toml:"disable_mxdeliv"`
	// BounceAfterHours: undeliverable mail is bounced after this long.
	BounceAfterHours int `toml:"bounce_after_hours"`
}

// TURNConfig describes a TURN server sharing a secret with the relay (the
// usual TURN REST credentials: user = expiry, password = HMAC-SHA1).
type TURNConfig struct {
	// Server is host:port; empty means no TURN entry is offered.
	Server string `toml:"server"`
	// Secret is shared with the TURN server (static-auth-secret in coturn).
	Secret string `toml:"secret"`
	// TTLHours is how long credentials stay valid.
	TTLHours int `toml:"ttl_hours"`
}

// TLSConfig chooses where certificates come from.
type TLSConfig struct {
	// Mode is "auto" (ACME with a self-signed fallback), "selfsigned" or
	// "files". IP mode and domains starting with "_" are always self-signed.
	Mode     string `toml:"mode"`
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// ACMEDirectory is the CA's directory URL (Let's Encrypt by default).
	ACMEDirectory string `toml:"acme_directory"`
	ACMEEmail     string `toml:"acme_email"`
}

// Default returns the SPEC defaults for a production relay.
func Default() Config {
	return Config{
		DataDir: "/var/lib/chatrelay",
		Listen: Listen{
			IMAPS: ":993", IMAP: ":143", Submissions: ":465", Submission: ":587",
			SMTP: ":25", HTTPS: ":443", HTTP: ":80",
		},
		Registration:         "open",
		MinNameLen:           9,
		MaxNameLen:           9,
		MinPasswordLen:       9,
		MaxMessageSize:       31457280,
		MaxRecipients:        1000,
		SendRatePerMinute:    60,
		SendRateBurst:        10,
		QuotaBytes:           500 << 20,
		MaxMessageAgeDays:    20,
		LargeReadAgeDays:     7,
		LargeMessageSize:     200 * 1024,
		AccountIdleDays:      90,
		MaxLoad1:             5,
		NewAccountsPerMinute: 6,
		NewAccountsBurst:     5,
		MinFreeMemory:        200 << 20,
		MinFreeDisk:          1 << 30,
		TLS:                  TLSConfig{Mode: "auto"},
		TURN:                 TURNConfig{TTLHours: 24 * 5},
		Federation: Federation{
			DKIMSelector: "dkim", SMTPPort: 25, HTTPSPort: 443, BounceAfterHours: 48,
		},
		NotifyURL: "https://notifications.delta.chat/notify",
		Limits:    DefaultConnLimits(),
	}
}

// DevDefault is Default adjusted for `serve --dev`: loopback high ports,
// no root, domain localhost, data in ./chatrelay-data.
func DevDefault() Config {
	c := Default()
	c.Dev = true
	c.Domain = "localhost"
	c.DataDir = "chatrelay-data"
	c.TLS.Mode = "selfsigned"
	c.Listen = DevListen("127.0.0.1")
	// Other dev relays listen on the dev ports.
	c.Federation.SMTPPort = 1025
	c.Federation.HTTPSPort = 1443
	// A developer's machine is busy compiling; the load guard is for
	// production relays.
	c.MaxLoad1 = 0
	return c
}

// DevListen returns the dev-mode ports bound to host.
func DevListen(host string) Listen {
	hp := func(port string) string { return net.JoinHostPort(host, port) }
	return Listen{
		IMAPS: hp("1993"), IMAP: hp("1143"), Submissions: hp("1465"), Submission: hp("1587"),
		SMTP: hp("1025"), HTTPS: hp("1443"),
	}
}

// LoadFile reads a TOML config file over c. Unknown keys are an error
// naming the key.
func (c *Config) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	md, err := toml.Decode(string(data), c)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		keys := make([]string, len(undec))
		for i, k := range undec {
			keys[i] = k.String()
		}
		return fmt.Errorf("config %s: unknown key(s): %s", path, strings.Join(keys, ", "))
	}
	return nil
}

// Lifecycle is the store's retention rules from the config.
func (c *Config) Lifecycle() mailbox.Lifecycle {
	lc := mailbox.DefaultLifecycle()
	day := 24 * time.Hour
	lc.MaxAge = time.Duration(c.MaxMessageAgeDays) * day
	lc.LargeRead = time.Duration(c.LargeReadAgeDays) * day
	lc.LargeSize = c.LargeMessageSize
	lc.AccountIdle = time.Duration(c.AccountIdleDays) * day
	return lc
}

// MailDomain is the domain part of every local address: the domain, or
// "[IP]" in IP mode.
func (c *Config) MailDomain() string {
	if c.IP != "" {
		return "[" + c.IP + "]"
	}
	return c.Domain
}

// Hostname is what clients connect to: the domain, or the IP.
func (c *Config) Hostname() string {
	if c.IP != "" {
		return c.IP
	}
	return c.Domain
}

// Validate checks the config for mistakes an operator can fix.
func (c *Config) Validate() error {
	if c.Domain == "" && c.IP == "" {
		return fmt.Errorf("config: set domain (or ip for an IP-only relay)")
	}
	if c.IP != "" && net.ParseIP(c.IP) == nil {
		return fmt.Errorf("config: ip %q is not an IP address", c.IP)
	}
	switch c.Registration {
	case "open", "invite", "closed":
	default:
		return fmt.Errorf("config: registration must be open, invite or closed, not %q", c.Registration)
	}
	switch c.TLS.Mode {
	case "auto", "selfsigned", "files":
	default:
		return fmt.Errorf("config: tls.mode must be auto, selfsigned or files, not %q", c.TLS.Mode)
	}
	if c.TLS.Mode == "files" && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
		return fmt.Errorf("config: tls.mode files needs tls.cert_file and tls.key_file")
	}
	if c.MinNameLen < 1 || c.MaxNameLen < c.MinNameLen || c.MaxNameLen > 64 {
		return fmt.Errorf("config: need 1 <= min_name_len <= max_name_len <= 64")
	}
	if c.NewAccountsPerMinute < 0 || c.NewAccountsBurst < 0 {
		return fmt.Errorf("config: new_accounts_per_minute and new_accounts_burst must not be negative")
	}
	if c.MinPasswordLen < 1 {
		return fmt.Errorf("config: min_password_len must be at least 1")
	}
	if c.DataDir == "" {
		return fmt.Errorf("config: data_dir is empty")
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	return nil
}
