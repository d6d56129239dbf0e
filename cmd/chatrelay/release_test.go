package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/release"
)

func runVerify(args ...string) (string, error) {
	cmd := verifyCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestVerifyCommand(t *testing.T) {
	dir := t.TempDir()
	pub, priv, _ := minisign.GenerateKey(rand.Reader)
	pubText, _ := pub.MarshalText()
	pubPath := filepath.Join(dir, "release.pub")
	os.WriteFile(pubPath, pubText, 0o644)
	file := filepath.Join(dir, "chatrelay-1.2.3-linux-amd64")
	os.WriteFile(file, []byte("a release"), 0o755)
	release.SignFile(priv, file, release.Meta{Name: filepath.Base(file), Version: "1.2.3", Target: "linux/amd64", Schema: 2, Time: 1})

	// The test binary is built without a release key.
	if _, err := runVerify(file); err == nil || !strings.Contains(err.Error(), "built without a release key") {
		t.Errorf("verify without a key: %v", err)
	}
	out, err := runVerify(file, "--key", pubPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"good signature by key " + release.KeyID(pub.ID()), "version:   1.2.3", "target:    linux/amd64", "schema:    2", "1. "} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
	os.WriteFile(file, []byte("a releasf"), 0o755)
	if _, err := runVerify(file, "--key", pubPath); err == nil || !strings.Contains(err.Error(), "changed after it was signed") {
		t.Errorf("verify of a changed file: %v", err)
	}
}

func TestStatusShowsLastUpgrade(t *testing.T) {
	var out bytes.Buffer
	st := &control.Status{Version: "2.0.0", LastUpgrade: &control.Upgrade{
		Time: time.Date(2026, 12, 6, 13, 0, 0, 0, time.UTC), From: "2.0.0", To: "3.0.0",
		Outcome: control.UpgradeRolledBack, Reason: "version 3.0.0 did not come up", IndexBak: "/data/upgrade/index-schema2.db",
	}}
	printStatus(&out, st, time.Now())
	for _, want := range []string{"last upgrade: 2.0.0 -> 3.0.0 on 2026-12-06 13:00 UTC: rolled back", "version 3.0.0 did not come up", "index backup: /data/upgrade/index-schema2.db"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	// With the relay down, status still says what the upgrade did.
	dir := t.TempDir()
	control.WriteUpgrade(dir, st.LastUpgrade)
	cmd := statusCmd()
	var errOut bytes.Buffer
	cmd.SetOut(&errOut)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"--data", dir})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "no relay is running") {
		t.Fatalf("status of a stopped relay: %v", err)
	}
	if !strings.Contains(errOut.String(), "rolled back") {
		t.Errorf("status of a stopped relay does not show the last upgrade:\n%s", errOut.String())
	}
}
