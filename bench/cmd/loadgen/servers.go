package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/chatrelay/chatrelay/bench/load"
	"github.com/chatrelay/chatrelay/relay/control"
)

// server is one mail server under test, run from a private directory on
// loopback ports.
type server interface {
	Name() string
	// Setup writes config, certificate and the first users accounts.
	Setup(users int) error
	// Start runs the server and returns once IMAPS and submissions greet.
	Start(ctx context.Context) (time.Duration, error)
	Stop()
	Target() load.Target
	Group() *group
	// Size is the on-disk size of what runs, and what was counted.
	Size() (int64, string)
	// Measuring switches from set-up to measured configuration (maddy:
	// from a cheap password hash to its default, bcrypt). Takes effect at
	// the next Start.
	Measuring() error
	// Drain waits until mail accepted so far is delivered.
	Drain(ctx context.Context) error
	Notes() []string
}

// base is what every server shares.
type base struct {
	// passwords are the accounts' own, where the server made them.
	passwords []string
	name      string
	dir       string
	ports     map[string]int
	grp       *group
	cmd       *exec.Cmd
	exited    chan struct{}
	logFile   *os.File
}

func newBase(name, parent string, portNames ...string) (*base, error) {
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b := &base{name: name, dir: dir, ports: map[string]int{}, grp: newGroup(name)}
	ps, err := freePorts(len(portNames))
	if err != nil {
		return nil, err
	}
	for i, n := range portNames {
		b.ports[n] = ps[i]
	}
	if err := writeCert(dir); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *base) Name() string  { return b.name }
func (b *base) Group() *group { return b.grp }
func (b *base) addr(p string) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.ports[p]))
}
func (b *base) Target() load.Target {
	return load.Target{IMAPS: b.addr("imaps"), Submissions: b.addr("submissions"), Domain: "localhost", Passwords: b.passwords}
}

// run starts argv in the server's group with output to dir/NAME.log.
func (b *base) run(argv []string, env ...string) (*exec.Cmd, error) {
	if b.logFile == nil {
		f, err := os.OpenFile(filepath.Join(b.dir, b.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		b.logFile = f
	}
	argv = b.grp.wrap(argv)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = b.dir
	cmd.Stdout, cmd.Stderr = b.logFile, b.logFile
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if b.grp.dir == "" && b.grp.rootPID == 0 {
		b.grp.rootPID = cmd.Process.Pid
	}
	return cmd, nil
}

// startMain runs the server's main process and waits for both greetings.
func (b *base) startMain(ctx context.Context, argv []string, env ...string) (time.Duration, error) {
	start := time.Now()
	cmd, err := b.run(argv, env...)
	if err != nil {
		return 0, err
	}
	b.cmd, b.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(b.exited) }()
	if err := b.waitReady(ctx, b.exited); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (b *base) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	t := b.Target()
	var last error
	for i := 0; ; i++ {
		if last = greets(ctx, t.IMAPS, "* OK"); last == nil {
			if last = greets(ctx, t.Submissions, "220"); last == nil {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited before it was ready: %v (see %s)", b.name, last, filepath.Join(b.dir, b.name+".log"))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v", b.name, last)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func greets(ctx context.Context, addr, prefix string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: load.ClientTLS()}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, prefix) {
		return fmt.Errorf("greeting %q", line)
	}
	return nil
}

// stopMain sends SIGTERM to the main process, then kills what is left of
// the server's processes (by pid, from its group).
func (b *base) stopMain() {
	if b.cmd != nil && b.cmd.Process != nil {
		b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.exited:
		case <-time.After(20 * time.Second):
			b.cmd.Process.Kill()
			<-b.exited
		}
		b.cmd = nil
	}
	b.killRest()
}

func (b *base) killRest() {
	for range 3 {
		pids := b.grp.pids()
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGTERM)
		}
		time.Sleep(time.Second)
	}
	for _, p := range b.grp.pids() {
		syscall.Kill(p, syscall.SIGKILL)
	}
	time.Sleep(200 * time.Millisecond)
}

func (b *base) Measuring() error                { return nil }
func (b *base) Drain(ctx context.Context) error { return nil }

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeCert makes a self-signed ECDSA P-256 certificate for localhost,
// the kind chatrelay makes for itself, so that every server does the same
// TLS work.
func writeCert(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o644)
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// ---- chatrelay ----

type chatrelay struct {
	*base
	bin string
}

func newChatrelay(parent, bin string) (*chatrelay, error) {
	b, err := newBase("chatrelay", parent, "imaps", "imap", "submissions", "submission", "smtp", "https")
	if err != nil {
		return nil, err
	}
	return &chatrelay{base: b, bin: bin}, nil
}

