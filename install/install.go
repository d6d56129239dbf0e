// Package install puts a relay on a Debian or Ubuntu host: the system
// user, directories, config file, DKIM key, binary and a sandboxed systemd
// unit; it removes them again; and it says which DNS records the relay
// needs and whether they are live.
//
// What runs on the host is data: a planner makes a Plan of Steps (files,
// directories, host Commands), an executor carries it out, and a Runner
// runs the commands. With a root directory (--root) everything is laid out
// under it and a Recorder takes the commands instead of the host.
package install

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"aead.dev/minisign"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/dkim"
	"github.com/chatrelay/chatrelay/release"
)

// Where things go on the target system.
const (
	User       = "chatrelay"
	ConfigDir  = "/etc/chatrelay"
	ConfigPath = "/etc/chatrelay/chatrelay.toml"
	DataDir    = "/var/lib/chatrelay"
	// BackupDir is where the sandboxed service may write backups.
	BackupDir  = "/var/backups/chatrelay"
	BinaryPath = "/usr/local/bin/chatrelay"
	UnitName   = "chatrelay.service"
	UnitPath   = "/etc/systemd/system/chatrelay.service"
)

// DKIMKeyPath is where the relay keeps its DKIM private key.
func DKIMKeyPath(dataDir string) string {
	return filepath.Join(dataDir, "dkim", "private.pem")
}

// Options for Install.
type Options struct {
	Domain string // domain mode
	IP     string // IP mode: addresses are name@[IP]
	Email  string // ACME account e-mail, optional

	// Root lays everything out under this directory and runs nothing on
	// the host; the host commands are recorded (Result.Commands).
	Root string
	// Binary is the program to install; the running one when empty.
	Binary string
	// Runner runs host commands: ExecRunner, or a Recorder with Root.
	Runner Runner
	Out    io.Writer
	// Confirm asks the operator before a host install changes anything;
	// nil means yes.
	Confirm func(question string) bool

	// Ports to check; Ports (the relay's) when nil. With Root the check
	// runs only when Ports is set: the host's ports are not the target's.
	Ports []int
	// OSRelease and SystemdDir locate the host facts checked
	// (/etc/os-release, /run/systemd/system).
	OSRelease  string
	SystemdDir string
	// HealthAddr is where the relay must answer IMAP over TLS once
	// started, within HealthTimeout (90s). By default the config's
	// listen.imaps port on 127.0.0.1. With Root the wait happens only when
	// HealthAddr is set.
	HealthAddr    string
	HealthTimeout time.Duration
	// PublicIPv4 and PublicIPv6 go into the DNS records shown at the end;
	// in domain mode on a host the IPv4 address is guessed when empty.
	PublicIPv4, PublicIPv6 string
	// Firewall is the host firewall the relay's ports are opened in:
	// FirewallUFW, FirewallFirewalld or FirewallNone. Empty: detected on
	// a host install, none with Root.
	Firewall string
	// Proxy turns on the Shadowsocks proxy in a new config: "random" for
	// a random free port, or a port number; empty leaves it off.
	Proxy string

	proxyPort int
}

// Result says what Install did.
type Result struct {
	Plan       *Plan
	Upgrade    bool      // a previous install was found and upgraded
	ConfigKept bool      // the existing config file was left as it was
	Commands   []Command // the host commands, recorded (with Root)
	DKIM       string    // the DKIM TXT record value
	JoinURL    string
	ProxyURL   string // the proxy's ss:// URL, when it runs
}

// facts are what the planner needs to know about the target.
type facts struct {
	userExists   bool
	configExists bool
	unitExists   bool
	upgrade      bool
	sameBinary   bool
}

