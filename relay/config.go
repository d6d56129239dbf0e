package relay

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
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
	// IrohRelay is the iroh relay Delta Chat uses for webxdc realtime
	// (METADATA /shared/vendor/deltachat/irohrelay). Empty: this relay's
	// own, served at https://DOMAIN/relay on the HTTPS listener, is
	// announced as https://DOMAIN/ while the certificate served is not
	// self-signed (core's iroh trusts only public roots, see
	// docs/SECURITY.md); "off": none is announced and the built-in one
	// is not served; any other value is the URL announced (the built-in
	// one is still served).
	IrohRelay string `toml:"iroh_relay"`
	// Iroh holds the built-in iroh relay's limits.
	Iroh IrohConfig `toml:"iroh"`
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
	// ReleasesDir holds this relay's own signed release files (binaries,
	// their .minisig signatures, SHA256SUMS), offered under /downloads
	// beside the client apps so that one relay can seed the next;
	// `chatrelay upgrade` puts the release it installs there. Empty
	// means DataDir/releases.
	ReleasesDir string `toml:"releases_dir"`
	// AppVersions fills METADATA /shared/vendor/deltachat/appversions,
	// from which Delta Chat apps learn of updates they can download here.
	// Empty: the entry is not offered.
	AppVersions []AppVersion `toml:"app_versions"`

	// Proxy is the Shadowsocks listener (SPEC section 12).
	Proxy ProxyConfig `toml:"proxy"`

	// Limits

	// Limits caps simultaneous connections per protocol, in total and per
	// client address (see ConnLimits); 0 means no cap.
	Limits ConnLimits `toml:"limits"`
}

// AppVersion is one app build offered to Delta Chat clients (SPEC
// section 2, appversions).
type AppVersion struct {
	// ClientID names the app, as the app knows itself
	// ("deltachat-android", ...).
	ClientID string `toml:"client_id"`
	// SourceID names where the build comes from; "relay" when empty.
	SourceID string `toml:"source_id"`
	// VersionInteger is the app's build number (Android versionCode).
	VersionInteger int64 `toml:"version_integer"`
	// VersionString is the version people read ("2.62.0").
	VersionString string `toml:"version_string"`
	// File is the app's file in the downloads folder; DownloadURL
	// defaults to it on this relay's /downloads, and the entry is left
	// out while the file is not there.
	File string `toml:"file"`
	// DownloadURL is where the app downloads the build.
	DownloadURL string `toml:"download_url"`
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
	// AllowPrivateTargets lists networks (CIDR, or single addresses) that
	// outgoing mail may be delivered to although they are not public
	// unicast (loopback, RFC 1918, ULA, link-local, CGNAT, ...) or are
	// this relay's own addresses. Empty (the default outside dev mode):
	// such targets, named by an MX, an address record or an address
	// literal, are refused as a permanent failure. Dev mode allows
	// loopback.
	AllowPrivateTargets []string `toml:"allow_private_targets"`
}

