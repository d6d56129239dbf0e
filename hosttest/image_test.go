package hosttest

import (
	"os"
	"path/filepath"
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
