package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// group is the set of processes of one server under test. As root it is a
// cgroup (v1 cpuacct, or v2), which counts the CPU of every process the
// server ever ran, short-lived ones included (Postfix runs many); else it
// is the process tree under the server's first process, counting the CPU
// of exited children that were waited for.
type group struct {
	name    string
	dir     string // cgroup directory, "" when not used
	v2      bool
	rootPID int
}

var clkTck = 100.0 // USER_HZ on Linux

func newGroup(name string) *group {
	g := &group{name: name}
	if os.Geteuid() != 0 {
		return g
	}
	for _, base := range []string{"/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"} {
		if _, err := os.Stat(filepath.Join(base, "cpuacct.usage")); err == nil {
			dir := filepath.Join(base, "chatrelay-bench-"+name)
			os.Mkdir(dir, 0o755)
			if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err == nil {
				g.dir = dir
				return g
			}
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		dir := filepath.Join("/sys/fs/cgroup", "chatrelay-bench-"+name)
		os.Mkdir(dir, 0o755)
		if _, err := os.Stat(filepath.Join(dir, "cpu.stat")); err == nil {
			g.dir, g.v2 = dir, true
		}
	}
	return g
}

// wrap returns argv that runs argv inside the group.
func (g *group) wrap(argv []string) []string {
	if g.dir == "" {
		return argv
	}
	return append([]string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(g.dir, "cgroup.procs")}, argv...)
}

// pids lists the group's live processes.
func (g *group) pids() []int {
	if g.dir != "" {
		data, _ := os.ReadFile(filepath.Join(g.dir, "cgroup.procs"))
		var out []int
		for _, f := range strings.Fields(string(data)) {
			if p, err := strconv.Atoi(f); err == nil {
				out = append(out, p)
			}
		}
		return out
	}
	if g.rootPID == 0 {
		return nil
	}
	return processTree(g.rootPID)
}

// cpu is the group's CPU time so far (user + system, all processes).
func (g *group) cpu() time.Duration {
	if g.dir != "" && !g.v2 {
		data, err := os.ReadFile(filepath.Join(g.dir, "cpuacct.usage"))
		if err == nil {
			ns, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
			return time.Duration(ns)
		}
	}
	if g.dir != "" && g.v2 {
		data, _ := os.ReadFile(filepath.Join(g.dir, "cpu.stat"))
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "usage_usec" {
				us, _ := strconv.ParseInt(f[1], 10, 64)
				return time.Duration(us) * time.Microsecond
			}
		}
	}
	var ticks int64
	for _, p := range g.pids() {
		st, err := readStat(p)
		if err == nil {
			ticks += st.utime + st.stime + st.cutime + st.cstime
		}
	}
	return time.Duration(float64(ticks) / clkTck * float64(time.Second))
}

// pss sums the proportional set size of the group's processes: shared
// pages (libraries, Postfix's and Dovecot's many processes of one binary)
// count once in total. For a single process it equals its RSS less shared
// library pages split with other processes.
func (g *group) pss() (kib int64, procs int) {
	kib, _, procs = g.pssAnon()
	return kib, procs
}

// pssAnon is pss with its anonymous part (heap, stacks: what is not a
// mapped file such as chatrelay's bbolt index, whose clean pages the
// kernel can drop).
func (g *group) pssAnon() (kib, anon int64, procs int) {
	for _, p := range g.pids() {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			continue
		}
		procs++
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 2 {
				continue
			}
			v, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "Pss:":
				kib += v
			case "Pss_Anon:":
				anon += v
			}
		}
	}
	return kib, anon, procs
}

// rss sums VmRSS (for comparison with PSS).
func (g *group) rss() int64 {
	var kib int64
	for _, p := range g.pids() {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				kib += v
			}
		}
	}
	return kib
}

// remove deletes the cgroup once it is empty.
func (g *group) remove() {
	if g.dir != "" {
		for range 50 {
			if len(g.pids()) == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		os.Remove(g.dir)
	}
}

type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime int64
}

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("bad stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is state (field 3); utime is field 14 -> f[11].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("short stat")
	}
	n := func(k int) int64 { v, _ := strconv.ParseInt(f[k], 10, 64); return v }
	return procStat{ppid: int(n(1)), utime: n(11), stime: n(12), cutime: n(13), cstime: n(14)}, nil
}

// processTree is root and its descendants.
func processTree(root int) []int {
	ents, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(p); err == nil {
			children[st.ppid] = append(children[st.ppid], p)
		}
	}
	out := []int{root}
	for i := 0; i < len(out) && i < 1_000_000; i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// renice sets the nice value of every thread of process pid (Linux keeps
// it per thread; threads made later inherit it from the thread that makes
// them). Lowering it below 0 needs root.
func renice(pid, nice int) error {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	var first error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// renice sets the nice value of the group's processes.
func (g *group) renice(nice int) error {
	var first error
	for _, p := range g.pids() {
		if err := renice(p, nice); err != nil && first == nil {
			first = err
		}
	}
	return first
}