func (s *chatrelay) Setup(users int) error {
	// The per-sender rate limit (60/min) would make P1 and P3 measure the
	// limit; the peers have none. The load guard is for production.
	cfg := "max_load1 = 0\nmin_free_memory = 0\nmin_free_disk = 0\n" +
		"send_rate_per_minute = 1000000000.0\nsend_rate_burst = 1000000000\n" +
		// Connection caps (IMAP 50 per address) would stop P4/P5, whose
		// clients all come from a few loopback addresses.
		"[limits]\nimap = 0\nimap_per_ip = 0\nsubmission = 0\nsubmission_per_ip = 0\nsmtp = 0\nsmtp_per_ip = 0\nhttps = 0\nhttps_per_ip = 0\n"
	return os.WriteFile(filepath.Join(s.dir, "chatrelay.toml"), []byte(cfg), 0o644)
}

func (s *chatrelay) Start(ctx context.Context) (time.Duration, error) {
	return s.startMain(ctx, []string{s.bin, "serve", "--dev", "--config", filepath.Join(s.dir, "chatrelay.toml"),
		"--data", filepath.Join(s.dir, "data"), "--domain", "localhost", "--log-level", "warn",
		"--listen-imaps", s.addr("imaps"), "--listen-imap", s.addr("imap"),
		"--listen-submissions", s.addr("submissions"), "--listen-submission", s.addr("submission"),
		"--listen-smtp", s.addr("smtp"), "--listen-https", s.addr("https"), "--listen-http", "",
	}, "GOMAXPROCS=")
}

func (s *chatrelay) Stop() { s.stopMain() }

// MakeAccounts adds accounts [0, n) through the control socket, as
// `chatrelay account add` does, so that the relay makes each password
// (stored as it stores those of /new and invites): the accounts a relay
// has in production.
func (s *chatrelay) MakeAccounts(ctx context.Context, n int) error {
	sock := filepath.Join(s.dir, "data", "control.sock")
	pw := make([]string, n)
	var firstErr error
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range next {
				var res control.PasswordResult
				err := control.Call(ctx, sock, control.CmdAccountAdd, control.PasswordArgs{Addr: s.Target().User(i)}, &res, nil)
				if err == nil && res.Password == "" {
					err = fmt.Errorf("%s: no password made", res.Addr)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				pw[i] = res.Password
			}
		})
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	s.passwords = pw
	return ctx.Err()
}

func (s *chatrelay) Size() (int64, string) {
	return fileSize(s.bin), "static binary (CGO_ENABLED=0, -trimpath -s -w, as make build)"
}

func (s *chatrelay) Notes() []string {
	return []string{"send_rate_per_minute raised (default 60/min per sender) and connection caps ([limits], 50 IMAP per address) off, so P1/P3/P4/P5 measure the server, not its limits"}
}

// ---- maddy ----

type maddy struct {
	*base
	bin      string
	measured bool
	users    int
}

func newMaddy(parent, bin string) (*maddy, error) {
	b, err := newBase("maddy", parent, "imaps", "submissions")
	if err != nil {
		return nil, err
	}
	return &maddy{base: b, bin: bin}, nil
}

