package install

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestNotifyReadySendsReady(t *testing.T) {
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), "@chatrelay-test-" + itoa(int(time.Now().UnixNano()))} {
		conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		t.Setenv("NOTIFY_SOCKET", name)
		if err := NotifyReady(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(buf[:n]); got != "READY=1" {
			t.Errorf("%s: got %q", name, got)
		}
	}
}

func TestNotifyReadyWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := NotifyReady(); err != nil {
		t.Error(err)
	}
}