func (o *Options) defaults() error {
	if (o.Domain == "") == (o.IP == "") {
		return errors.New("give --domain D (a domain whose DNS you control) or --ip A (an IP-only relay), not both")
	}
	if o.IP != "" && net.ParseIP(o.IP) == nil {
		return fmt.Errorf("--ip %q is not an IP address", o.IP)
	}
	if o.Domain != "" {
		o.Domain = strings.ToLower(strings.TrimSuffix(o.Domain, "."))
		if strings.ContainsAny(o.Domain, "@/: ") || !strings.Contains(o.Domain, ".") && o.Domain != "localhost" {
			return fmt.Errorf("--domain %q is not a domain name", o.Domain)
		}
	}
	switch o.Proxy {
	case "":
	case "random":
		o.proxyPort = randomFreePort()
		if o.proxyPort == 0 {
			return errors.New("--proxy: found no free port; give one (--proxy=PORT)")
		}
	default:
		n, err := strconv.Atoi(o.Proxy)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("--proxy %q: give a port number, or no value for a random port", o.Proxy)
		}
		o.proxyPort = n
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Runner == nil {
		o.Runner = defaultRunner(o.Root)
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the running program: %w", err)
		}
		if exe, err = filepath.EvalSymlinks(exe); err != nil {
			return fmt.Errorf("find the running program: %w", err)
		}
		o.Binary = exe
	}
	if o.OSRelease == "" {
		o.OSRelease = "/etc/os-release"
	}
	if o.SystemdDir == "" {
		o.SystemdDir = "/run/systemd/system"
	}
	if o.HealthTimeout == 0 {
		o.HealthTimeout = 90 * time.Second
	}
	if o.Firewall == "" {
		o.Firewall = FirewallNone
		if o.Root == "" {
			o.Firewall = DetectFirewall(context.Background())
		}
	}
	return nil
}

// firewallRules are the ports of the config being installed: the one in
// place (an upgrade keeps it), else the defaults.
func (o *Options) firewallRules() []PortRule {
	cfg := relay.Default()
	if err := cfg.LoadFile(hostPath(o.Root, ConfigPath)); err != nil {
		cfg = relay.Default()
	}
	return FirewallRules(cfg)
}

// Install installs or upgrades the relay. A second run keeps the config
// file, the DKIM key and all data, and replaces binary and unit.
func Install(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	f := o.gatherFacts()
	res := &Result{Upgrade: f.upgrade, ConfigKept: f.configExists}
	res.Plan = planInstall(&o, f, res)

	if o.Root != "" {
		fmt.Fprintf(o.Out, "Laying out chatrelay under %s; nothing runs on this host.\n", o.Root)
	}
	ex := &executor{root: o.Root, run: o.Runner, out: o.Out}
	// The checks change nothing: run them before asking.
	if err := ex.executeSteps(ctx, res.Plan, 0, checkSteps); err != nil {
		return res, err
	}
	if o.Root == "" && o.Confirm != nil {
		verb := "Install"
		if f.upgrade {
			verb = "Upgrade (config, key and data are kept)"
		}
		q := fmt.Sprintf("%s chatrelay for %s: system user %s, %s, %s, %s, service %s. Continue?",
			verb, mailDomain(o), User, ConfigPath, DataDir, BinaryPath, UnitName)
		if !o.Confirm(q) {
			return nil, errors.New("nothing done (answer y, or run with --yes)")
		}
	}
	if err := ex.executeSteps(ctx, res.Plan, checkSteps, len(res.Plan.Steps)); err != nil {
		return res, err
	}
	if rec, ok := o.Runner.(*Recorder); ok {
		res.Commands = rec.Commands
	}
	o.printSummary(res)
	return res, nil
}

func (o *Options) gatherFacts() facts {
	var f facts
	exists := func(p string) bool {
		_, err := os.Lstat(hostPath(o.Root, p))
		return err == nil
	}
	f.configExists = exists(ConfigPath)
	f.unitExists = exists(UnitPath)
	// Data kept by a plain uninstall makes this an upgrade too: the
	// accounts, key and config are picked up again.
	f.upgrade = f.unitExists || exists(BinaryPath) || exists(DataDir) || f.configExists
	f.sameBinary = sameFile(o.Binary, hostPath(o.Root, BinaryPath))
	if o.Root != "" {
		f.userExists = userExists(hostPath(o.Root, "/etc/passwd"), User)
	} else {
		_, err := user.Lookup(User)
		f.userExists = err == nil
	}
	return f
}

// userExists looks name up in a passwd file (the target's, under a root).
func userExists(passwd, name string) bool {
	data, err := os.ReadFile(passwd)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, name+":") {
			return true
		}
	}
	return false
}

func mailDomain(o Options) string {
	if o.IP != "" {
		return "[" + o.IP + "]"
	}
	return o.Domain
}

// checkSteps is how many steps at the start of an install plan only look.
const checkSteps = 3

