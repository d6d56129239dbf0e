package install

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
)

// OSRelease is what /etc/os-release says about the system.
type OSRelease struct {
	ID        string   // "debian", "ubuntu"
	IDLike    []string // "debian" on Ubuntu and derivatives
	Pretty    string   // "Debian GNU/Linux 12 (bookworm)"
	VersionID string
}

// ReadOSRelease parses an os-release file (os-release(5)).
func ReadOSRelease(path string) (OSRelease, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return OSRelease{}, err
	}
	var r OSRelease
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			r.ID = v
		case "ID_LIKE":
			r.IDLike = strings.Fields(v)
		case "PRETTY_NAME":
			r.Pretty = v
		case "VERSION_ID":
			r.VersionID = v
		}
	}
	return r, sc.Err()
}

// Supported reports whether the system is Debian, Ubuntu or a derivative.
func (r OSRelease) Supported() bool {
	for _, id := range append([]string{r.ID}, r.IDLike...) {
		if slices.Contains([]string{"debian", "ubuntu"}, id) {
			return true
		}
	}
	return false
}

// checkSystem checks what a host install needs: root, Debian or Ubuntu,
// and systemd as the running init (sd_booted(3): /run/systemd/system).
func checkSystem(osRelease, systemdDir string) (string, error) {
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("not running as root")
	}
	r, err := ReadOSRelease(osRelease)
	if err != nil {
		return "", fmt.Errorf("cannot tell the operating system: %w", err)
	}
	if !r.Supported() {
		return "", fmt.Errorf("%s is not Debian or Ubuntu", r.name())
	}
	if fi, err := os.Stat(systemdDir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("systemd is not running (no %s)", systemdDir)
	}
	return r.name() + ", systemd", nil
}

func (r OSRelease) name() string {
	if r.Pretty != "" {
		return r.Pretty
	}
	if r.ID != "" {
		return r.ID + " " + r.VersionID
	}
	return "this system"
}
