// Package releasetest builds signed chatrelay releases for tests and runs
// the upgrade scenario of SPEC section 13 against a Host: install v1, make
// data, upgrade to v2 (the data survives, the account logs in), then
// "upgrade" to a v3 built to exit at start (the relay comes back on v2 by
// itself and status says so).
//
// The scenario runs on a local child process (this package's test) and is
// meant to run unchanged on a booted systemd host: implement Host there
// and call RunUpgradeScenario. For a guest with systemd as PID 1:
//
//	r := releasetest.Build(t, t.TempDir(), "linux", "amd64") // the key is compiled in
//	releasetest.RunUpgradeScenario(t, guestHost, r)
//
// where guestHost
//   - Install: copies the file into the guest and runs, as root,
//     `chatrelay install --ip GUEST_IP` with it (the unit then runs
//     /usr/local/bin/chatrelay);
//   - Upgrade: copies FILE, FILE.minisig and the key into the guest and
//     runs `chatrelay upgrade FILE --key PUB` there, returning its output
//     (a non-zero exit is the error);
//   - Status, Version: `chatrelay status`, `chatrelay version` in the guest;
//   - IMAPAddr, HTTPSAddr: GUEST_IP:993, GUEST_IP:443; Domain: "[GUEST_IP]".
package releasetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/release"
)

// Releases are three signed builds of this source tree and the key that
// signed them.
type Releases struct {
	V1, V2, V3 string // binaries, each with its .minisig beside it
	PubKey     string // minisign public key file
	Versions   [3]string
	Target     string // GOOS/GOARCH they are built for
}

// Build builds three releases for goos/goarch (this machine's when empty)
// into dir, signed with a fresh key that is also compiled into them:
// versions 1.0.0-test and 2.0.0-test, and 3.0.0-test built with the tag
// chatrelay_failstart, whose serve exits at once.
func Build(t testing.TB, dir, goos, goarch string) Releases {
	t.Helper()
	if goos == "" {
		goos, goarch = runtime.GOOS, runtime.GOARCH
	}
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubText, _ := pub.MarshalText()
	r := Releases{
		PubKey:   filepath.Join(dir, "release.pub"),
		Versions: [3]string{"1.0.0-test", "2.0.0-test", "3.0.0-test"},
		Target:   goos + "/" + goarch,
	}
	if err := os.WriteFile(r.PubKey, pubText, 0o644); err != nil {
		t.Fatal(err)
	}
	root := moduleRoot(t)
	out := []*string{&r.V1, &r.V2, &r.V3}
	for i, v := range r.Versions {
		name := release.BinaryName(v, r.Target)
		path := filepath.Join(dir, name)
		args := []string{"build", "-trimpath", "-buildvcs=false",
			"-ldflags", "-s -w -buildid= -X main.version=" + v + " -X github.com/chatrelay/chatrelay/release.compiledKey=" + pub.String(),
			"-o", path}
		if i == 2 {
			args = append(args, "-tags", "chatrelay_failstart")
		}
		cmd := exec.Command("go", append(args, "./cmd/chatrelay")...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+goarch)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", v, err, b)
		}
		m := release.Meta{Name: name, Version: v, Target: r.Target, Schema: mailbox.SchemaVersion, Time: 1765000000}
		if err := release.SignFile(priv, path, m); err != nil {
			t.Fatal(err)
		}
		*out[i] = path
	}
	return r
}

func moduleRoot(t testing.TB) string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// Host is a machine with chatrelay installed as a service.
type Host interface {
	// Install installs binary (a release file) as the relay and starts
	// it with open registration.
	Install(ctx context.Context, binary string) error
	// Upgrade runs `chatrelay upgrade FILE --key PUB` (FILE.minisig
	// beside FILE) on the host and returns what it printed.
	Upgrade(ctx context.Context, file, pubKey string) (string, error)
	// Status runs `chatrelay status` on the host.
	Status(ctx context.Context) (string, error)
	// Version runs `chatrelay version` with the installed binary.
	Version(ctx context.Context) (string, error)
	// IMAPAddr and HTTPSAddr are the relay's IMAP (implicit TLS) and
	// HTTPS addresses, reachable from the test; Domain is its mail
	// domain ("[IP]" in IP mode).
	IMAPAddr() string
	HTTPSAddr() string
	Domain() string
}

