package install

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

type heldPort struct {
	port int
}

// listenAll holds a port on all addresses, as a mail server would.
func listenAll(t *testing.T) heldPort {
	t.Helper()
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return heldPort{port: l.Addr().(*net.TCPAddr).Port}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestBusyPortsNamesTheHolder(t *testing.T) {
	for _, addr := range []string{":0", "127.0.0.1:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		busy := BusyPorts([]int{port})
		l.Close()
		if len(busy) != 1 {
			t.Fatalf("%s: busy = %v, want port %d", addr, busy, port)
		}
		b := busy[0]
		if b.Port != port || b.PID != os.Getpid() {
			t.Errorf("%s: %+v, want port %d held by pid %d", addr, b, port, os.Getpid())
		}
		self, _ := os.Executable()
		if b.Exe != self {
			t.Errorf("%s: exe %q, want %q", addr, b.Exe, self)
		}
		if s := b.String(); !strings.Contains(s, "port "+itoa(port)+" is in use by ") || !strings.Contains(s, "(pid "+itoa(os.Getpid())+")") {
			t.Errorf("%s: %q", addr, s)
		}
	}
}

func TestBusyPortsFreePort(t *testing.T) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if busy := BusyPorts([]int{port}); len(busy) != 0 {
		t.Errorf("free port reported busy: %v", busy)
	}
}

func TestCheckPortsAcceptsTheInstalledRelay(t *testing.T) {
	l := listenAll(t)
	self, _ := os.Executable()
	note, err := checkPorts([]int{l.port}, self)
	if err != nil || !strings.Contains(note, "running chatrelay") {
		t.Errorf("note %q, err %v", note, err)
	}
	if _, err := checkPorts([]int{l.port}, "/usr/local/bin/chatrelay-other"); err == nil {
		t.Error("a port held by another program passed")
	}
}

func TestParseSS(t *testing.T) {
	out := `LISTEN 0      100          0.0.0.0:25        0.0.0.0:*    users:(("exim4",pid=700,fd=3))` + "\n"
	pid, name, _, ok := parseSS(out)
	if !ok || pid != 700 || name != "exim4" {
		t.Errorf("parseSS = %d %q %v", pid, name, ok)
	}
	if _, _, _, ok := parseSS("LISTEN 0 100 0.0.0.0:25 0.0.0.0:*\n"); ok {
		t.Error("parseSS found a process in a line without one")
	}
}
