// Package e2e runs the chatrelay binary as users do and drives it with real
// clients: Delta Chat core, and plain SMTP/IMAP where core will not go.
package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
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
	Domain string
	Host   string // every listener's address
	// Ports, by listener.
	IMAPS, IMAP, Submissions, Submission, SMTP, HTTPS, HTTP int

	dir     string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// startRelay runs `chatrelay serve --dev` with a fresh data directory and
// waits until IMAPS greets. It stops the relay on cleanup and, if the test
// failed, logs the end of the relay's output.
func startRelay(t *testing.T) *relay {
	t.Helper()
	bin := relayBinary(t)
	ports := freePorts(t, 7)
	r := &relay{
		Domain: "localhost", Host: "127.0.0.1",
		IMAPS: ports[0], IMAP: ports[1], Submissions: ports[2], Submission: ports[3], SMTP: ports[4], HTTPS: ports[5], HTTP: ports[6],
		dir:    t.TempDir(),
		exited: make(chan struct{}),
	}
	r.logPath = filepath.Join(r.dir, "relay.log")
	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	// The relay refuses new accounts while the load average is high; on a
	// busy test machine that is not what these tests are about.
	config := filepath.Join(r.dir, "chatrelay.toml")
	if err := os.WriteFile(config, []byte("max_load1 = 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := func(port int) string { return net.JoinHostPort(r.Host, strconv.Itoa(port)) }
	r.cmd = exec.Command(bin, "serve", "--dev", "--config", config,
		"--data", filepath.Join(r.dir, "data"),
		"--domain", r.Domain,
		"--listen-imaps", addr(r.IMAPS),
		"--listen-imap", addr(r.IMAP),
		"--listen-submissions", addr(r.Submissions),
		"--listen-submission", addr(r.Submission),
		"--listen-smtp", addr(r.SMTP),
		"--listen-https", addr(r.HTTPS),
		"--listen-http", addr(r.HTTP),
	)
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
			t.Errorf("the race detector found a data race in the relay; see %s", r.logPath)
		}
		if t.Failed() {
			t.Logf("relay command: %s", strings.Join(r.cmd.Args, " "))
			t.Logf("relay output (%s), last lines:\n%s", r.logPath, tail(r.logPath, 80))
		}
	})

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := r.waitReady(ctx); err != nil {
		t.Fatalf("relay not ready: %v\nrelay output:\n%s", err, tail(r.logPath, 40))
	}
	t.Logf("relay ready in %v (imaps %d, submissions %d, https %d)", time.Since(start).Round(time.Millisecond), r.IMAPS, r.Submissions, r.HTTPS)
	return r
}

// waitReady polls until the IMAPS listener completes a TLS handshake and
// greets with "* OK", the relay exits, or ctx ends.
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
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(r.Host, strconv.Itoa(r.IMAPS)))
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
