package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/relay"
)

// --port-base moves every dev port with one flag.
func TestPortBaseMovesEveryPort(t *testing.T) {
	cfg := relay.DevDefault()
	cfg.MetricsListen = "127.0.0.1:9150"
	if err := applyPortBase(&cfg, true, 2000); err != nil {
		t.Fatal(err)
	}
	l := cfg.Listen
	got := []string{l.IMAPS, l.IMAP, l.Submissions, l.Submission, l.SMTP, l.HTTPS, cfg.TURN.ListenUDP, cfg.TURN.ListenTCP, cfg.MetricsListen}
	want := []string{"2993", "2143", "2465", "2587", "2025", "2443", "4478", "4478", "10150"}
	for i := range want {
		if got[i] != "127.0.0.1:"+want[i] {
			t.Errorf("listener %d at %s, want 127.0.0.1:%s", i, got[i], want[i])
		}
	}
	// Base 1000 is what --dev has anyway.
	dev, moved := relay.DevDefault(), relay.DevDefault()
	applyPortBase(&moved, true, 1000)
	if dev.Listen != moved.Listen || dev.TURN.ListenUDP != moved.TURN.ListenUDP || dev.MetricsListen != moved.MetricsListen {
		t.Errorf("--port-base 1000 differs from --dev: %+v vs %+v", moved.Listen, dev.Listen)
	}
	if err := applyPortBase(&cfg, false, 2000); err == nil {
		t.Error("--port-base without --dev accepted")
	}
	if err := applyPortBase(&cfg, true, 60000); err == nil {
		t.Error("--port-base past 65535 accepted")
	}
}

// A dev relay whose port is taken says which flag moves it and leaves no
// data directory behind.
func TestServeBusyPortNamesFlagAndLeavesNoData(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	data := filepath.Join(t.TempDir(), "fresh")
	args := []string{"serve", "--dev", "--data", data, "--log-level", "warn",
		"--listen-turn", "127.0.0.1:0", "--listen-metrics", "127.0.0.1:0", "--listen-https", busy.Addr().String()}
	for _, n := range []string{"imaps", "imap", "submissions", "submission", "smtp"} {
		args = append(args, "--listen-"+n, "127.0.0.1:0")
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("serve on a busy port did not exit: %s", stderr.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("serve on a busy port: %v, want a failed exit\n%s", err, stderr.String())
	}
	for _, want := range []string{"address already in use", "--listen-https", "--port-base"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("error lacks %q:\n%s", want, stderr.String())
		}
	}
	if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed start left %s behind (%v)", data, err)
	}
}