func (s *maddy) Setup(users int) error {
	s.users = users
	conf := fmt.Sprintf(`hostname localhost
state_dir %[1]s/state
runtime_dir %[1]s/run
log %[1]s/maddy-server.log
tls file %[1]s/cert.pem %[1]s/key.pem

auth.pass_table local_authdb {
    table file %[1]s/users.table
}

storage.imapsql local_mailboxes {
    driver sqlite3
    dsn %[1]s/imapsql.db
}

msgpipeline local_routing {
    destination localhost {
        deliver_to &local_mailboxes
    }
    default_destination {
        reject 550 5.1.1 "User doesn't exist"
    }
}

submission tls://%[2]s {
    auth &local_authdb
    source localhost {
        destination localhost {
            deliver_to &local_routing
        }
        default_destination {
            reject 550 5.1.1 "User doesn't exist"
        }
    }
    default_source {
        reject 501 5.1.8 "Non-local sender domain"
    }
}

imap tls://%[3]s {
    auth &local_authdb
    storage &local_mailboxes
}
`, s.dir, s.addr("submissions"), s.addr("imaps"))
	for _, d := range []string{"state", "run"} {
		os.MkdirAll(filepath.Join(s.dir, d), 0o755)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "maddy.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	return s.writeUsers()
}

// writeUsers writes the password table: a cheap argon2 while accounts
// are set up (maddy creates its IMAP account at first login, and 10k
// bcrypt checks would take minutes), bcrypt (maddy's default, cost 10)
// once measuring.
func (s *maddy) writeUsers() error {
	var hash string
	if s.measured {
		h, err := bcrypt.GenerateFromPassword([]byte(load.Password), bcrypt.DefaultCost)
		if err != nil {
			return err
		}
		hash = "bcrypt:" + string(h)
	} else {
		hash = "argon2:" + cheapArgon2(load.Password)
	}
	f, err := os.Create(filepath.Join(s.dir, "users.table"))
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	t := s.Target()
	for i := range s.users {
		fmt.Fprintf(w, "%s: %s\n", t.User(i), hash)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func (s *maddy) Measuring() error {
	s.measured = true
	return s.writeUsers()
}

func (s *maddy) Start(ctx context.Context) (time.Duration, error) {
	return s.startMain(ctx, []string{s.bin, "--config", filepath.Join(s.dir, "maddy.conf"), "run"})
}

func (s *maddy) Stop() { s.stopMain() }

func (s *maddy) Size() (int64, string) {
	return fileSize(s.bin), "binary (cgo for SQLite, -trimpath -s -w)"
}

func (s *maddy) Notes() []string {
	return []string{"default config's submission/smtp `limits` (50 msg/s) left out, as chatrelay's rate limit is raised",
		"passwords bcrypt cost 10 (maddy's default); storage imapsql on SQLite (default)"}
}

// ---- Postfix + Dovecot ----

type postfixDovecot struct {
	*base
	dovecot *exec.Cmd
	dovExit chan struct{}
}

func newPostfixDovecot(parent string) (*postfixDovecot, error) {
	b, err := newBase("postfix-dovecot", parent, "imaps", "submissions", "lmtp")
	if err != nil {
		return nil, err
	}
	return &postfixDovecot{base: b}, nil
}

func (s *postfixDovecot) Setup(users int) error {
	d := s.dir
	for _, sub := range []string{"pf-conf", "pf-spool", "pf-data", "dc-run", "dc-state", "mail"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return err
		}
	}
	// Dovecot puts Postfix's SASL socket into the spool's private/.
	priv := filepath.Join(d, "pf-spool", "private")
	os.MkdirAll(priv, 0o700)
	if err := chownUser(priv, "postfix"); err != nil {
		return err
	}
	if err := chownUser(filepath.Join(d, "pf-data"), "postfix"); err != nil {
		return err
	}
	if err := chownUser(filepath.Join(d, "mail"), "nobody"); err != nil {
		return err
	}
	// Dovecot: the reference chatmail relay's service limits (one imap
	// process per connection, imap-login in high-security mode) with
	// passwd-file users (SHA512-CRYPT, as chatmaild stores them).
	hash, err := exec.Command("openssl", "passwd", "-6", load.Password).Output()
	if err != nil {
		return fmt.Errorf("openssl passwd: %w", err)
	}
	f, err := os.Create(filepath.Join(d, "users"))
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	t := s.Target()
	for i := range users {
		fmt.Fprintf(w, "%s:{SHA512-CRYPT}%s::::::\n", t.User(i), strings.TrimSpace(string(hash)))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	f.Close()
	dh := ""
	if _, err := os.Stat("/usr/share/dovecot/dh.pem"); err == nil {
		dh = "ssl_dh = </usr/share/dovecot/dh.pem"
	}
	dconf := fmt.Sprintf(`base_dir = %[1]s/dc-run
state_dir = %[1]s/dc-state
log_path = %[1]s/dovecot.log
listen = 127.0.0.1
protocols = imap lmtp
ssl = required
ssl_cert = <%[1]s/cert.pem
ssl_key = <%[1]s/key.pem
ssl_min_protocol = TLSv1.2
%[4]s
auth_mechanisms = plain
default_client_limit = 60000
default_vsz_limit = 256M
mail_uid = nobody
mail_gid = nogroup
first_valid_uid = 1
mail_location = maildir:%[1]s/mail/%%d/%%n
imap_capability = +XCHATMAIL
passdb {
  driver = passwd-file
  args = %[1]s/users
}
userdb {
  driver = passwd-file
  args = %[1]s/users
}
protocol imap {
  mail_max_userip_connections = 100000
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = %[2]d
    ssl = yes
  }
  service_count = 1
  process_limit = 60000
  process_min_avail = 10
}
service imap {
  process_limit = 60000
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[3]d
  }
}
service auth {
  unix_listener %[1]s/pf-spool/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
`, d, s.ports["imaps"], s.ports["lmtp"], dh)
	if err := os.WriteFile(filepath.Join(d, "dovecot.conf"), []byte(dconf), 0o644); err != nil {
		return err
	}
	// Postfix: only submissions (implicit TLS, SASL through Dovecot),
	// every local recipient delivered over LMTP to Dovecot; no chroot.
	main := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/pf-spool
data_directory = %[1]s/pf-data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.bench.test
mydomain = bench.test
myorigin = localhost
mydestination = localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
local_recipient_maps =
local_transport = lmtp:inet:127.0.0.1:%[2]d
alias_maps =
alias_database =
relayhost =
smtpd_tls_chain_files = %[1]s/key.pem, %[1]s/cert.pem
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
maillog_file = %[1]s/postfix.log
maillog_file_prefixes = %[1]s
biff = no
append_dot_mydomain = no
message_size_limit = 31457280
`, d, s.ports["lmtp"])
	master := fmt.Sprintf(`127.0.0.1:%d inet n - n - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, s.ports["submissions"])
	if err := os.WriteFile(filepath.Join(d, "pf-conf", "main.cf"), []byte(main), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, "pf-conf", "master.cf"), []byte(master), 0o644)
}

func chownUser(path, user string) error {
	out, err := exec.Command("id", "-u", user).Output()
	if err != nil {
		return fmt.Errorf("user %s: %w", user, err)
	}
	uid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	out, err = exec.Command("id", "-g", user).Output()
	if err != nil {
		return fmt.Errorf("user %s: %w", user, err)
	}
	gid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return os.Chown(path, uid, gid)
}

func (s *postfixDovecot) Start(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	cmd, err := s.run([]string{"dovecot", "-F", "-c", filepath.Join(s.dir, "dovecot.conf")})
	if err != nil {
		return 0, err
	}
	s.dovecot, s.dovExit = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(s.dovExit) }()
	pf, err := s.run([]string{"postfix", "-c", filepath.Join(s.dir, "pf-conf"), "start"})
	if err != nil {
		return 0, err
	}
	pfErr := make(chan error, 1)
	go func() { pfErr <- pf.Wait() }()
	if err := s.waitReady(ctx, s.dovExit); err != nil {
		return 0, err
	}
	select {
	case err := <-pfErr:
		if err != nil {
			return 0, fmt.Errorf("postfix start: %v", err)
		}
	case <-time.After(30 * time.Second):
	}
	return time.Since(start), nil
}

