package hosttest

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/release"
	"github.com/chatrelay/chatrelay/release/releasetest"
)

// guestHost runs the releases' upgrade scenario (SPEC section 13) on a
// booted guest: the release files are copied in as an operator would carry
// them, and `install`, `upgrade`, `status` and `version` run there under
// systemd.
type guestHost struct {
	t  *testing.T
	g  *Guest
	ip string
}

// copyRelease copies a release file and its signature to /root.
func (h *guestHost) copyRelease(file string) (string, error) {
	dst := "/root/" + filepath.Base(file)
	if err := h.g.CopyIn(file, dst, 0o755); err != nil {
		return "", err
	}
	if err := h.g.CopyIn(file+release.SigSuffix, dst+release.SigSuffix, 0o644); err != nil {
		return "", err
	}
	return dst, nil
}

func (h *guestHost) Install(ctx context.Context, binary string) error {
	bin, err := h.copyRelease(binary)
	if err != nil {
		return err
	}
	out, err := h.g.Run(ctx, bin, "install", "--ip", h.ip, "--yes")
	h.t.Logf("install %s:\n%s", filepath.Base(binary), out)
	if err != nil {
		return fmt.Errorf("install: %v", err)
	}
	relaxLoadGuard(h.t, h.g, h.ip)
	return nil
}

func (h *guestHost) Upgrade(ctx context.Context, file, pubKey string) (string, error) {
	bin, err := h.copyRelease(file)
	if err != nil {
		return "", err
	}
	if err := h.g.CopyIn(pubKey, "/root/release.pub", 0o644); err != nil {
		return "", err
	}
	out, err := h.g.Run(ctx, "/usr/local/bin/chatrelay", "upgrade", bin, "--key", "/root/release.pub")
	h.t.Logf("upgrade to %s:\n%s", filepath.Base(file), out)
	return out, err
}

func (h *guestHost) run(ctx context.Context, args ...string) (string, error) {
	return h.g.Run(ctx, append([]string{"/usr/local/bin/chatrelay"}, args...)...)
}

func (h *guestHost) Status(ctx context.Context) (string, error) { return h.run(ctx, "status") }
func (h *guestHost) Version(ctx context.Context) (string, error) {
	return h.run(ctx, "version")
}
func (h *guestHost) IMAPAddr() string  { return net.JoinHostPort(h.ip, "993") }
func (h *guestHost) HTTPSAddr() string { return net.JoinHostPort(h.ip, "443") }
func (h *guestHost) Domain() string    { return "[" + h.ip + "]" }

// upgradeOnGuest installs v1, upgrades to v2 (the data made under v1
// survives) and then "upgrades" to a v3 that exits at start: the relay
// must come back on v2 by itself and `status` must say so.
func upgradeOnGuest(t *testing.T, g *Guest, ip string) {
	r := releasetest.Build(t, t.TempDir(), "linux", runtime.GOARCH)
	releasetest.RunUpgradeScenario(t, &guestHost{t: t, g: g, ip: ip}, r)
	mustActive(t, g)
	if v := guestRun(t, g, "/usr/local/bin/chatrelay", "version"); !strings.Contains(v, r.Versions[1]) {
		t.Errorf("after the rollback the installed binary says %q, want %s", v, r.Versions[1])
	}
	if _, err := relayCmd(t, g, "", "uninstall", "--purge", "--yes"); err != nil {
		t.Fatal(err)
	}
}