func planInstall(o *Options, f facts, res *Result) *Plan {
	rootMode := o.Root != ""
	skipped := func(ctx context.Context, root string) (string, error) { return "skipped (--root)", nil }
	p := &Plan{}

	sys := Step{
		Title: "checking the system",
		Hint: "chatrelay install needs Debian or Ubuntu with systemd, run as root (sudo chatrelay install ...). " +
			"Elsewhere run `chatrelay serve --config FILE` under your own service manager, or lay the files out with --root DIR",
	}
	if rootMode {
		sys.Action = skipped
	} else {
		sys.Action = func(context.Context, string) (string, error) { return checkSystem(o.OSRelease, o.SystemdDir) }
	}
	p.Steps = append(p.Steps, sys)

	ports := o.Ports
	if ports == nil {
		ports = Ports
		if o.proxyPort != 0 {
			ports = append(slices.Clone(Ports), o.proxyPort)
		}
	}
	portStep := Step{
		Title: "checking ports " + joinInts(ports),
		Hint: "stop and disable what holds the port (for example `systemctl disable --now exim4`; " +
			"also postfix, nginx, apache2, dovecot), then run chatrelay install again",
	}
	if rootMode && o.Ports == nil {
		portStep.Action = skipped
	} else {
		portStep.Action = func(context.Context, string) (string, error) {
			return checkPorts(ports, hostPath(o.Root, BinaryPath))
		}
	}
	p.Steps = append(p.Steps, portStep)

	// The config is the operator's: it is checked before anything
	// changes, and never replaced.
	p.Steps = append(p.Steps, Step{
		Title: "checking the existing config",
		Action: func(_ context.Context, root string) (string, error) {
			return checkConfig(hostPath(root, ConfigPath), *o)
		},
		Hint: "fix the config file (or move it away to get a fresh one) and run chatrelay install again",
	})

	userStep := Step{
		Title: "creating system user " + User,
		Hint:  "check that useradd (package passwd) is installed and /etc/passwd is writable",
	}
	if f.userExists {
		userStep.Action = func(context.Context, string) (string, error) { return "exists", nil }
	} else {
		userStep.Commands = []Command{{Args: []string{
			"useradd", "--system", "--user-group",
			"--home-dir", DataDir, "--no-create-home",
			"--shell", "/usr/sbin/nologin",
			"--comment", "chatrelay mail relay",
			User,
		}}}
	}
	p.Steps = append(p.Steps, userStep)

	p.Steps = append(p.Steps, Step{
		Title: "creating directories",
		Dirs: []Dir{
			{Path: ConfigDir, Mode: 0o750, Owner: "root:" + User},
			{Path: DataDir, Mode: 0o700, Owner: User + ":" + User},
			{Path: BackupDir, Mode: 0o700, Owner: User + ":" + User},
		},
		Hint: "check that the file system is writable and not full",
	})

	cfg := File{
		Path: ConfigPath, Mode: 0o640, Owner: "root:" + User, Keep: true,
		Content: ConfigFile(ConfigOptions{Domain: o.Domain, IP: o.IP, DataDir: DataDir, ACMEEmail: o.Email, ProxyPort: o.proxyPort}),
	}
	p.Steps = append(p.Steps, Step{
		Title: "writing config " + ConfigPath,
		Files: []File{cfg},
		Hint:  "check that " + ConfigDir + " is writable and that the disk is not full",
	})

	keyPath := DKIMKeyPath(DataDir)
	p.Steps = append(p.Steps, Step{
		Title: "making the DKIM key " + keyPath,
		Files: nil,
		Action: func(_ context.Context, root string) (string, error) {
			hp := hostPath(root, keyPath)
			_, statErr := os.Stat(hp)
			k, err := dkim.LoadOrCreate(hp)
			if err != nil {
				return "", err
			}
			res.DKIM = k.TXTRecord()
			if statErr == nil {
				return "kept existing key", nil
			}
			return "created", nil
		},
		Hint: "a broken key file can be moved away; a new key then needs its DNS record published again",
	})

	bin := Step{
		Title: "installing " + BinaryPath,
		Hint:  "check that " + filepath.Dir(BinaryPath) + " is writable and that the disk is not full",
	}
	if f.sameBinary {
		bin.Action = func(context.Context, string) (string, error) { return "already in place", nil }
	} else {
		bin.Files = []File{{Path: BinaryPath, Mode: 0o755, Owner: "root:root", Source: o.Binary}}
	}
	p.Steps = append(p.Steps, bin)

	// A release file carried here with its signature seeds the next
	// relay: offer both under /downloads (SPEC section 13).
	if _, err := os.Stat(o.Binary + release.SigSuffix); err == nil {
		src := o.Binary
		p.Steps = append(p.Steps, Step{
			Title: "offering this release under /downloads",
			Action: func(_ context.Context, root string) (string, error) {
				return offerRelease(src, hostPath(root, filepath.Join(DataDir, "releases")), release.CompiledKey)
			},
		})
	}

	p.Steps = append(p.Steps, Step{
		Title: "writing systemd unit " + UnitPath,
		Files: []File{{
			Path: UnitPath, Mode: 0o644, Owner: "root:root",
			Content: []byte(Unit(UnitOptions{Binary: BinaryPath, Config: ConfigPath, DataDir: DataDir, User: User})),
		}},
	})

	// Ownership last: the key was made by root inside the data directory.
	owners := Step{
		Title:    "setting owners",
		Commands: []Command{{Args: []string{"chown", "root:" + User, ConfigDir, ConfigPath}}},
		Hint:     "check that the user " + User + " exists (getent passwd " + User + ")",
	}
	if _, rec := o.Runner.(*Recorder); rec {
		// The target's user is not this host's: say what to run there.
		owners.Commands = append(owners.Commands, Command{Args: []string{"chown", "-R", User + ":" + User, DataDir, BackupDir}})
	} else {
		// On a big relay a chown -R would rewrite every message file's
		// inode on every upgrade: change only the owners that are wrong.
		owners.Action = func(_ context.Context, root string) (string, error) {
			n, err := FixOwners(User, hostPath(root, DataDir), hostPath(root, BackupDir))
			if n > 0 {
				return fmt.Sprintf("%d owner(s) fixed", n), err
			}
			return "", err
		}
	}
	p.Steps = append(p.Steps, owners)

	fw := Step{
		Title:    "opening the relay's ports in the firewall (" + o.Firewall + ")",
		Commands: firewallCommands(o.Firewall, o.firewallRules()),
		Hint:     "open the ports listed at the end by hand, then run chatrelay install again",
	}
	if len(fw.Commands) == 0 {
		fw.Title = "looking for a firewall to open ports in"
		fw.Action = func(context.Context, string) (string, error) {
			return "none managed here (ufw, firewalld); open the ports listed at the end in yours", nil
		}
	}
	p.Steps = append(p.Steps, fw)

	svc := Step{
		Title: "starting " + UnitName,
		Commands: []Command{
			{Args: []string{"systemctl", "daemon-reload"}},
			{Args: []string{"systemctl", "enable", "--now", UnitName}},
		},
		Hint: "see why with `systemctl status chatrelay` and `journalctl -u chatrelay -n 50 --no-pager`",
	}
	if f.unitExists {
		// enable --now leaves a running service alone; the new binary and
		// unit take effect on restart.
		svc.Commands = append(svc.Commands, Command{Args: []string{"systemctl", "restart", UnitName}})
	}
	p.Steps = append(p.Steps, svc)

	health := Step{
		Title: "waiting for the relay to answer IMAP",
		Hint:  "see why with `journalctl -u chatrelay -n 50 --no-pager`; the install is in place, run chatrelay install again once fixed",
	}
	if rootMode && o.HealthAddr == "" {
		health.Action = skipped
	} else {
		health.Action = func(ctx context.Context, root string) (string, error) {
			ctx, cancel := context.WithTimeout(ctx, o.HealthTimeout)
			defer cancel()
			addr := o.HealthAddr
			if addr == "" {
				addr = imapsAddr(hostPath(root, ConfigPath))
			}
			if err := WaitIMAP(ctx, addr, o.Domain, time.Second); err != nil {
				return "", err
			}
			return "ok (" + addr + ")", nil
		}
	}
	p.Steps = append(p.Steps, health)
	return p
}

