package install

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// Ports are the TCP ports a relay listens on (SPEC sections 3 and 12;
// TURN also takes UDP 3478 and a UDP range).
var Ports = []int{25, 143, 465, 587, 993, 443, 80, 3478}

// A BusyPort is a port another program already listens on.
type BusyPort struct {
	Port int
	// Holder names the process, "sshd (pid 812)", or "" when unknown.
	Holder string
	// PID of the holder, 0 when unknown.
	PID int
	// Exe is the holder's executable, when readable.
	Exe string
	// Err is set when listening failed for another reason than the port
	// being in use (no permission).
	Err error
}

func (b BusyPort) String() string {
	if b.Err != nil {
		return fmt.Sprintf("port %d: %v", b.Port, b.Err)
	}
	if b.Holder == "" {
		return fmt.Sprintf("port %d is in use", b.Port)
	}
	return fmt.Sprintf("port %d is in use by %s", b.Port, b.Holder)
}

// BusyPorts tries to listen on each TCP port on all addresses and returns
// the ones that fail, naming the process that holds each when it can.
func BusyPorts(ports []int) []BusyPort {
	var busy []BusyPort
	for _, p := range ports {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err == nil {
			l.Close()
			continue
		}
		b := BusyPort{Port: p}
		if !errors.Is(err, syscall.EADDRINUSE) {
			b.Err = err // not held by anyone: no permission, say why
		} else if pid, name, exe, ok := portHolder(p); ok {
			b.PID, b.Exe = pid, exe
			b.Holder = fmt.Sprintf("%s (pid %d)", name, pid)
		}
		busy = append(busy, b)
	}
	return busy
}

// portHolder finds the process listening on TCP port: the socket inode
// from /proc/net/tcp{,6}, then the process with that inode among its file
// descriptors. Without the permission to read other processes' fds (not
// root) it falls back on `ss -ltnp`.
func portHolder(port int) (pid int, name, exe string, ok bool) {
	inodes := listenInodes("/proc/net/tcp", port)
	inodes = append(inodes, listenInodes("/proc/net/tcp6", port)...)
	if len(inodes) > 0 {
		if pid, ok := pidWithSocket(inodes); ok {
			return pid, procName(pid), procExe(pid), true
		}
	}
	return ssHolder(port)
}

// listenInodes returns the socket inodes in LISTEN state on port from a
// /proc/net/tcp style table:
//
//	sl local_address rem_address st ... uid timeout inode
//	0: 0100007F:0019 00000000:0000 0A ...
func listenInodes(path string, port int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var inodes []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "0A" { // 0A is TCP_LISTEN
			continue
		}
		_, hexPort, found := strings.Cut(fields[1], ":")
		if !found {
			continue
		}
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil || int(p) != port {
			continue
		}
		if fields[9] != "0" {
			inodes = append(inodes, fields[9])
		}
	}
	return inodes
}

// pidWithSocket scans /proc/*/fd for a link to socket:[inode].
func pidWithSocket(inodes []string) (int, bool) {
	want := make(map[string]bool, len(inodes))
	for _, in := range inodes {
		want["socket:["+in+"]"] = true
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err == nil && want[link] {
				return pid, true
			}
		}
	}
	return 0, false
}

func procName(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return "pid " + strconv.Itoa(pid)
	}
	return strings.TrimSpace(string(b))
}

func procExe(pid int) string {
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return strings.TrimSuffix(exe, " (deleted)")
}

var ssUser = regexp.MustCompile(`\("([^"]+)",pid=(\d+)`)

// ssHolder asks `ss -ltnp` who listens on port.
func ssHolder(port int) (pid int, name, exe string, ok bool) {
	if _, err := exec.LookPath("ss"); err != nil {
		return 0, "", "", false
	}
	out, err := exec.Command("ss", "-Hltnp", "sport = :"+strconv.Itoa(port)).Output()
	if err != nil {
		return 0, "", "", false
	}
	return parseSS(string(out))
}

// parseSS reads the first process from ss output such as
// `LISTEN 0 100 0.0.0.0:25 0.0.0.0:* users:(("exim4",pid=700,fd=3))`.
func parseSS(out string) (pid int, name, exe string, ok bool) {
	m := ssUser.FindStringSubmatch(out)
	if m == nil {
		return 0, "", "", false
	}
	pid, _ = strconv.Atoi(m[2])
	return pid, m[1], procExe(pid), true
}
