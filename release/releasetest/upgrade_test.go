package releasetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/install"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/release"
)

// procService stands in for systemd: the relay is a child process of the
// test, started from whatever binary is installed at bin.
type procService struct {
	bin, data string
	ports     map[string]string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  bytes.Buffer
}

func (p *procService) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return errors.New("already running")
	}
	args := []string{"serve", "--dev", "--data", p.data, "--log-level", "warn"}
	for name, addr := range p.ports {
		args = append(args, "--listen-"+name, addr)
	}
	cmd := exec.Command(p.bin, args...)
	cmd.Stderr = &p.log
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

func (p *procService) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
	return nil
}

// localHost is a Host on this machine: the binary in DIR/bin, the data in
// DIR/data, the service a child process.
type localHost struct {
	t   *testing.T
	dir string
	svc *procService
}

func newLocalHost(t *testing.T) *localHost {
	dir := t.TempDir()
	// The relay restarts minutes after its ports were picked: on an
	// address of its own in 127/8, no outgoing connection (whose source
	// is 127.0.0.1) can take one of them meanwhile.
	ip := fmt.Sprintf("127.%d.%d.%d", 100+rand.IntN(100), 1+rand.IntN(250), 1+rand.IntN(250))
	ports := map[string]string{}
	for _, n := range []string{"imaps", "imap", "submissions", "submission", "smtp", "https", "http", "metrics"} {
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		ports[n] = ln.Addr().String()
		ln.Close()
	}
	h := &localHost{t: t, dir: dir, svc: &procService{bin: filepath.Join(dir, "bin", "chatrelay"), data: filepath.Join(dir, "data"), ports: ports}}
	t.Cleanup(func() {
		h.svc.Stop(context.Background())
		if t.Failed() {
			t.Logf("relay log:\n%s", h.svc.log.String())
		}
	})
	return h
}

func (h *localHost) Install(ctx context.Context, binary string) error {
	if err := os.MkdirAll(filepath.Dir(h.svc.bin), 0o755); err != nil {
		return err
	}
	data, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	if err := os.WriteFile(h.svc.bin, data, 0o755); err != nil {
		return err
	}
	if err := h.svc.Start(ctx); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return install.WaitIMAP(wctx, h.IMAPAddr(), "", 200*time.Millisecond)
}

func (h *localHost) Upgrade(ctx context.Context, file, pubKey string) (string, error) {
	key, err := release.LoadKey(pubKey)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	o := install.UpgradeOptions{
		File: file, Key: key, Binary: h.svc.bin, DataDir: h.svc.data, Service: h.svc,
		ReleasesDir: filepath.Join(h.svc.data, "releases"),
		IMAPAddr:    h.svc.ports["imaps"], SubmissionAddr: h.svc.ports["submissions"],
		Timeout: 30 * time.Second, Out: &out,
	}
	var st control.Status
	if err := control.Call(ctx, relay.ControlSocketPath(h.svc.data), control.CmdStatus, nil, &st, nil); err == nil {
		o.Running = &st
	}
	err = install.Upgrade(ctx, o)
	return out.String(), err
}

func (h *localHost) run(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, h.svc.bin, args...).CombinedOutput()
	return string(out), err
}

func (h *localHost) Status(ctx context.Context) (string, error) {
	return h.run(ctx, "status", "--data", h.svc.data)
}
func (h *localHost) Version(ctx context.Context) (string, error) { return h.run(ctx, "version") }
func (h *localHost) IMAPAddr() string                            { return h.svc.ports["imaps"] }
func (h *localHost) HTTPSAddr() string                           { return h.svc.ports["https"] }
func (h *localHost) Domain() string                              { return "localhost" }

// TestUpgradeAndRollBack runs the upgrade scenario with the relay as a
// child process: v1 -> v2 keeps the data, v2 -> v3 (exits at start) rolls
// back to v2 by itself.
func TestUpgradeAndRollBack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three relays")
	}
	r := Build(t, t.TempDir(), "", "")
	RunUpgradeScenario(t, newLocalHost(t), r)
}