// checkPorts fails when a port is busy, except when the holder is the
// installed chatrelay itself (an upgrade: it is restarted later).
func checkPorts(ports []int, installed string) (string, error) {
	var problems []string
	ours := 0
	for _, b := range BusyPorts(ports) {
		if b.Err == nil && b.Exe != "" && b.Exe == installed {
			ours++
			continue
		}
		problems = append(problems, b.String())
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "; "))
	}
	if ours > 0 {
		return "in use by the running chatrelay (restarted below)", nil
	}
	return "", nil
}

// offerRelease copies a release binary and its signature into dir under
// the name they were signed with, when the signature checks out under
// the release key compiled in; otherwise it says why not, which is no
// reason to stop an install.
func offerRelease(binary, dir string, releaseKey func() (minisign.PublicKey, error)) (string, error) {
	key, err := releaseKey()
	if err != nil {
		return "not offered: this build has no release key", nil
	}
	v, err := release.VerifyFile(key, binary, "")
	if err != nil {
		return "not offered: " + err.Error(), nil
	}
	name := v.FileName()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := copyFile(binary, filepath.Join(dir, name), 0o644); err != nil {
		return "", err
	}
	if err := copyFile(binary+release.SigSuffix, filepath.Join(dir, name+release.SigSuffix), 0o644); err != nil {
		return "", err
	}
	return name + " and its signature", nil
}

