package install

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnitPassesSystemdAnalyzeVerify runs systemd's own checker on the
// unit. It fails on an error and on any warning (an unknown or misspelt
// key is only a warning to systemd).
func TestUnitPassesSystemdAnalyzeVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found: install the Debian package systemd (apt-get install systemd)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "chatrelay")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, UnitName)
	text := Unit(UnitOptions{Binary: bin, Config: filepath.Join(dir, "chatrelay.toml"), DataDir: data, User: User})
	if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", unit)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out.String())
	}
	if s := strings.TrimSpace(out.String()); s != "" {
		t.Fatalf("systemd-analyze verify warns:\n%s", s)
	}
}

func TestUnitIsSandboxed(t *testing.T) {
	u := Unit(UnitOptions{Binary: BinaryPath, Config: ConfigPath, DataDir: DataDir, User: User})
	for _, line := range []string{
		"Type=notify",
		"ExecStart=/usr/local/bin/chatrelay serve --config /etc/chatrelay/chatrelay.toml",
		"User=chatrelay",
		"Group=chatrelay",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"NoNewPrivileges=yes",
		"ProtectSystem=strict",
		"ReadWritePaths=/var/lib/chatrelay",
		"ProtectHome=yes",
		"PrivateTmp=yes",
		"PrivateDevices=yes",
		"ProtectKernelTunables=yes",
		"ProtectKernelModules=yes",
		"ProtectKernelLogs=yes",
		"ProtectControlGroups=yes",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
		"RestrictNamespaces=yes",
		"LockPersonality=yes",
		"MemoryDenyWriteExecute=yes",
		"SystemCallArchitectures=native",
		"SystemCallFilter=@system-service",
		"LimitNOFILE=65536",
		"Restart=on-failure",
		"WantedBy=multi-user.target",
	} {
		if !containsLine(u, line) {
			t.Errorf("unit lacks line %q", line)
		}
	}
	if strings.Contains(u, "@BINARY@") || strings.Contains(u, "@DATADIR@") {
		t.Errorf("unit has an unfilled placeholder:\n%s", u)
	}
}

func containsLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}
