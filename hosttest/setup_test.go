package hosttest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// EnableEnv must be 1 for the host tests to run; `make hosttest` sets it.
const EnableEnv = "CHATRELAY_HOSTTEST"

// CacheEnv names the directory the guest image is kept in (default
// .cache/hosttest in the repository).
const CacheEnv = "CHATRELAY_HOSTTEST_CACHE"

// MirrorEnv overrides the Debian mirror read from the host's apt sources.
const MirrorEnv = "CHATRELAY_HOSTTEST_MIRROR"

// env is what every host test shares: the image and two builds of the
// binary (the second one differs only in its version string).
type env struct {
	image      string
	bin, bin2  string
	work       string
	subnetBase int // the third octet of this run's addresses
}

var (
	envOnce sync.Once
	shared  *env
	envErr  error
	skipMsg string
)

// needHost skips the test unless host tests are enabled and possible, and
// returns the shared setup.
func needHost(t *testing.T) *env {
	t.Helper()
	if os.Getenv(EnableEnv) != "1" {
		t.Skipf("host tests boot Debian guests as root: run `make hosttest` (or set %s=1)", EnableEnv)
	}
	if os.Geteuid() != 0 {
		t.Skip("host tests need root (systemd-nspawn, veth links): run `sudo make hosttest`")
	}
	if miss := Missing(); len(miss) > 0 {
		t.Skipf("host tests need %s: `make hosttest` installs them as root", strings.Join(miss, ", "))
	}
	envOnce.Do(func() { shared, envErr = setupEnv() })
	if envErr != nil {
		t.Fatalf("host test setup: %v", envErr)
	}
	return shared
}

func setupEnv() (*env, error) {
	root, err := dctest.RepoRoot()
	if err != nil {
		return nil, err
	}
	cache := os.Getenv(CacheEnv)
	if cache == "" {
		cache = filepath.Join(root, ".cache", "hosttest")
	}
	mirror := os.Getenv(MirrorEnv)
	if mirror == "" {
		if mirror, err = DebianMirror(AptSourceFiles()); err != nil {
			return nil, fmt.Errorf("%w (set %s)", err, MirrorEnv)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	log := &lockedBuffer{}
	image, err := Image(ctx, cache, mirror, log)
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, tail(log.String(), 40))
	}
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.HasPrefix(l, "debootstrap took") {
			fmt.Println(l)
		}
	}
	fmt.Printf("guest image %s ready in %s\n", filepath.Base(image), time.Since(start).Round(time.Second))

	sweepStale(cache)
	work, err := os.MkdirTemp(cache, fmt.Sprintf("run-%d-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	e := &env{image: image, work: work, subnetBase: 20 + os.Getpid()%200}
	for i, v := range []string{"hosttest-a", "hosttest-b"} {
		out := filepath.Join(work, "chatrelay-"+v)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+v, "-o", out, "./cmd/chatrelay")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build chatrelay: %v: %s", err, b)
		}
		if i == 0 {
			e.bin = out
		} else {
			e.bin2 = out
		}
	}
	return e, nil
}

// sweepStale removes what a run killed before its cleanup (a test binary
// past its -timeout) left behind: its guest folders and the host ends of
// its links. Names carry the run's process id; only runs whose process is
// gone are swept.
func sweepStale(cache string) {
	alive := func(pid int) bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return err == nil
	}
	dirs, _ := filepath.Glob(filepath.Join(cache, "run-*-*"))
	for _, d := range dirs {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(d), "run-%d-", &pid); err == nil && pid != os.Getpid() && !alive(pid) {
			os.RemoveAll(d)
		}
	}
	links, _ := filepath.Glob("/sys/class/net/*")
	for _, l := range links {
		name := filepath.Base(l)
		var pid int
		var ok bool
		for _, pat := range []string{"ve-cr%05d", "vb-cr%05d", "crb%05d"} {
			if _, err := fmt.Sscanf(name, pat, &pid); err == nil {
				ok = true
				break
			}
		}
		// Only five digits of the id are in the name: sweep only when no
		// process ends in them.
		if !ok || pid == os.Getpid()%100000 || anyPIDEndsIn(pid) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		output(ctx, "ip", "link", "del", name)
		cancel()
	}
}

func anyPIDEndsIn(suffix int) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(p), "%d", &pid); err == nil && pid%100000 == suffix {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestMain(m *testing.M) {
	start := time.Now()
	code := m.Run()
	if shared != nil {
		os.RemoveAll(shared.work)
	}
	if os.Getenv(EnableEnv) == "1" {
		fmt.Printf("host tests: total %s\n", time.Since(start).Round(time.Second))
	}
	os.Exit(code)
}

// bootGuest boots a guest (name: at most 4 characters, made unique per
// run) on its own veth link (subnet 10.213.N.0/24, the
// host at .1, the guest at .2) and stops and removes it when t ends.
func bootGuest(t *testing.T, e *env, name string, n int) *Guest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	third := (e.subnetBase + n) % 250
	prefix := netip.MustParsePrefix(fmt.Sprintf("10.213.%d.0/24", third))
	name = fmt.Sprintf("cr%05d%s", os.Getpid()%100000, name)
	g, err := NewGuest(ctx, e.image, filepath.Join(e.work, name), name,
		netip.MustParseAddr(fmt.Sprintf("10.213.%d.2", third)),
		netip.MustParseAddr(fmt.Sprintf("10.213.%d.1", third)), prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Destroy(); err != nil {
			t.Errorf("stop guest %s: %v", name, err)
		}
	})
	start := time.Now()
	if err := g.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest %s booted in %s", name, time.Since(start).Round(time.Millisecond))
	return g
}