// AllowTargets returns AllowPrivateTargets as prefixes; Validate has
// checked them.
func (f Federation) AllowTargets() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range f.AllowPrivateTargets {
		if p, err := parseNetwork(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func parseNetwork(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a network (CIDR) nor an address", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// IrohConfig limits the built-in iroh relay; 0 takes the default.
type IrohConfig struct {
	// MaxClients bounds iroh relay connections in all.
	MaxClients int `toml:"max_clients"`
	// MaxClientsPerIP bounds iroh relay connections from one address.
	MaxClientsPerIP int `toml:"max_clients_per_ip"`
	// BytesPerSecond bounds the packet bytes one client may send through
	// the relay; a faster client is read more slowly. -1: no limit.
	BytesPerSecond int `toml:"bytes_per_second"`
	// IdleTimeoutSeconds closes a client that sends nothing for this
	// long (the relay pings every 15 seconds, and clients answer).
	IdleTimeoutSeconds int `toml:"idle_timeout_seconds"`
}

// IrohRelayOff is the IrohRelay value that turns the iroh relay off.
const IrohRelayOff = "off"

// TURNConfig is TURN for calls (SPEC section 12). By default the relay
// runs its own TURN server; setting Server and Secret announces an
// external one instead and turns the built-in one off. Either way clients
// get TURN REST credentials (user = expiry, password = HMAC-SHA1) through
// METADATA.
type TURNConfig struct {
	// Server is an external TURN server's host:port; with Secret it
	// replaces the built-in server.
	Server string `toml:"server"`
	// Secret is shared with the external server (static-auth-secret in
	// coturn). The built-in server uses a random secret of its own, kept
	// in DataDir/turn.secret.
	Secret string `toml:"secret"`
	// TTLHours is how long credentials stay valid.
	TTLHours int `toml:"ttl_hours"`
	// ListenUDP and ListenTCP are the built-in server's addresses (3478);
	// both empty turns it off.
	ListenUDP string `toml:"listen_udp"`
	ListenTCP string `toml:"listen_tcp"`
	// RelayIP is the IPv4 address peers reach relay ports on; empty: the
	// relay's ip, else its domain's A record, else the first public IPv4
	// address of the host. Set it behind 1:1 NAT.
	RelayIP string `toml:"relay_ip"`
	// RelayBind is the address relay sockets bind to; empty: all IPv4.
	RelayBind string `toml:"relay_bind"`
	// MinPort and MaxPort are the relay port range (UDP).
	MinPort int `toml:"min_port"`
	MaxPort int `toml:"max_port"`
	// AllowPeers are address prefixes ("127.0.0.0/8") relayed to even
	// though they are loopback, private, link-local or the like, which
	// are refused by default.
	AllowPeers []string `toml:"allow_peers"`
	// MaxAllocations caps live allocations in all; MaxAllocationsPerIP
	// per client address (IPv6 per /64); 0: no cap.
	MaxAllocations      int `toml:"max_allocations"`
	MaxAllocationsPerIP int `toml:"max_allocations_per_ip"`
	// BandwidthPerIP caps bytes per second relayed for one client address
	// (both ways, all its allocations); 0: no cap.
	BandwidthPerIP int `toml:"bandwidth_per_ip"`
	// TCPPerIP caps TURN-over-TCP connections per client address.
	TCPPerIP int `toml:"tcp_per_ip"`
}

// External is true when an external TURN server is configured.
func (t *TURNConfig) External() bool { return t.Server != "" && t.Secret != "" }

// BuiltIn is true when the relay runs its own TURN server.
func (t *TURNConfig) BuiltIn() bool {
	return !t.External() && (t.ListenUDP != "" || t.ListenTCP != "")
}

// ProxyConfig is the Shadowsocks listener: a way in for clients whose
// network blocks the mail ports or the relay's TLS. It forwards only to
// this relay's IMAP, submission and HTTPS listeners.
type ProxyConfig struct {
	// Listen is the TCP address; empty (the default) turns the proxy off.
	Listen string `toml:"listen"`
	// Method is "2022-blake3-aes-256-gcm" (the default) or
	// "chacha20-ietf-poly1305". The key is random per relay, kept in
	// DATA/proxy-keys.json; changing the method makes a new key.
	Method string `toml:"method"`
	// Host and Port go in the ss:// URL; empty and 0 mean the relay's
	// domain (or IP) and the port of Listen.
	Host string `toml:"host"`
	Port int    `toml:"port"`
	// Publish is where the ss:// URL and its QR code are shown: "page"
	// (the web page), "invite" (only the page of a valid invite link) or
	// "none" (only `chatrelay proxy show`).
	Publish string `toml:"publish"`
	// RotateGraceHours: after `chatrelay proxy rotate` the old key stays
	// valid this long, so clients can pick up the new URL.
	RotateGraceHours int `toml:"rotate_grace_hours"`
	// ReplayWindowMinutes: request salts are remembered at least this
	// long (and up to twice); a replayed one is refused. At least 1.
	ReplayWindowMinutes int `toml:"replay_window_minutes"`
	// MaxConns and MaxConnsPerIP cap simultaneous proxy connections in
	// total and per client address (IPv6 per /64); 0 means no cap.
	MaxConns      int `toml:"max_conns"`
	MaxConnsPerIP int `toml:"max_conns_per_ip"`
	// HandshakeTimeout is how long the first packet may take; refused
	// connections are read until then and closed. 0 means 60 seconds.
	// Not in the config file; tests set it.
	HandshakeTimeout time.Duration `toml:"-"`
}

// DevProxyListen is where `serve --dev --proxy` listens.
const DevProxyListen = "127.0.0.1:18388"

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
		TURN: TURNConfig{
			TTLHours: 24 * 5, ListenUDP: ":3478", ListenTCP: ":3478",
			MinPort: 49152, MaxPort: 65535, AllowPeers: []string{},
			MaxAllocations: 4000, MaxAllocationsPerIP: 32,
			BandwidthPerIP: 2 << 20, TCPPerIP: 16,
		},
		Iroh: IrohConfig{MaxClients: 2000, MaxClientsPerIP: 20, BytesPerSecond: 1 << 20, IdleTimeoutSeconds: 60},
		Federation: Federation{
			DKIMSelector: "dkim", SMTPPort: 25, HTTPSPort: 443, BounceAfterHours: 48,
			// Not nil: the config file written at install lists it as [].
			AllowPrivateTargets: []string{},
		},
		NotifyURL: "https://notifications.delta.chat/notify",
		Limits:    DefaultConnLimits(),
		Proxy: ProxyConfig{
			Method: "2022-blake3-aes-256-gcm", Publish: "page", RotateGraceHours: 72,
			ReplayWindowMinutes: 60, MaxConns: 5000, MaxConnsPerIP: 50,
		},
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
	// Calls between accounts on this machine: TURN on loopback, relaying
	// to loopback.
	c.TURN.ListenUDP, c.TURN.ListenTCP = "127.0.0.1:3478", "127.0.0.1:3478"
	c.TURN.RelayIP, c.TURN.RelayBind = "127.0.0.1", "127.0.0.1"
	c.TURN.MinPort, c.TURN.MaxPort = 49152, 49251
	c.TURN.AllowPeers = []string{"127.0.0.0/8"}
	// Dev relays on one machine deliver to each other over loopback.
	c.Federation.AllowPrivateTargets = []string{"127.0.0.0/8", "::1"}
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
	if err := checkTables(md, reflect.TypeOf(*c), nil); err != nil {
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

// checkTables fails when a key that is a table in Config (a Go map) is
// given as anything else: the TOML decoder leaves such a map empty without
// a word, so `static_routes = "x"` would silently route nothing.
func checkTables(md toml.MetaData, t reflect.Type, prefix []string) error {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := strings.Split(f.Tag.Get("toml"), ",")[0]
		if !f.IsExported() || key == "" || key == "-" {
			continue
		}
		path := append(append([]string(nil), prefix...), key)
		switch f.Type.Kind() {
		case reflect.Struct:
			if f.Type == reflect.TypeOf(time.Duration(0)) {
				continue
			}
			if err := checkTables(md, f.Type, path); err != nil {
				return err
			}
		case reflect.Map:
			if !md.IsDefined(path...) {
				continue
			}
			if typ := md.Type(path...); typ != "Hash" && typ != "Inline Table" {
				return fmt.Errorf("%s must be a table, like %s = { \"key\" = \"value\" }, not a %s",
					strings.Join(path, "."), key, strings.ToLower(typ))
			}
		}
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
	for _, n := range c.Federation.AllowPrivateTargets {
		if _, err := parseNetwork(n); err != nil {
			return fmt.Errorf("config: federation.allow_private_targets: %v", err)
		}
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if v := c.IrohRelay; v != "" && v != IrohRelayOff {
		if u, err := url.Parse(v); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("config: iroh_relay must be empty, %q or an https URL, not %q", IrohRelayOff, v)
		}
	}
	if c.Iroh.MaxClients < 0 || c.Iroh.MaxClientsPerIP < 0 || c.Iroh.IdleTimeoutSeconds < 0 || c.Iroh.BytesPerSecond < -1 {
		return fmt.Errorf("config: iroh limits must be 0 (default) or more; bytes_per_second may be -1 (no limit)")
	}
	for i, a := range c.AppVersions {
		if a.ClientID == "" || a.VersionString == "" {
			return fmt.Errorf("config: app_versions[%d] needs client_id and version_string", i)
		}
		if a.File == "" && a.DownloadURL == "" {
			return fmt.Errorf("config: app_versions[%d] (%s) needs file or download_url", i, a.ClientID)
		}
		if a.File != "" && !validDownloadName(a.File) {
			return fmt.Errorf("config: app_versions[%d] file %q must be a plain file name in the downloads folder", i, a.File)
		}
	}
	if err := c.TURN.validate(); err != nil {
		return err
	}
	return c.Proxy.validate()
}

func (t *TURNConfig) validate() error {
	if (t.Server == "") != (t.Secret == "") {
		return fmt.Errorf("config: turn.server and turn.secret go together")
	}
	if t.TTLHours < 1 {
		return fmt.Errorf("config: turn.ttl_hours must be at least 1")
	}
	if !t.BuiltIn() {
		return nil
	}
	if t.MinPort < 1 || t.MaxPort > 65535 || t.MinPort > t.MaxPort {
		return fmt.Errorf("config: need 1 <= turn.min_port <= turn.max_port <= 65535")
	}
	if t.RelayIP != "" {
		if ip := net.ParseIP(t.RelayIP); ip == nil || ip.To4() == nil {
			return fmt.Errorf("config: turn.relay_ip %q is not an IPv4 address", t.RelayIP)
		}
	}
	if t.RelayBind != "" && net.ParseIP(t.RelayBind) == nil {
		return fmt.Errorf("config: turn.relay_bind %q is not an IP address", t.RelayBind)
	}
	for _, p := range t.AllowPeers {
		if _, err := netip.ParsePrefix(p); err != nil {
			return fmt.Errorf("config: turn.allow_peers: %q is not an address prefix like 127.0.0.0/8", p)
		}
	}
	return nil
}

func (p ProxyConfig) validate() error {
	switch p.Method {
	case "2022-blake3-aes-256-gcm", "chacha20-ietf-poly1305":
	default:
		return fmt.Errorf("config: proxy.method must be 2022-blake3-aes-256-gcm or chacha20-ietf-poly1305, not %q", p.Method)
	}
	switch p.Publish {
	case "page", "invite", "none":
	default:
		return fmt.Errorf("config: proxy.publish must be page, invite or none, not %q", p.Publish)
	}
	if p.Listen != "" {
		if _, port, err := net.SplitHostPort(p.Listen); err != nil || port == "" {
			return fmt.Errorf("config: proxy.listen %q is not host:port", p.Listen)
		}
	}
	if p.Port < 0 || p.Port > 65535 {
		return fmt.Errorf("config: proxy.port %d is not a port", p.Port)
	}
	if p.RotateGraceHours < 0 || p.ReplayWindowMinutes < 1 || p.MaxConns < 0 || p.MaxConnsPerIP < 0 {
		return fmt.Errorf("config: proxy.rotate_grace_hours, max_conns and max_conns_per_ip must not be negative, proxy.replay_window_minutes at least 1")
	}
	return nil
}

// ReleasesFolder is where this relay offers its own release files:
// ReleasesDir, or DataDir/releases.
func (c *Config) ReleasesFolder() string {
	if c.ReleasesDir != "" {
		return c.ReleasesDir
	}
	return filepath.Join(c.DataDir, "releases")
}

// OwnIrohRelayURL is the URL of the built-in iroh relay as core takes it
// (iroh replaces the path with /relay): https://HOST/, with the HTTPS
// listener's port when it is not 443.
func (c *Config) OwnIrohRelayURL() string {
	host := c.Hostname()
	if c.IP != "" && strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if _, port, err := net.SplitHostPort(c.Listen.HTTPS); err == nil && port != "" && port != "443" {
		host = net.JoinHostPort(c.Hostname(), port)
	}
	return "https://" + host + "/"
}
