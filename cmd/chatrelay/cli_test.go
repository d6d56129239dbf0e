package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

func TestVersionFlag(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--version")
	cmd.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "chatrelay "+version+"\n" {
		t.Fatalf("--version: %q %v", out, err)
	}
}

// The admin commands on a dev relay: without --dev they point at it; with
// --dev their hints are a dev relay's, not systemd's.
func TestCLIHintsForDevRelay(t *testing.T) {
	work := t.TempDir()
	t.Chdir(work)
	r := relaytest.StartConfig(t, relaytest.Config(filepath.Join(work, relay.DevDefault().DataDir)))
	if _, _, err := cli(t, "", "status"); err == nil || !strings.Contains(err.Error(), "a dev relay runs with data in "+r.Dir+": add --dev") {
		t.Fatalf("status without --dev beside a dev relay: %v", err)
	}
	if out, _, err := cli(t, "", "status", "--dev"); err != nil || !strings.Contains(out, "serving localhost") {
		t.Fatalf("status --dev: %q %v", out, err)
	}
	backup := filepath.Join(t.TempDir(), "backup")
	if _, _, err := cli(t, "", "backup", backup, "--dev"); err != nil {
		t.Fatal(err)
	}
	_, _, err := cli(t, "", "restore", backup, "--dev")
	if err == nil || !strings.Contains(err.Error(), "Ctrl-C") || strings.Contains(err.Error(), "systemctl") {
		t.Fatalf("restore --dev while running: %v", err)
	}
}

// dns takes --dev like the other commands: the dev relay's name and DKIM key.
func TestDNSDev(t *testing.T) {
	work := t.TempDir()
	t.Chdir(work)
	r := relaytest.StartConfig(t, relaytest.Config(filepath.Join(work, relay.DevDefault().DataDir)))
	r.Stop()
	root := &cobra.Command{Use: "chatrelay", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(dnsCmd())
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"dns", "--dev"})
	if err := root.Execute(); err != nil {
		t.Fatalf("dns --dev: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "localhost") || !strings.Contains(out.String(), "DKIM1") || strings.Contains(errOut.String(), "no DKIM key") {
		t.Fatalf("dns --dev printed:\n%s\nstderr: %s", out.String(), errOut.String())
	}
	if !strings.Contains(errOut.String(), "needs no DNS") {
		t.Errorf("dns --dev does not say a dev relay needs no DNS: %s", errOut.String())
	}
}
