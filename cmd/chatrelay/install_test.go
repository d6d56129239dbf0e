package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/install"
	"github.com/chatrelay/chatrelay/relay"
)

// run executes one command with args and returns its output.
func run(t *testing.T, cmd *cobra.Command, stdin string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SilenceUsage = true
	err := cmd.Execute()
	return out.String(), err
}

// runMain runs `chatrelay args...` in a child process.
func runMain(t *testing.T, args ...string) (string, int) {
	t.Helper()
	// TestMain (crash_test.go) runs main() when CHATRELAY_EXEC is set.
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

func TestInstallCommandIntoRoot(t *testing.T) {
	root := t.TempDir()
	out, err := run(t, installCmd(), "", "--root", root, "--domain", "example.org", "--email", "admin@example.org", "--yes")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"[1/13] checking the system ... skipped (--root)",
		"[7/13] making the DKIM key /var/lib/chatrelay/dkim/private.pem ... created",
		" 1. useradd --system --user-group",
		" 5. systemctl enable --now chatrelay.service",
		"DCACCOUNT:https://example.org/new",
		"█",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	cfg := relay.Default()
	if err := cfg.LoadFile(filepath.Join(root, install.ConfigPath)); err != nil || cfg.Domain != "example.org" {
		t.Fatalf("config: %v, domain %q", err, cfg.Domain)
	}
	// The installed program is this one.
	self, _ := os.Executable()
	if fi, err := os.Stat(filepath.Join(root, install.BinaryPath)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("binary: %v", err)
	} else if si, _ := os.Stat(self); si.Size() != fi.Size() {
		t.Errorf("binary is %d bytes, the running program %d", fi.Size(), si.Size())
	}

	out, err = run(t, installCmd(), "", "--root", root, "--domain", "example.org", "--yes")
	if err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	for _, want := range []string{"kept existing /etc/chatrelay/chatrelay.toml", "kept existing key", "systemctl restart chatrelay.service"} {
		if !strings.Contains(out, want) {
			t.Errorf("second install output lacks %q:\n%s", want, out)
		}
	}

	out, err = run(t, uninstallCmd(), "", "--root", root, "--yes")
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, install.UnitPath)); !os.IsNotExist(err) {
		t.Error("unit still there after uninstall")
	}
	if _, err := os.Stat(filepath.Join(root, install.ConfigPath)); err != nil {
		t.Error("config removed without --purge")
	}

	// --purge asks first; "no" changes nothing.
	out, err = run(t, uninstallCmd(), "n\n", "--root", root, "--purge")
	if err == nil || !strings.Contains(out, "ALL its data") {
		t.Fatalf("purge without --yes: err %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, install.DataDir)); err != nil {
		t.Fatal("data removed after answering no")
	}
	out, err = run(t, uninstallCmd(), "y\n", "--root", root, "--purge")
	if err != nil {
		t.Fatalf("purge: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, install.DataDir)); !os.IsNotExist(err) {
		t.Error("data still there after --purge")
	}
}

func TestInstallCommandNeedsDomainOrIP(t *testing.T) {
	out, code := runMain(t, "install", "--root", t.TempDir(), "--yes")
	if code == 0 || !strings.Contains(out, "give --domain D") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

func TestConfirmEndsThePromptLineWhenPiped(t *testing.T) {
	for _, tc := range []struct {
		in   string
		yes  bool
		want string
	}{
		{"y\n", true, "Go on? [y/N] \n"},
		{"yes\n", true, "Go on? [y/N] \n"},
		{"n\n", false, "Go on? [y/N] \n"},
		{"", false, "Go on? [y/N] \nno answer: standard input is not a terminal; run with --yes to go ahead without asking\n"},
	} {
		cmd := &cobra.Command{}
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetIn(strings.NewReader(tc.in))
		if got := confirm(cmd)("Go on?"); got != tc.yes {
			t.Errorf("answer %q: confirm %v, want %v", tc.in, got, tc.yes)
		}
		if out.String() != tc.want {
			t.Errorf("answer %q: output %q, want %q", tc.in, out.String(), tc.want)
		}
	}
}