// checkConfig reads an existing config as the server will and refuses
// one that is not for the relay the flags ask for: its accounts would not
// be the ones the printed join code makes, so nothing could log in.
func checkConfig(path string, o Options) (string, error) {
	if _, err := os.Lstat(path); os.IsNotExist(err) {
		return "none yet", nil
	}
	cfg := relay.Default()
	if err := cfg.LoadFile(path); err != nil {
		return "", err
	}
	if err := cfg.Validate(); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if cfg.IP == o.IP && strings.EqualFold(cfg.Domain, o.Domain) {
		return "kept, for " + relayFlag(cfg.Domain, cfg.IP), nil
	}
	return "", fmt.Errorf("%s is for %s, not %s: the accounts there and the join code for %s would not match. "+
		"To keep that relay, run the install with %s; to change the relay's address, edit the file or move it away",
		path, relayFlag(cfg.Domain, cfg.IP), relayFlag(o.Domain, o.IP), relayFlag(o.Domain, o.IP), relayFlag(cfg.Domain, cfg.IP))
}

// relayFlag is the install flag for a config's mode: --domain D or --ip A.
func relayFlag(domain, ip string) string {
	if ip != "" {
		return "--ip " + ip
	}
	return "--domain " + domain
}

// imapsAddr is where the installed relay answers IMAP over TLS: the
// config's listen.imaps, reached over loopback when it binds all addresses.
func imapsAddr(configPath string) string {
	cfg := relay.Default()
	_ = cfg.LoadFile(configPath) // checked in an earlier step
	return localAddr(cfg.Listen.IMAPS, "993")
}

// HealthAddrs are where a relay with cfg answers IMAP and submission
// (both with implicit TLS), as seen from the same machine; "" for a
// listener the config turns off.
func HealthAddrs(cfg relay.Config) (imap, submission string) {
	if cfg.Listen.IMAPS != "" {
		imap = localAddr(cfg.Listen.IMAPS, "993")
	}
	if cfg.Listen.Submissions != "" {
		submission = localAddr(cfg.Listen.Submissions, "465")
	}
	return imap, submission
}

// localAddr turns a listen address into one to dial on this machine.
func localAddr(listen, defPort string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "" {
		return "127.0.0.1:" + defPort
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// randomFreePort picks a port in 20000-59999 that is free on all
// addresses now; 0 if none of a few tries is. A random port is one thing
// less for a censor to guess.
func randomFreePort() int {
	for range 50 {
		n, err := rand.Int(rand.Reader, big.NewInt(40000))
		if err != nil {
			return 0
		}
		if p := 20000 + int(n.Int64()); len(BusyPorts([]int{p})) == 0 {
			return p
		}
	}
	return 0
}

// randomString returns n characters from alphabet (at most 256), uniformly.
func randomString(n int, alphabet string) string {
	limit := 256 - 256%len(alphabet) // reject bytes that would bias the result
	out := make([]byte, 0, n)
	buf := make([]byte, 2*n)
	for len(out) < n {
		rand.Read(buf) // never fails (crypto/rand, Go 1.24+)
		for _, c := range buf {
			if int(c) < limit && len(out) < n {
				out = append(out, alphabet[int(c)%len(alphabet)])
			}
		}
	}
	return string(out)
}

// DCLoginURL is a dclogin: code for a new account on an IP-only relay: the
// account is created at first login, and "accept invalid certificates"
// (ic=3) lets the app take the relay's self-signed certificate.
func DCLoginURL(ip string) string {
	host := ip
	if strings.Contains(ip, ":") {
		host = "[" + ip + "]"
	}
	addr := randomString(9, "abcdefghijklmnopqrstuvwxyz0123456789") + "@[" + ip + "]"
	q := url.Values{}
	q.Set("p", randomString(24, "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"))
	q.Set("v", "1")
	q.Set("ih", host)
	q.Set("ip", "993")
	q.Set("is", "ssl")
	q.Set("sh", host)
	q.Set("sp", "465")
	q.Set("ss", "ssl")
	q.Set("ic", "3")
	return "dclogin:" + addr + "?" + q.Encode()
}

// defaultRunner records the host commands when installing into a root
// (an image), and runs them on the real host.
func defaultRunner(root string) Runner {
	if root != "" {
		return &Recorder{}
	}
	return ExecRunner{}
}
