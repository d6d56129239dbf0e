package hosttest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A Guest is one Debian root booted with systemd-nspawn. Its network is a
// veth pair (host side HostIf) or a port on a host bridge; it has a static
// address from a 10-host0.network file, no default route and no resolver.
type Guest struct {
	Name string // machine name, at most 11 characters (the veth is ve-Name)
	Dir  string // the guest's root directory on the host
	// Addr is the guest's address, HostAddr the host's on the same link
	// (on a bridge: the bridge's), both in Prefix.
	Addr, HostAddr netip.Addr
	Prefix         netip.Prefix
	// Bridge, when set, puts the guest on this host bridge instead of a
	// veth pair of its own.
	Bridge string

	mu      sync.Mutex
	cmd     *exec.Cmd
	console *lockedBuffer
	leader  int
	exited  chan struct{}
	exitErr error
}

// HostIf is the host side of the guest's veth pair (on a bridge, the
// port systemd-nspawn adds to it).
func (g *Guest) HostIf() string {
	if g.Bridge != "" {
		return "vb-" + g.Name
	}
	return "ve-" + g.Name
}

// NewGuest unpacks the image into dir and writes the guest's network
// configuration.
func NewGuest(ctx context.Context, image, dir, name string, addr, hostAddr netip.Addr, prefix netip.Prefix) (*Guest, error) {
	if len(name) > 11 {
		return nil, fmt.Errorf("guest name %q: at most 11 characters", name)
	}
	g := &Guest{Name: name, Dir: dir, Addr: addr, HostAddr: hostAddr, Prefix: prefix}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if _, err := output(ctx, "tar", "--numeric-owner", "--xattrs", "-C", dir, "-xf", image); err != nil {
		return nil, err
	}
	// No Gateway=: the guest reaches its link and nothing else.
	network := fmt.Sprintf("[Match]\nName=host0\n\n[Network]\nAddress=%s/%d\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nLLMNR=no\nMulticastDNS=no\n",
		addr, prefix.Bits())
	if err := os.MkdirAll(filepath.Join(dir, "etc/systemd/network"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/systemd/network/10-host0.network"), []byte(network), 0o644); err != nil {
		return nil, err
	}
	return g, nil
}

// Boot starts the guest and waits until systemd reports the system up.
func (g *Guest) Boot(ctx context.Context) error {
	g.mu.Lock()
	args := []string{
		"--boot", "--directory=" + g.Dir, "--machine=" + g.Name,
		"--register=no", "--keep-unit", "--console=pipe",
		"--resolv-conf=off", "--timezone=off", "--link-journal=no",
	}
	if g.Bridge != "" {
		args = append(args, "--network-bridge="+g.Bridge)
	} else {
		args = append(args, "--network-veth")
	}
	cmd := exec.Command("systemd-nspawn", args...)
	g.console = &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = g.console, g.console
	cmd.Stdin = nil
	// Its own process group: a stuck guest is killed as a whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		g.mu.Unlock()
		return fmt.Errorf("systemd-nspawn: %w", err)
	}
	g.cmd, g.leader, g.exited = cmd, 0, make(chan struct{})
	exited := g.exited
	go func() {
		err := cmd.Wait()
		g.mu.Lock()
		g.exitErr = err
		g.mu.Unlock()
		close(exited)
	}()
	g.mu.Unlock()

	leader, err := g.findLeader(ctx, cmd.Process.Pid, exited)
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.leader = leader
	g.mu.Unlock()
	if g.Bridge == "" {
		if err := g.hostLink(ctx); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	// systemctl fails until PID 1 has made its private socket.
	private := fmt.Sprintf("/proc/%d/root/run/systemd/private", leader)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(private); err == nil {
			break
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("guest %s: systemd did not come up within 90s; console:\n%s", g.Name, g.Console())
		case <-exited:
			return fmt.Errorf("guest %s: systemd-nspawn exited (%v); console:\n%s", g.Name, g.exitError(), g.Console())
		case <-tick.C:
		}
	}
	state, err := g.Run(wctx, "systemctl", "is-system-running", "--wait")
	state = strings.TrimSpace(state)
	if state == "degraded" {
		failed, _ := g.Run(ctx, "systemctl", "--failed", "--no-legend", "--plain")
		return fmt.Errorf("guest %s booted degraded: %s", g.Name, strings.TrimSpace(failed))
	}
	if state != "running" {
		return fmt.Errorf("guest %s did not boot (state %q, %v); console:\n%s", g.Name, state, err, g.Console())
	}
	return nil
}

