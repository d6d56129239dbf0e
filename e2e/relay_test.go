// Package e2e runs the chatrelay binary as users do and drives it with real
// clients: Delta Chat core, and plain SMTP/IMAP where core will not go.
package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// RelayBinaryEnv names a prebuilt chatrelay binary to test instead of
// building ./cmd/chatrelay.
const RelayBinaryEnv = "CHATRELAY_BINARY"

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// relayBinary builds cmd/chatrelay once per test run, or skips the test
// when it does not build (yet).
func relayBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(RelayBinaryEnv); p != "" {
		return p
	}
	build.once.Do(func() {
		root, err := dctest.RepoRoot()
		if err != nil {
			build.err = err
			return
		}
		gobin, err := exec.LookPath("go")
		if err != nil {
			build.err = err
			return
		}
		build.dir, build.err = os.MkdirTemp("", "chatrelay-e2e-")
		if build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "chatrelay")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		args := []string{"build", "-o", build.bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.CommandContext(ctx, gobin, append(args, "./cmd/chatrelay")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/chatrelay: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Skipf("relay binary not available, skipping: %v", build.err)
	}
	return build.bin
}

// relay is one chatrelay process in dev mode on loopback ports.
type relay struct {
	Domain string // the mail domain: "localhost", or "[IP]" in IP mode
	Host   string // every listener's address
	// Ports, by listener; 0 for a listener that is turned off.
	IMAPS, IMAP, Submissions, Submission, SMTP, HTTPS, HTTP int
	// Metrics is the Prometheus endpoint's port, on 127.0.0.1.
	Metrics int
	// TURN is the built-in TURN server's port (UDP and TCP), on Host.
	TURN int

	dir     string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// relayOptions changes how startRelayWith runs the relay.
type relayOptions struct {
	// IP runs an IP-only relay, `serve --dev --ip IP`: domain [IP], every
	// listener on IP at the fixed dev ports, peers reached on their dev
	// ports. The test skips when those ports are taken (by a developer's
	// own dev relay, say).
	IP string
	// Domain runs the relay for this mail domain on the standard ports
	// (993, 143, 465, 587, 25, 443, 80) of 127.0.0.1: only for a test
	// inside a network namespace of its own, whose hosts file names the
	// domain.
	Domain string
	// OnlyHTTPS turns off the dedicated IMAP and submission listeners, so
	// IMAP and SMTP are served only over the HTTPS listener (by ALPN).
	OnlyHTTPS bool
	// LogLevel is --log-level; "" keeps the relay's default.
	LogLevel string
	// Config is added to the config file (TOML).
	Config string
	// ConfigFor, if set, is added to the config file too, made once the
	// relay's ports are known.
	ConfigFor func(r *relay) string
}

// devPorts are the fixed ports of `serve --dev`.
var devPorts = struct{ IMAPS, IMAP, Submissions, Submission, SMTP, HTTPS int }{1993, 1143, 1465, 1587, 1025, 1443}

// startRelay runs `chatrelay serve --dev` with a fresh data directory on
// free 127.0.0.1 ports and waits until IMAPS greets.
func startRelay(t *testing.T) *relay {
	t.Helper()
	return startRelayWith(t, relayOptions{})
}

// startRelayWith runs `chatrelay serve --dev` as opts say, with a fresh data
// directory, and waits until IMAPS (or, with OnlyHTTPS, HTTPS) answers. It
// stops the relay on cleanup and, if the test failed, logs the end of the
// relay's output.
func startRelayWith(t *testing.T, opts relayOptions) *relay {
	t.Helper()
	bin := relayBinary(t)
	r := &relay{
		dir:    t.TempDir(),
		exited: make(chan struct{}),
	}
	if keep := os.Getenv(dctest.LogDirEnv); keep != "" {
		// Kept after the test, beside core's files, for reading the log.
		dir, err := os.MkdirTemp(keep, "relay-"+strings.ReplaceAll(t.Name(), "/", "_")+"-")
		if err != nil {
			t.Fatal(err)
		}
		r.dir = dir
		t.Logf("the relay's files are in %s", dir)
	}
	// The relay refuses new accounts while the load average is high, and
	// past a budget per address; every test client here comes from one
	// loopback address, and that is not what these tests are about.
	config := filepath.Join(r.dir, "chatrelay.toml")
	// Metrics go to a free port, away from the dev default (9150) that
	// every dev relay would share.
	r.Metrics = freePorts(t, 1)[0]
	args := []string{"serve", "--dev", "--config", config, "--data", filepath.Join(r.dir, "data"),
		"--listen-metrics", net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Metrics))}
	addr := func(port int) string {
		if port == 0 {
			return "" // an empty address turns the listener off
		}
		return net.JoinHostPort(r.Host, strconv.Itoa(port))
	}
	if opts.IP != "" {
		r.Domain, r.Host = "["+opts.IP+"]", opts.IP
		p := devPorts
		r.IMAPS, r.IMAP, r.Submissions, r.Submission, r.SMTP, r.HTTPS = p.IMAPS, p.IMAP, p.Submissions, p.Submission, p.SMTP, p.HTTPS
		if err := portsFree(r.Host, p.IMAPS, p.IMAP, p.Submissions, p.Submission, p.SMTP, p.HTTPS); err != nil {
			t.Skipf("the dev ports on %s are not free (a dev relay of your own running?), skipping: %v", r.Host, err)
		}
		args = append(args, "--ip", opts.IP)
	} else if opts.Domain != "" {
		r.Domain, r.Host = opts.Domain, "127.0.0.1"
		r.IMAPS, r.IMAP, r.Submissions, r.Submission, r.SMTP, r.HTTPS, r.HTTP = 993, 143, 465, 587, 25, 443, 80
		args = append(args,
			"--domain", r.Domain,
			"--listen-imaps="+addr(r.IMAPS),
			"--listen-imap="+addr(r.IMAP),
			"--listen-submissions="+addr(r.Submissions),
			"--listen-submission="+addr(r.Submission),
			"--listen-smtp="+addr(r.SMTP),
			"--listen-https="+addr(r.HTTPS),
			"--listen-http="+addr(r.HTTP),
		)
	} else {
		r.Domain, r.Host = "localhost", "127.0.0.1"
		ports := freePorts(t, 7)
		r.IMAPS, r.IMAP, r.Submissions, r.Submission, r.SMTP, r.HTTPS, r.HTTP = ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6]
		if opts.OnlyHTTPS {
			r.IMAPS, r.IMAP, r.Submissions, r.Submission = 0, 0, 0, 0
		}
		args = append(args,
			"--domain", r.Domain,
			"--listen-imaps="+addr(r.IMAPS),
			"--listen-imap="+addr(r.IMAP),
			"--listen-submissions="+addr(r.Submissions),
			"--listen-submission="+addr(r.Submission),
			"--listen-smtp="+addr(r.SMTP),
			"--listen-https="+addr(r.HTTPS),
			"--listen-http="+addr(r.HTTP),
		)
	}
	// TURN on a free port too, away from the dev default (3478).
	r.TURN = freePorts(t, 1)[0]
	args = append(args, "--listen-turn="+net.JoinHostPort(r.Host, strconv.Itoa(r.TURN)))
	extra := opts.Config
	if opts.ConfigFor != nil {
		extra += "\n" + opts.ConfigFor(r)
	}
	if err := os.WriteFile(config, []byte("max_load1 = 0\nnew_accounts_burst = 1000\n"+extra+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if opts.LogLevel != "" {
		args = append(args, "--log-level", opts.LogLevel)
	}
	r.logPath = filepath.Join(r.dir, "relay.log")
	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Stdout = logf
	r.cmd.Stderr = logf
	start := time.Now()
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start relay: %v", err)
	}
	go func() {
		r.cmd.Wait()
		logf.Close()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.stop()
		if log, err := os.ReadFile(r.logPath); err == nil && strings.Contains(string(log), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in the relay %s; see %s. The report:\n%s", r.Domain, r.logPath, raceReports(string(log), 300))
		}
		if t.Failed() {
			t.Logf("relay command: %s", strings.Join(r.cmd.Args, " "))
			t.Logf("relay %s output (%s), last lines:\n%s", r.Domain, r.logPath, tail(r.logPath, 80))
		}
	})

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := r.waitReady(ctx); err != nil {
		t.Fatalf("relay not ready: %v\nrelay output:\n%s", err, tail(r.logPath, 40))
	}
	t.Logf("relay %s ready in %v (imaps %d, submissions %d, https %d)", r.Domain, time.Since(start).Round(time.Millisecond), r.IMAPS, r.Submissions, r.HTTPS)
	return r
}

