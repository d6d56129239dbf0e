package install

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/dkim"
)

// fakeBinary is a small stand-in for the program being installed.
func fakeBinary(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "chatrelay-new")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func installRoot(t *testing.T, root string, o Options) (*Result, string) {
	t.Helper()
	var out bytes.Buffer
	o.Root, o.Out = root, &out
	res, err := Install(context.Background(), o)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out.String())
	}
	return res, out.String()
}

func mode(t *testing.T, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func argv(cs []Command) []string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = strings.Join(c.Args, " ")
	}
	return s
}

func TestInstallIntoRootLaysOutEveryFile(t *testing.T) {
	root := t.TempDir()
	bin := fakeBinary(t, "#!/bin/sh\necho chatrelay\n")
	res, out := installRoot(t, root, Options{Domain: "Chat.Example.org", Email: "admin@example.org", Binary: bin})

	// Directories.
	for _, d := range []struct {
		path string
		mode fs.FileMode
	}{
		{ConfigDir, 0o750 | fs.ModeDir},
		{DataDir, 0o700 | fs.ModeDir},
		{BackupDir, 0o700 | fs.ModeDir},
		{filepath.Dir(DKIMKeyPath(DataDir)), 0o700 | fs.ModeDir},
		{"/var/lib", 0o755 | fs.ModeDir},
	} {
		if m := mode(t, filepath.Join(root, d.path)); m != d.mode {
			t.Errorf("%s: mode %v, want %v", d.path, m, d.mode)
		}
	}

	// The config parses as the server reads it and names the domain.
	cfgPath := filepath.Join(root, ConfigPath)
	if m := mode(t, cfgPath); m != 0o640 {
		t.Errorf("config mode %v, want 0640", m)
	}
	cfg := relay.Default()
	if err := cfg.LoadFile(cfgPath); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Domain != "chat.example.org" || cfg.DataDir != DataDir || cfg.TLS.ACMEEmail != "admin@example.org" || cfg.IP != "" {
		t.Errorf("config: domain %q data %q email %q ip %q", cfg.Domain, cfg.DataDir, cfg.TLS.ACMEEmail, cfg.IP)
	}

	// The unit is the embedded one, filled with the real paths.
	unit, err := os.ReadFile(filepath.Join(root, UnitPath))
	if err != nil {
		t.Fatal(err)
	}
	if want := Unit(UnitOptions{Binary: BinaryPath, Config: ConfigPath, DataDir: DataDir, User: User}); string(unit) != want {
		t.Errorf("unit differs from Unit():\n%s", unit)
	}
	if m := mode(t, filepath.Join(root, UnitPath)); m != 0o644 {
		t.Errorf("unit mode %v, want 0644", m)
	}

	// The binary is a copy, executable.
	got, err := os.ReadFile(filepath.Join(root, BinaryPath))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "#!/bin/sh\necho chatrelay\n" {
		t.Errorf("binary content %q", got)
	}
	if m := mode(t, filepath.Join(root, BinaryPath)); m != 0o755 {
		t.Errorf("binary mode %v, want 0755", m)
	}

	// The DKIM key is private and is the one whose record is shown.
	keyPath := filepath.Join(root, DKIMKeyPath(DataDir))
	if m := mode(t, keyPath); m != 0o600 {
		t.Errorf("DKIM key mode %v, want 0600", m)
	}
	pemData, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	k, err := dkim.ParsePEM(pemData)
	if err != nil {
		t.Fatal(err)
	}
	if res.DKIM != k.TXTRecord() || !strings.HasPrefix(res.DKIM, "v=DKIM1; k=rsa; p=") {
		t.Errorf("DKIM record %q does not match the key", res.DKIM)
	}
	if !strings.Contains(out, "dkim._domainkey.chat.example.org.") || !strings.Contains(out, "DCACCOUNT:https://chat.example.org/new") {
		t.Errorf("output lacks the DKIM record or the join URL:\n%s", out)
	}

	// Intended owners are in the plan.
	owners := map[string]string{}
	for _, d := range res.Plan.Dirs() {
		owners[d.Path] = d.Owner
	}
	for _, f := range res.Plan.Files() {
		owners[f.Path] = f.Owner
	}
	for path, want := range map[string]string{
		ConfigDir:  "root:chatrelay",
		ConfigPath: "root:chatrelay",
		DataDir:    "chatrelay:chatrelay",
		BackupDir:  "chatrelay:chatrelay",
		BinaryPath: "root:root",
		UnitPath:   "root:root",
	} {
		if owners[path] != want {
			t.Errorf("plan: owner of %s is %q, want %q", path, owners[path], want)
		}
	}

	// The host commands, in order.
	want := []string{
		"useradd --system --user-group --home-dir /var/lib/chatrelay --no-create-home --shell /usr/sbin/nologin --comment chatrelay mail relay chatrelay",
		"chown root:chatrelay /etc/chatrelay /etc/chatrelay/chatrelay.toml",
		"chown -R chatrelay:chatrelay /var/lib/chatrelay /var/backups/chatrelay",
		"systemctl daemon-reload",
		"systemctl enable --now chatrelay.service",
	}
	if got := argv(res.Commands); !slices.Equal(got, want) {
		t.Errorf("host commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !slices.Equal(argv(res.Commands), argv(res.Plan.Commands())) {
		t.Errorf("recorded commands differ from the plan's")
	}
	if !strings.Contains(out, " 1. useradd --system") || !strings.Contains(out, " 5. systemctl enable --now chatrelay.service") {
		t.Errorf("output lacks the numbered host commands:\n%s", out)
	}
	if res.Upgrade || res.ConfigKept {
		t.Errorf("fresh install reported upgrade=%v configKept=%v", res.Upgrade, res.ConfigKept)
	}
	if !strings.Contains(out, "[1/13] checking the system ... skipped (--root)") || !strings.Contains(out, "[6/13] writing config /etc/chatrelay/chatrelay.toml ... ok") {
		t.Errorf("progress lines missing:\n%s", out)
	}
}

func TestInstallIPModeWritesSelfSignedConfig(t *testing.T) {
	root := t.TempDir()
	res, out := installRoot(t, root, Options{IP: "203.0.113.7", Binary: fakeBinary(t, "x")})
	cfg := relay.Default()
	if err := cfg.LoadFile(filepath.Join(root, ConfigPath)); err != nil {
		t.Fatal(err)
	}
	if cfg.IP != "203.0.113.7" || cfg.Domain != "" || cfg.TLS.Mode != "selfsigned" {
		t.Errorf("config ip %q domain %q tls.mode %q", cfg.IP, cfg.Domain, cfg.TLS.Mode)
	}
	if !strings.HasPrefix(res.JoinURL, "dclogin:") || !strings.Contains(res.JoinURL, "@[203.0.113.7]?") || !strings.Contains(res.JoinURL, "ic=3") {
		t.Errorf("join URL %q", res.JoinURL)
	}
	if !strings.Contains(out, "no DNS records are needed") {
		t.Errorf("output:\n%s", out)
	}
}

func TestInstallAgainKeepsConfigAndKey(t *testing.T) {
	root := t.TempDir()
	installRoot(t, root, Options{Domain: "example.org", Binary: fakeBinary(t, "v1")})

	cfgPath := filepath.Join(root, ConfigPath)
	keyPath := filepath.Join(root, DKIMKeyPath(DataDir))
	// The operator edits the config; a message is stored.
	edited, _ := os.ReadFile(cfgPath)
	edited = append(edited, []byte("# my change\n")...)
	if err := os.WriteFile(cfgPath, edited, 0o640); err != nil {
		t.Fatal(err)
	}
	msg := filepath.Join(root, DataDir, "msgs", "1", "1")
	os.MkdirAll(filepath.Dir(msg), 0o700)
	if err := os.WriteFile(msg, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(keyPath)

	res, out := installRoot(t, root, Options{Domain: "example.org", Email: "x@y.z", Binary: fakeBinary(t, "v2")})

	if got, _ := os.ReadFile(cfgPath); !bytes.Equal(got, edited) {
		t.Errorf("config changed by the second install:\n%s", got)
	}
	if got, _ := os.ReadFile(keyPath); !bytes.Equal(got, key) {
		t.Error("DKIM key changed by the second install")
	}
	if got, _ := os.ReadFile(msg); string(got) != "data" {
		t.Error("data lost")
	}
	if got, _ := os.ReadFile(filepath.Join(root, BinaryPath)); string(got) != "v2" {
		t.Errorf("binary not upgraded: %q", got)
	}
	if !res.Upgrade || !res.ConfigKept {
		t.Errorf("upgrade=%v configKept=%v, want both", res.Upgrade, res.ConfigKept)
	}
	for _, want := range []string{
		"kept existing /etc/chatrelay/chatrelay.toml",
		"checking the existing config ... kept, for --domain example.org",
		"kept existing key",
		"Kept the existing config",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	cmds := argv(res.Commands)
	if i, j := slices.Index(cmds, "systemctl enable --now chatrelay.service"), slices.Index(cmds, "systemctl restart chatrelay.service"); i < 0 || j < i {
		t.Errorf("upgrade must enable then restart the service: %q", cmds)
	}
}

func TestInstallSameBinaryIsNotCopied(t *testing.T) {
	root := t.TempDir()
	installRoot(t, root, Options{Domain: "example.org", Binary: fakeBinary(t, "v1")})
	res, out := installRoot(t, root, Options{Domain: "example.org", Binary: filepath.Join(root, BinaryPath)})
	if !strings.Contains(out, "installing /usr/local/bin/chatrelay ... already in place") {
		t.Errorf("output:\n%s", out)
	}
	for _, f := range res.Plan.Files() {
		if f.Path == BinaryPath {
			t.Error("plan copies the binary onto itself")
		}
	}
}

func TestInstallNeedsDomainOrIP(t *testing.T) {
	for _, o := range []Options{
		{},
		{Domain: "example.org", IP: "192.0.2.1"},
		{IP: "not-an-ip"},
		{Domain: "user@example.org"},
	} {
		o.Root = t.TempDir()
		if _, err := Install(context.Background(), o); err == nil {
			t.Errorf("Install(%+v) succeeded", o)
		}
	}
}

func TestInstallStopsAtBusyPort(t *testing.T) {
	l := listenAll(t)
	root := t.TempDir()
	var out bytes.Buffer
	_, err := Install(context.Background(), Options{
		Domain: "example.org", Root: root, Out: &out, Binary: fakeBinary(t, "x"),
		Ports: []int{l.port},
	})
	if err == nil {
		t.Fatalf("install succeeded with port %d held:\n%s", l.port, out.String())
	}
	for _, want := range []string{
		"port " + itoa(l.port) + " is in use by",
		"(pid " + itoa(os.Getpid()) + ")",
		"what to do:",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if !strings.Contains(out.String(), "[2/13] checking ports "+itoa(l.port)+" ... failed") {
		t.Errorf("progress:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(root, ConfigPath)); err == nil {
		t.Error("install went on after the port check failed")
	}
}

func TestUninstallKeepsDataUnlessPurge(t *testing.T) {
	for _, purge := range []bool{false, true} {
		root := t.TempDir()
		installRoot(t, root, Options{Domain: "example.org", Binary: fakeBinary(t, "x")})
		var out bytes.Buffer
		_, cmds, err := Uninstall(context.Background(), UninstallOptions{Root: root, Purge: purge, Out: &out})
		if err != nil {
			t.Fatalf("purge=%v: %v\n%s", purge, err, out.String())
		}
		gone := []string{UnitPath, BinaryPath}
		kept := []string{ConfigPath, DKIMKeyPath(DataDir)}
		if purge {
			gone, kept = append(gone, DataDir, BackupDir, ConfigDir), nil
		}
		for _, p := range gone {
			if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
				t.Errorf("purge=%v: %s still there", purge, p)
			}
		}
		for _, p := range kept {
			if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
				t.Errorf("purge=%v: %s removed: %v", purge, p, err)
			}
		}
		want := []string{"systemctl disable --now chatrelay.service", "systemctl daemon-reload"}
		if purge {
			want = append(want, "userdel chatrelay")
		}
		if got := argv(cmds); !slices.Equal(got, want) {
			t.Errorf("purge=%v: commands %q, want %q", purge, got, want)
		}
	}
}

func TestUninstallWithoutInstallIsHarmless(t *testing.T) {
	root := t.TempDir()
	var out bytes.Buffer
	_, cmds, err := Uninstall(context.Background(), UninstallOptions{Root: root, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(argv(cmds), "systemctl disable --now chatrelay.service") {
		t.Errorf("stops a unit that is not installed: %q", argv(cmds))
	}
	if !strings.Contains(out.String(), "not installed") {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestExecutorStopsAtFailingCommand(t *testing.T) {
	var out bytes.Buffer
	ex := &executor{root: t.TempDir(), run: failingRunner{}, out: &out}
	p := &Plan{Steps: []Step{
		{Title: "one", Commands: []Command{{Args: []string{"true"}, MayFail: true}}},
		{Title: "two", Commands: []Command{{Args: []string{"false"}}}, Hint: "do this"},
		{Title: "three"},
	}}
	err := ex.execute(context.Background(), p)
	if err == nil || !strings.Contains(err.Error(), "what to do: do this") {
		t.Fatalf("err = %v", err)
	}
	if got := out.String(); !strings.Contains(got, "[1/3] one ... ignored") || !strings.Contains(got, "[2/3] two ... failed") || strings.Contains(got, "three") {
		t.Errorf("progress:\n%s", got)
	}
}

type failingRunner struct{}

func (failingRunner) Run(_ context.Context, c Command) error {
	return &os.PathError{Op: "run", Path: c.Args[0], Err: os.ErrPermission}
}

func TestCommandStringQuotes(t *testing.T) {
	c := Command{Args: []string{"useradd", "--comment", "chatrelay mail relay", "it's"}}
	if got, want := c.String(), `useradd --comment 'chatrelay mail relay' 'it'\''s'`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestConfigFileDefaultsParse(t *testing.T) {
	text := string(ConfigFile(ConfigOptions{Domain: "example.org", DataDir: DataDir}))
	// Uncommenting every default must give a valid file equal to Default().
	var b strings.Builder
	for _, line := range strings.Split(text, "\n") {
		if k, _, ok := strings.Cut(strings.TrimPrefix(line, "# "), " = "); ok && strings.HasPrefix(line, "# ") && !strings.Contains(k, " ") {
			line = strings.TrimPrefix(line, "# ")
		}
		b.WriteString(line + "\n")
	}
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte(b.String()), 0o600)
	cfg := relay.Default()
	cfg.MaxRecipients = -1 // must be set back by the file
	if err := cfg.LoadFile(p); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	want := relay.Default()
	want.Domain, want.DataDir = "example.org", DataDir
	if len(cfg.Federation.StaticRoutes) == 0 && len(want.Federation.StaticRoutes) == 0 {
		cfg.Federation.StaticRoutes, want.Federation.StaticRoutes = nil, nil // {} reads as empty, not nil
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("uncommented defaults give\n%+v\nwant\n%+v", cfg, want)
	}
}

// Maps are TOML inline tables (a Go "map[]" string would be read as
// nothing at all).
func TestConfigFileRendersMapsAsTables(t *testing.T) {
	text := string(ConfigFile(ConfigOptions{Domain: "example.org", DataDir: DataDir}))
	if !strings.Contains(text, "\n# static_routes = {}\n") {
		t.Errorf("static_routes not rendered as an empty table:\n%s", text)
	}
	routes := map[string]string{"b.example": "10.0.0.2:25", "a.example": "10.0.0.1"}
	line := "static_routes = " + tomlValue(reflect.ValueOf(routes))
	if want := `static_routes = { "a.example" = "10.0.0.1", "b.example" = "10.0.0.2:25" }`; line != want {
		t.Errorf("got %s, want %s", line, want)
	}
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("domain = \"example.org\"\n[federation]\n"+line+"\n"), 0o600)
	cfg := relay.Default()
	if err := cfg.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Federation.StaticRoutes, routes) {
		t.Errorf("read back %v, want %v", cfg.Federation.StaticRoutes, routes)
	}
}

func TestReadOSRelease(t *testing.T) {
	for _, tc := range []struct {
		text string
		ok   bool
	}{
		{"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n", true},
		{"ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n", true},
		{"ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n", true},
		{"ID=fedora\nVERSION_ID=40\n", false},
		{"ID=\"alpine\"\n", false},
	} {
		p := filepath.Join(t.TempDir(), "os-release")
		os.WriteFile(p, []byte(tc.text), 0o644)
		r, err := ReadOSRelease(p)
		if err != nil {
			t.Fatal(err)
		}
		if r.Supported() != tc.ok {
			t.Errorf("%q: supported %v, want %v", tc.text, r.Supported(), tc.ok)
		}
	}
}

func TestCheckSystemRefusesOtherSystems(t *testing.T) {
	if os.Geteuid() != 0 {
		if _, err := checkSystem("/etc/os-release", "/run/systemd/system"); err == nil || !strings.Contains(err.Error(), "root") {
			t.Errorf("not root: err = %v", err)
		}
		return
	}
	dir := t.TempDir()
	fedora := filepath.Join(dir, "os-release")
	os.WriteFile(fedora, []byte("ID=fedora\nPRETTY_NAME=\"Fedora Linux 40\"\n"), 0o644)
	if _, err := checkSystem(fedora, dir); err == nil || !strings.Contains(err.Error(), "Fedora Linux 40 is not Debian or Ubuntu") {
		t.Errorf("fedora: err = %v", err)
	}
	debian := filepath.Join(dir, "debian")
	os.WriteFile(debian, []byte("ID=debian\n"), 0o644)
	if _, err := checkSystem(debian, filepath.Join(dir, "no-systemd")); err == nil || !strings.Contains(err.Error(), "systemd is not running") {
		t.Errorf("no systemd: err = %v", err)
	}
	if _, err := checkSystem(debian, dir); err != nil {
		t.Errorf("debian with systemd: %v", err)
	}
}

func TestHostPlan(t *testing.T) {
	o := Options{Domain: "example.org", Binary: fakeBinary(t, "x"), Firewall: FirewallNone}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	if _, ok := o.Runner.(ExecRunner); !ok {
		t.Errorf("host install runs commands with %T", o.Runner)
	}
	p := planInstall(&o, facts{userExists: true}, &Result{})
	if len(p.Steps) != 13 || p.Steps[1].Title != "checking ports 25, 143, 465, 587, 993, 443, 80, 3478" {
		t.Errorf("steps: %d, port step %q", len(p.Steps), p.Steps[1].Title)
	}
	for _, c := range argv(p.Commands()) {
		if strings.HasPrefix(c, "useradd") {
			t.Errorf("plan adds an existing user: %s", c)
		}
	}
	if got := argv(p.Commands()); got[len(got)-1] != "systemctl enable --now chatrelay.service" {
		t.Errorf("commands end with %q", got[len(got)-1])
	}
}

func TestInstallWaitsForTheRelay(t *testing.T) {
	up := imapServer(t, "* OK chatrelay ready\r\n")
	root := t.TempDir()
	_, out := installRoot(t, root, Options{Domain: "example.org", Binary: fakeBinary(t, "x"), HealthAddr: up})
	if !strings.Contains(out, "[13/13] waiting for the relay to answer IMAP ... ok ("+up+")") {
		t.Errorf("output:\n%s", out)
	}

	l := listenAll(t) // takes connections, never greets
	var buf bytes.Buffer
	_, err := Install(context.Background(), Options{
		Domain: "example.org", Root: t.TempDir(), Out: &buf, Binary: fakeBinary(t, "x"),
		HealthAddr: "127.0.0.1:" + itoa(l.port), HealthTimeout: 300 * time.Millisecond,
	})
	if err == nil || !strings.Contains(err.Error(), "journalctl -u chatrelay") {
		t.Errorf("err = %v\n%s", err, buf.String())
	}
}

// --proxy writes [proxy] listen into a new config (a random port, or the
// one given), checks that port, and says how to get the ss:// URL.
func TestInstallWithProxy(t *testing.T) {
	for _, tc := range []struct{ flag, want string }{{"8443", ":8443"}, {"random", ""}} {
		t.Run(tc.flag, func(t *testing.T) {
			root := t.TempDir()
			_, out := installRoot(t, root, Options{Domain: "chat.example.org", Binary: fakeBinary(t, "x"), Proxy: tc.flag})
			cfg := relay.Default()
			if err := cfg.LoadFile(filepath.Join(root, ConfigPath)); err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			listen := cfg.Proxy.Listen
			if tc.want != "" && listen != tc.want {
				t.Fatalf("proxy.listen = %q, want %q", listen, tc.want)
			}
			port, err := strconv.Atoi(strings.TrimPrefix(listen, ":"))
			if err != nil || port < 1 || tc.want == "" && (port < 20000 || port >= 60000) {
				t.Fatalf("proxy.listen = %q: not a port of the random range", listen)
			}
			if !strings.Contains(out, "chatrelay proxy show") || !strings.Contains(out, strconv.Itoa(port)) {
				t.Fatalf("install output does not say how to get the proxy URL:\n%s", out)
			}
		})
	}
	// Without --proxy there is none.
	root := t.TempDir()
	installRoot(t, root, Options{Domain: "chat.example.org", Binary: fakeBinary(t, "x")})
	cfg := relay.Default()
	if err := cfg.LoadFile(filepath.Join(root, ConfigPath)); err != nil || cfg.Proxy.Listen != "" {
		t.Fatalf("proxy on without --proxy: %q %v", cfg.Proxy.Listen, err)
	}
	if _, err := Install(context.Background(), Options{Root: t.TempDir(), Domain: "chat.example.org", Binary: fakeBinary(t, "x"), Proxy: "http"}); err == nil || !strings.Contains(err.Error(), "--proxy") {
		t.Fatalf("bad --proxy accepted: %v", err)
	}
}

// An install whose flags are not the existing config's would print a join
// code for a relay that does not exist: refused, before anything changes.
func TestInstallRefusesAConfigOfAnotherRelay(t *testing.T) {
	for _, tc := range []struct {
		first, again Options
		want         string
	}{
		{Options{IP: "203.0.113.7"}, Options{Domain: "example.org"}, "is for --ip 203.0.113.7, not --domain example.org"},
		{Options{Domain: "example.org"}, Options{IP: "203.0.113.7"}, "is for --domain example.org, not --ip 203.0.113.7"},
		{Options{IP: "203.0.113.7"}, Options{IP: "203.0.113.8"}, "run the install with --ip 203.0.113.7"},
		{Options{Domain: "example.org"}, Options{Domain: "other.example"}, "run the install with --domain example.org"},
	} {
		root := t.TempDir()
		tc.first.Binary = fakeBinary(t, "v1")
		installRoot(t, root, tc.first)
		// Take the user away: a refused install must not add it back.
		os.Remove(filepath.Join(root, "etc/passwd"))
		cfg, _ := os.ReadFile(filepath.Join(root, ConfigPath))
		var out bytes.Buffer
		tc.again.Root, tc.again.Out, tc.again.Binary = root, &out, fakeBinary(t, "v2")
		_, err := Install(context.Background(), tc.again)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v over %+v: err = %v, want %q", tc.again.IP+tc.again.Domain, tc.first.IP+tc.first.Domain, err, tc.want)
		}
		if !strings.Contains(out.String(), "[3/13] checking the existing config ... failed") {
			t.Errorf("progress:\n%s", out.String())
		}
		if got, _ := os.ReadFile(filepath.Join(root, ConfigPath)); !bytes.Equal(got, cfg) {
			t.Error("config changed by a refused install")
		}
		if got, _ := os.ReadFile(filepath.Join(root, BinaryPath)); string(got) != "v1" {
			t.Errorf("binary replaced by a refused install: %q", got)
		}
	}
}

// After a plain uninstall the data and config are still there: installing
// again is an upgrade of that relay, and says so.
func TestInstallOverKeptDataIsAnUpgrade(t *testing.T) {
	root := t.TempDir()
	installRoot(t, root, Options{IP: "203.0.113.7", Binary: fakeBinary(t, "v1")})
	if _, _, err := Uninstall(context.Background(), UninstallOptions{Root: root}); err != nil {
		t.Fatal(err)
	}
	res, out := installRoot(t, root, Options{IP: "203.0.113.7", Binary: fakeBinary(t, "v1")})
	if !res.Upgrade || !res.ConfigKept {
		t.Errorf("upgrade=%v configKept=%v after uninstall, want both", res.Upgrade, res.ConfigKept)
	}
	if !strings.Contains(out, "kept existing key") {
		t.Errorf("output:\n%s", out)
	}
	// The unit was gone: nothing to restart, enable --now starts it.
	if cmds := argv(res.Commands); slices.Contains(cmds, "systemctl restart chatrelay.service") {
		t.Errorf("commands %q restart a service that was not installed", cmds)
	}
}

func TestFixOwnersChangesOnlyWrongOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing owners needs root")
	}
	dir := t.TempDir()
	for _, p := range []string{"a/1", "a/2", "b/3"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o700)
		os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o600)
	}
	const nobody = 65534
	// dir, a, b and three files: six entries owned by root.
	n, err := fixOwners(nobody, nobody, dir, filepath.Join(dir, "missing"))
	if err != nil || n != 6 {
		t.Fatalf("first run changed %d (%v), want 6", n, err)
	}
	os.Lchown(filepath.Join(dir, "b/3"), 0, 0)
	if n, err := fixOwners(nobody, nobody, dir); err != nil || n != 1 {
		t.Errorf("second run changed %d (%v), want only the one wrong file", n, err)
	}
	if n, err := fixOwners(nobody, nobody, dir); err != nil || n != 0 {
		t.Errorf("third run changed %d (%v), want none", n, err)
	}
	fi, _ := os.Lstat(filepath.Join(dir, "b/3"))
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobody || st.Gid != nobody {
		t.Errorf("b/3 owned by %d:%d", st.Uid, st.Gid)
	}
}