func (s *postfixDovecot) Stop() {
	stop := exec.Command("postfix", "-c", filepath.Join(s.dir, "pf-conf"), "stop")
	stop.Stdout, stop.Stderr = s.logFile, s.logFile
	stop.Run()
	if s.dovecot != nil {
		s.dovecot.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.dovExit:
		case <-time.After(20 * time.Second):
			s.dovecot.Process.Kill()
			<-s.dovExit
		}
		s.dovecot = nil
	}
	s.killRest()
}

// Drain waits until Postfix's queue is empty: submission answers 250 once
// the message is queued, and delivery to Dovecot follows.
func (s *postfixDovecot) Drain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		n := 0
		for _, q := range []string{"maildrop", "incoming", "active", "deferred"} {
			filepath.WalkDir(filepath.Join(s.dir, "pf-spool", q), func(_ string, e fs.DirEntry, err error) error {
				if err == nil && e.Type().IsRegular() {
					n++
				}
				return nil
			})
		}
		if n == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("postfix queue not empty after 120s")
}

func (s *postfixDovecot) Size() (int64, string) {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Installed-Size}\n", "postfix", "dovecot-core", "dovecot-imapd", "dovecot-lmtpd").Output()
	if err != nil {
		return 0, "dpkg-query failed"
	}
	var kib int64
	for _, f := range strings.Fields(string(out)) {
		v, _ := strconv.ParseInt(f, 10, 64)
		kib += v
	}
	return kib * 1024, "Debian packages postfix + dovecot-core + dovecot-imapd + dovecot-lmtpd, installed size (shared libraries they link not counted)"
}

func (s *postfixDovecot) Notes() []string {
	return []string{
		"Dovecot service limits as the reference chatmail relay (imap-login service_count=1, one imap process per connection), limits raised to 60000",
		"no encryption filter (chatmail's filtermail) and no zlib/quota plugins: the peer does less work per message than the reference relay",
		"passwd-file users with SHA512-CRYPT; auth cache off (Dovecot's default, as the reference relay)",
	}
}