// findLeader waits for systemd-nspawn's child, the guest's PID 1.
func (g *Guest) findLeader(ctx context.Context, nspawn int, exited <-chan struct{}) (int, error) {
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if pid := childNamed(nspawn, "systemd"); pid != 0 {
			return pid, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			return 0, fmt.Errorf("guest %s: no systemd after 60s; console:\n%s", g.Name, g.Console())
		case <-exited:
			return 0, fmt.Errorf("guest %s: systemd-nspawn exited (%v); console:\n%s", g.Name, g.exitError(), g.Console())
		case <-tick.C:
		}
	}
}

func childNamed(pid int, comm string) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		data, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(data)) {
			c, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			name, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c))
			if strings.TrimSpace(string(name)) == comm {
				return c
			}
		}
	}
	return 0
}

// hostLink puts the host's address on the host side of the veth pair.
func (g *Guest) hostLink(ctx context.Context) error {
	cidr := fmt.Sprintf("%s/%d", g.HostAddr, g.Prefix.Bits())
	if _, err := output(ctx, "ip", "addr", "replace", cidr, "dev", g.HostIf()); err != nil {
		return err
	}
	_, err := output(ctx, "ip", "link", "set", g.HostIf(), "up")
	return err
}

// Leader is the guest's PID 1 as the host sees it.
func (g *Guest) Leader() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.leader
}

func (g *Guest) exitError() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.exitErr
}

// Console is what the guest wrote to its console.
func (g *Guest) Console() string {
	if g.console == nil {
		return ""
	}
	return g.console.String()
}

// guestEnv is the environment of commands run in the guest: not the
// host's (no proxy settings, no host PATH).
var guestEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"}

// Command returns a command that runs in every namespace of the guest.
func (g *Guest) Command(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"-t", strconv.Itoa(g.Leader()), "-a", "--"}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.Env = guestEnv
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs a command in the guest and returns its combined output.
func (g *Guest) Run(ctx context.Context, args ...string) (string, error) {
	if g.Leader() == 0 {
		return "", errStopped
	}
	var out bytes.Buffer
	cmd := g.Command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("in guest %s: %s: %w", g.Name, strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// RunInput is Run with stdin.
func (g *Guest) RunInput(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := g.Command(ctx, args...)
	cmd.Stdin = stdin
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("in guest %s: %s: %w", g.Name, strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// Reboot reboots the guest: systemd-nspawn exits when its guest reboots,
// and the guest is booted again from the same root.
func (g *Guest) Reboot(ctx context.Context) error {
	if err := g.waitExit(ctx, "reboot"); err != nil {
		return err
	}
	return g.Boot(ctx)
}

// Stop powers the guest off, and kills it when it does not stop within
// 30 seconds.
func (g *Guest) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	return g.waitExit(ctx, "poweroff")
}

func (g *Guest) waitExit(ctx context.Context, verb string) error {
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
	default:
		// --no-block: the answer would come from a system going away.
		g.Run(ctx, "systemctl", "--no-block", verb)
	}
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	var err error
	select {
	case <-exited:
	case <-t.C:
		err = fmt.Errorf("guest %s did not %s within 30s; killed", g.Name, verb)
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	g.mu.Lock()
	g.cmd, g.leader = nil, 0
	g.mu.Unlock()
	return err
}

// Destroy stops the guest if it runs and removes its root, and what a
// killed systemd-nspawn could not remove itself: the host side of its veth
// and its mount propagation folder.
func (g *Guest) Destroy() error {
	err := g.Stop()
	if _, lerr := os.Stat("/sys/class/net/" + g.HostIf()); lerr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, lerr := output(ctx, "ip", "link", "del", g.HostIf()); err == nil {
			err = lerr
		}
	}
	os.RemoveAll("/run/systemd/nspawn/propagate/" + g.Name)
	if rerr := os.RemoveAll(g.Dir); err == nil {
		err = rerr
	}
	return err
}

// WriteFile writes a file into the guest's root from the host.
func (g *Guest) WriteFile(path string, data []byte, mode os.FileMode) error {
	p := filepath.Join(g.Dir, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// CopyIn copies a host file into the guest's root.
func (g *Guest) CopyIn(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return g.WriteFile(dst, data, mode)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 {
		return len(p), nil // enough to see why a boot failed
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
