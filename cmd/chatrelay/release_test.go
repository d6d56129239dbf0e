package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aead.dev/minisign"

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