// RunUpgradeScenario is the upgrade test of SPEC section 13 on h, with
// releases from Build for h's target.
func RunUpgradeScenario(t *testing.T, h Host, r Releases) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	if err := h.Install(ctx, r.V1); err != nil {
		t.Fatalf("install v1: %v", err)
	}
	wantVersion(ctx, t, h, r.Versions[0])

	// Data made under v1: an account made at first login, a message in
	// its INBOX and a folder.
	addr := "upgradea1@" + h.Domain()
	const pass = "upgrade-test-password"
	msg := testmsg.Encrypted(addr, addr, 0)
	c := login(t, h, addr, pass)
	if err := c.Create("Kept", nil).Wait(); err != nil {
		t.Fatalf("CREATE under v1: %v", err)
	}
	ap := c.Append("INBOX", int64(len(msg)), nil)
	ap.Write(msg)
	ap.Close()
	if _, err := ap.Wait(); err != nil {
		t.Fatalf("APPEND under v1: %v", err)
	}
	c.Logout().Wait()
	c.Close()

	// v1 -> v2.
	out, err := h.Upgrade(ctx, r.V2, r.PubKey)
	t.Logf("upgrade to v2:\n%s", out)
	if err != nil {
		t.Fatalf("upgrade to v2: %v", err)
	}
	wantVersion(ctx, t, h, r.Versions[1])
	checkData(t, h, addr, pass, msg)
	st, err := h.Status(ctx)
	if err != nil {
		t.Fatalf("status after v2: %v\n%s", err, st)
	}
	if want := "last upgrade: " + r.Versions[0] + " -> " + r.Versions[1]; !strings.Contains(st, want) || !strings.Contains(st, ": upgraded") {
		t.Errorf("status after the upgrade to v2 does not say %q ... upgraded:\n%s", want, st)
	}

	// The relay offers the release it runs, with its signature.
	wantOffered(t, h, r.V2, true)

	// v2 -> v3, which exits at start: back on v2 by itself.
	out, err = h.Upgrade(ctx, r.V3, r.PubKey)
	t.Logf("upgrade to v3:\n%s", out)
	if err == nil {
		t.Fatalf("upgrade to a version that exits at start succeeded")
	}
	for _, want := range []string{"rolling back to " + r.Versions[1], r.Versions[1] + " answers again", "outcome: rolled back"} {
		if !strings.Contains(out, want) {
			t.Errorf("upgrade to v3 did not print %q", want)
		}
	}
	wantVersion(ctx, t, h, r.Versions[1])
	checkData(t, h, addr, pass, msg)
	st, err = h.Status(ctx)
	if err != nil {
		t.Fatalf("status after v3: %v\n%s", err, st)
	}
	if want := "last upgrade: " + r.Versions[1] + " -> " + r.Versions[2]; !strings.Contains(st, want) || !strings.Contains(st, ": rolled back") ||
		!strings.Contains(st, "chatrelay "+r.Versions[1]+" serving") {
		t.Errorf("status after the failed upgrade to v3 does not say %q ... rolled back, on %s:\n%s", want, r.Versions[1], st)
	}
	wantOffered(t, h, r.V2, true)
	wantOffered(t, h, r.V3, false)
}

// wantOffered checks that /downloads offers the release file and its
// signature byte for byte, or offers neither.
func wantOffered(t *testing.T, h Host, file string, offered bool) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, f := range []string{file, file + release.SigSuffix} {
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Get("https://" + h.HTTPSAddr() + "/downloads/" + filepath.Base(f))
		if err != nil {
			t.Fatalf("GET /downloads: %v", err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case offered && (resp.StatusCode != 200 || !bytes.Equal(got, want)):
			t.Errorf("/downloads/%s: %d, %d bytes, want the %d bytes of the release", filepath.Base(f), resp.StatusCode, len(got), len(want))
		case !offered && resp.StatusCode != 404:
			t.Errorf("/downloads/%s: %d, want 404", filepath.Base(f), resp.StatusCode)
		}
	}
}

func wantVersion(ctx context.Context, t *testing.T, h Host, want string) {
	t.Helper()
	v, err := h.Version(ctx)
	if err != nil || strings.TrimSpace(v) != "chatrelay "+want {
		t.Fatalf("installed version %q (%v), want %s", v, err, want)
	}
}

func login(t *testing.T, h Host, addr, pass string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(h.IMAPAddr(), &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	if err != nil {
		t.Fatalf("dial IMAP %s: %v", h.IMAPAddr(), err)
	}
	if err := c.Login(addr, pass).Wait(); err != nil {
		c.Close()
		t.Fatalf("login %s: %v", addr, err)
	}
	return c
}

// checkData logs in and finds what was made under v1.
func checkData(t *testing.T, h Host, addr, pass string, msg []byte) {
	t.Helper()
	c := login(t, h, addr, pass)
	defer c.Close()
	boxes, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range boxes {
		names = append(names, b.Mailbox)
	}
	if !strings.Contains(" "+strings.Join(names, " ")+" ", " Kept ") {
		t.Errorf("folders %v, want Kept among them", names)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 {
		t.Fatalf("INBOX has %d messages, want 1", sel.NumMessages)
	}
	bodySec := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{bodySec}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("fetch: %v", err)
	}
	if got := msgs[0].FindBodySection(bodySec); !bytes.Equal(got, msg) {
		t.Errorf("message body changed across the upgrade: %d bytes, want %d", len(got), len(msg))
	}
	c.Logout().Wait()
}
