package dctest

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// BinaryEnv names the environment variable that overrides where the
// deltachat-rpc-server binary is.
const BinaryEnv = "DELTACHAT_RPC_SERVER"

// LogDirEnv names an environment variable: when set, StartT keeps core's
// accounts and logs in a new directory under it instead of a temporary one.
const LogDirEnv = "DCTEST_LOGDIR"

// binaryInCache is where scripts/install-deltachat.sh puts the binary,
// relative to the repository root.
var binaryInCache = filepath.Join(".cache", "deltachat", "node_modules", "@deltachat",
	"stdio-rpc-server-linux-x64", "deltachat-rpc-server")

// SkipMessage is why tests skip when core is not installed.
const SkipMessage = "Delta Chat core (deltachat-rpc-server) not found: run `make deltachat` to install Delta Chat core, or set " + BinaryEnv

// Binary returns the deltachat-rpc-server to use: $DELTACHAT_RPC_SERVER, or
// the copy installed under the repository's .cache/deltachat.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", err
		}
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, binaryInCache)
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}

// RepoRoot is the directory holding the module's go.mod: the first one
// found walking up from the working directory (go test runs in the
// package's directory), else from this source file.
func RepoRoot() (string, error) {
	starts := []string{}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			if isModuleRoot(filepath.Join(dir, "go.mod")) {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("dctest: go.mod of github.com/chatrelay/chatrelay not found")
}

func isModuleRoot(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "module ") {
			return strings.TrimSpace(strings.TrimPrefix(line, "module ")) == "github.com/chatrelay/chatrelay"
		}
	}
	return false
}

// StartT starts core for a test in a fresh temporary directory, or skips
// the test when core is not installed. On cleanup it stops core, fails the
// test if core tried to reach anything but loopback, and, if the test
// failed, logs core's warnings and errors.
func StartT(t testing.TB) *RPC {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Skipf("%s (%v)", SkipMessage, err)
	}
	dir := t.TempDir()
	if keep := os.Getenv(LogDirEnv); keep != "" {
		// Kept after the test, for reading core's log.
		var err error
		if dir, err = os.MkdirTemp(keep, strings.ReplaceAll(t.Name(), "/", "_")+"-"); err != nil {
			t.Fatal(err)
		}
		t.Logf("Delta Chat core's files are in %s", dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rpc, err := Start(ctx, bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rpc.Close()
		if bad := rpc.NonLoopbackTargets(); len(bad) > 0 {
			t.Errorf("Delta Chat core tried to reach non-loopback hosts %q (all targets: %q)", bad, rpc.ConnectionTargets())
		}
		if t.Failed() {
			t.Logf("core's warnings and errors (%s):\n%s", filepath.Join(dir, "core.log"), rpc.LogTail(60, "WARN", "ERROR"))
		}
	})
	return rpc
}

// LogTail returns the last n lines of core's log that contain any of the
// given words (all lines when none are given).
func (r *RPC) LogTail(n int, words ...string) string {
	data, err := os.ReadFile(filepath.Join(r.dir, "core.log"))
	if err != nil {
		return err.Error()
	}
	var keep []string
	for line := range strings.Lines(string(data)) {
		if len(words) == 0 || containsAny(line, words) {
			keep = append(keep, line)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "")
}

func containsAny(s string, words []string) bool {
	for _, w := range words {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}