// portsFree reports an error naming the first port on host that cannot be
// listened on now.
func portsFree(host string, ports ...int) error {
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			return err
		}
		l.Close()
	}
	return nil
}

// waitReady polls until IMAP over TLS completes a handshake and greets with
// "* OK", the relay exits, or ctx ends.
func (r *relay) waitReady(ctx context.Context) error {
	var last error
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 250*time.Millisecond) {
		if last = r.greets(ctx); last == nil {
			return nil
		}
		select {
		case <-r.exited:
			return fmt.Errorf("relay exited (%v) before greeting on IMAPS: %v", r.cmd.ProcessState, last)
		case <-ctx.Done():
			return fmt.Errorf("%w; last attempt: %v", ctx.Err(), last)
		case <-time.After(delay):
		}
	}
}

func (r *relay) greets(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// With the IMAP listeners off, IMAP is there only by ALPN on HTTPS.
	port, alpn := r.IMAPS, []string(nil)
	if port == 0 {
		port, alpn = r.HTTPS, []string{"imap"}
	}
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: alpn}}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(r.Host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("greeting %q, want * OK", strings.TrimSpace(line))
	}
	return nil
}

// stop asks the relay to shut down and kills it after ten seconds.
func (r *relay) stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
}

// Transport is the manual setting core needs for an account on this relay:
// implicit TLS on IMAPS and submissions, self-signed certificate accepted.
func (r *relay) Transport(addr, password string) dctest.TransportParams {
	return dctest.TransportParams{
		Addr:              addr,
		Password:          password,
		IMAPServer:        r.Host,
		IMAPPort:          r.IMAPS,
		IMAPSecurity:      dctest.SecuritySSL,
		SMTPServer:        r.Host,
		SMTPPort:          r.Submissions,
		SMTPSecurity:      dctest.SecuritySSL,
		CertificateChecks: dctest.CertsAcceptInvalid,
	}
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.SplitAfter(string(data), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

// metric sums the samples of a Prometheus metric whose label set contains
// every one of labels (`kind="out"`), read from the relay's metrics
// endpoint.
func (r *relay) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Metrics)) + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	var sum float64
	for line := range strings.Lines(string(body)) {
		series, value, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || strings.HasPrefix(series, "#") {
			continue
		}
		n, lbls, _ := strings.Cut(series, "{")
		if n != name || !containsAll(lbls, labels) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// log returns everything the relay has written so far.
func (r *relay) log(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// raceReports returns the race detector's reports in a relay's output,
// at most max lines.
func raceReports(log string, max int) string {
	var out []string
	in := false
	for line := range strings.Lines(log) {
		if strings.HasPrefix(line, "WARNING: DATA RACE") {
			in = true
		}
		if in {
			out = append(out, line)
			if len(out) >= max {
				break
			}
		}
		if strings.HasPrefix(line, "==================") && in && len(out) > 1 {
			in = false
		}
	}
	return strings.Join(out, "")
}
