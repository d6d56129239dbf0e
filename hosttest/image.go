// Package hosttest boots real Debian hosts for the relay's install tests
// (TESTING.md layer 8): a Debian bookworm root made once with debootstrap
// and kept as a tarball, booted with systemd-nspawn (systemd is PID 1 in
// the guest; the host needs no systemd), commands run inside with nsenter.
// The tests in this package run only when CHATRELAY_HOSTTEST=1 (set by
// `make hosttest`), as root, with debootstrap, systemd-nspawn and nsenter
// installed.
package hosttest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Suite is the Debian release the guests run.
const Suite = "bookworm"

// GuestPackages are installed on top of debootstrap's minbase: systemd as
// PID 1, its D-Bus, ip and nft for the network checks, and CA roots.
var GuestPackages = []string{"systemd", "systemd-sysv", "dbus", "iproute2", "nftables", "ca-certificates"}

// DebianMirror returns the URI of the Debian archive (the `debian` one,
// not debian-security) named in the host's apt sources: one-line `deb`
// entries in *.list files and deb822 stanzas in *.sources files. The
// mirror is read from the host so that the repository names none.
func DebianMirror(files []string) (string, error) {
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var uris []string
		if strings.HasSuffix(f, ".sources") {
			uris = deb822URIs(string(data))
		} else {
			uris = listURIs(string(data))
		}
		for _, u := range uris {
			if isDebianArchive(u) {
				return strings.TrimSuffix(u, "/"), nil
			}
		}
	}
	return "", fmt.Errorf("no Debian archive (a URI ending in /debian) in %s", strings.Join(files, ", "))
}

// AptSourceFiles are the host's apt source files, in the order apt reads
// them.
func AptSourceFiles() []string {
	files := []string{"/etc/apt/sources.list"}
	for _, pat := range []string{"/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources"} {
		m, _ := filepath.Glob(pat)
		files = append(files, m...)
	}
	return files
}

func isDebianArchive(u string) bool {
	u = strings.TrimSuffix(u, "/")
	return (strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") || strings.HasPrefix(u, "file:/")) &&
		strings.HasSuffix(u, "/debian")
}

// listURIs reads "deb [options] URI suite components" lines.
func listURIs(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		fields := strings.Fields(line)
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		fields = fields[1:]
		if strings.HasPrefix(fields[0], "[") {
			for len(fields) > 0 && !strings.HasSuffix(fields[0], "]") {
				fields = fields[1:]
			}
			if len(fields) > 0 {
				fields = fields[1:]
			}
		}
		if len(fields) > 0 {
			out = append(out, fields[0])
		}
	}
	return out
}

// deb822URIs reads the URIs of enabled stanzas of type deb.
func deb822URIs(s string) []string {
	var out []string
	for _, stanza := range strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if ok && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if !strings.Contains(" "+fields["types"]+" ", " deb ") || strings.EqualFold(fields["enabled"], "no") {
			continue
		}
		out = append(out, strings.Fields(fields["uris"])...)
	}
	return out
}

// ImageName is the cached tarball's file name: it changes with the suite
// and the package list, so a changed list builds a new image.
func ImageName() string {
	h := sha256.Sum256([]byte(Suite + " " + strings.Join(GuestPackages, ",") + " v1"))
	return "debian-" + Suite + "-" + hex.EncodeToString(h[:6]) + ".tar"
}

// Image returns the path of the guest image tarball in cacheDir, making
// it with debootstrap from mirror when it is not there yet.
func Image(ctx context.Context, cacheDir, mirror string, log io.Writer) (string, error) {
	tarball := filepath.Join(cacheDir, ImageName())
	if _, err := os.Stat(tarball); err == nil {
		return tarball, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(cacheDir, "debootstrap-")
	if err != nil {
		return "", err
	}
	// A debootstrap cut short leaves /proc and /sys mounted in the root:
	// unmount them before removing anything.
	defer removeUnmounted(work, log)
	root := filepath.Join(work, "root")
	start := time.Now()
	args := []string{"--variant=minbase", "--include=" + strings.Join(GuestPackages, ","), Suite, root, mirror}
	if err := run(ctx, log, "debootstrap", args...); err != nil {
		return "", fmt.Errorf("debootstrap from %s: %w", mirror, err)
	}
	fmt.Fprintf(log, "debootstrap took %s\n", time.Since(start).Round(time.Second))
	if err := prepareRoot(ctx, root, log); err != nil {
		return "", err
	}
	tmp := tarball + ".tmp"
	if err := run(ctx, log, "tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", tmp, "."); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tarball, os.Rename(tmp, tarball)
}

// prepareRoot sets up what every guest shares: systemd-networkd for the
// static address (no wait for "online": a guest has no uplink), no
// resolver, no getty on the console, an empty machine-id (one per boot).
func prepareRoot(ctx context.Context, root string, log io.Writer) error {
	if err := run(ctx, log, "chroot", root, "systemctl", "enable", "systemd-networkd.service"); err != nil {
		return err
	}
	if err := run(ctx, log, "chroot", root, "systemctl", "mask",
		"systemd-networkd-wait-online.service", "console-getty.service", "getty@.service", "apt-daily.timer", "apt-daily-upgrade.timer"); err != nil {
		return err
	}
	for _, f := range []string{"/etc/resolv.conf", "/etc/machine-id"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("guest\n"), 0o644)
}

// removeUnmounted unmounts every mount under dir, deepest first, and
// removes dir; it leaves dir in place when something stays mounted.
func removeUnmounted(dir string, log io.Writer) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		fmt.Fprintf(log, "not removing %s: %v\n", dir, err)
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			fmt.Fprintf(log, "not removing %s: unmount %s: %v\n", dir, m, err)
			return
		}
	}
	os.RemoveAll(dir)
}

// run runs a host command with its output into log. When ctx ends the
// command's whole process group is killed (debootstrap runs dpkg and
// maintainer scripts under it).
func run(ctx context.Context, log io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// output runs a host command and returns its combined output.
func output(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Missing names the host programs the tests need that are not installed.
func Missing() []string {
	var miss []string
	for _, p := range []string{"debootstrap", "systemd-nspawn", "nsenter", "ip", "tar"} {
		if _, err := exec.LookPath(p); err != nil {
			miss = append(miss, p)
		}
	}
	return miss
}

var errStopped = errors.New("guest stopped")
