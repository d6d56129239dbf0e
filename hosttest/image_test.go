package hosttest

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The mirror comes from the host's apt sources, in either format; the
// security archive and disabled or commented entries are not it.
func TestDebianMirror(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	sec := write("security.sources", "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\n")
	disabled := write("off.sources", "Types: deb\nURIs: http://off.test/debian\nEnabled: no\n")
	src := write("src.sources", "Types: deb-src\nURIs: http://src.test/debian\n")
	deb822 := write("debian.sources", "# a comment\nTypes: deb\n# http://old.test/debian\nURIs: http://mirror.test/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.test/debian-security\n")
	list := write("sources.list", "# deb http://commented.test/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://list.test/debian bookworm main\n")
	other := write("other.list", "deb https://packages.example/apt stable main\n")
	for _, tc := range []struct {
		files []string
		want  string
	}{
		{[]string{sec, disabled, src, deb822, list}, "http://mirror.test/debian"},
		{[]string{other, list, deb822}, "http://list.test/debian"},
		{[]string{filepath.Join(dir, "missing.list"), deb822}, "http://mirror.test/debian"},
		{[]string{sec, disabled, src, other}, ""},
	} {
		got, err := DebianMirror(tc.files)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("%v: %q, %v; want %q", tc.files, got, err, tc.want)
		}
	}
}

func TestImageNameFollowsThePackageList(t *testing.T) {
	a := ImageName()
	saved := GuestPackages
	defer func() { GuestPackages = saved }()
	GuestPackages = append(append([]string(nil), saved...), "extra")
	if ImageName() == a {
		t.Error("a changed package list keeps the image name: the cached image would be reused")
	}
}

// What a killed debootstrap leaves mounted is unmounted, then removed; a
// plain RemoveAll would walk into the mounted /proc.
func TestRemoveUnmountedUnmountsFirst(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	dir := filepath.Join(t.TempDir(), "debootstrap-x")
	inner := filepath.Join(dir, "root", "proc")
	os.MkdirAll(inner, 0o755)
	if err := syscall.Mount("tmpfs", inner, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount tmpfs here: %v", err)
	}
	os.WriteFile(filepath.Join(inner, "f"), []byte("x"), 0o644)
	var log strings.Builder
	removeUnmounted(dir, &log)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		syscall.Unmount(inner, syscall.MNT_DETACH)
		t.Fatalf("%s still there (%v); log: %s", dir, err, log.String())
	}
	if m, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(m), inner) {
		t.Errorf("%s still mounted", inner)
	}
}
