package safeio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// names lists a directory's entries.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestWriteFileReplacesWithExactMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path, []byte("old contents, longer than the new"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, perm := range []os.FileMode{0o600, 0o640} {
		if err := WriteFile(path, []byte("new"), perm); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != "new" {
			t.Fatalf("contents %q, %v; want %q", got, err, "new")
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != perm {
			t.Fatalf("mode %v, %v; want %v whatever the umask", fi.Mode(), err, perm)
		}
	}
	if n := names(t, dir); !slices.Equal(n, []string{"key"}) {
		t.Fatalf("directory holds %v; want only the file", n)
	}
}

// When fill fails, the file at path is as it was (or still absent), the
// caller gets fill's error, and no temporary file is left.
func TestWriteFromFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	kept := filepath.Join(dir, "kept")
	if err := os.WriteFile(kept, []byte("before"), 0o600); err != nil {
		t.Fatal(err)
	}
	errFill := errors.New("disk said no")
	fill := func(w io.Writer) error {
		w.Write([]byte("half a"))
		return errFill
	}
	if err := WriteFrom(kept, 0o600, fill); !errors.Is(err, errFill) {
		t.Fatalf("WriteFrom over a file: %v, want fill's error", err)
	}
	if got, _ := os.ReadFile(kept); string(got) != "before" {
		t.Fatalf("a failed write changed the file to %q", got)
	}
	if err := WriteFrom(filepath.Join(dir, "new"), 0o600, fill); !errors.Is(err, errFill) {
		t.Fatalf("WriteFrom to a new name: %v, want fill's error", err)
	}
	if n := names(t, dir); !slices.Equal(n, []string{"kept"}) {
		t.Fatalf("directory holds %v after failed writes; want only the old file", n)
	}
}

func TestWriteFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-dir")
	err := WriteFile(filepath.Join(missing, "f"), []byte("x"), 0o600)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("write into a missing directory: %v; want an error naming it", err)
	}
	// Renaming a file over a non-empty directory fails; the directory
	// and what is in it stay, and no temporary file is left beside it.
	occupied := filepath.Join(dir, "occupied")
	if err := os.MkdirAll(filepath.Join(occupied, "inside"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(occupied, []byte("x"), 0o600); err == nil {
		t.Fatal("a file replaced a non-empty directory")
	}
	if fi, err := os.Stat(filepath.Join(occupied, "inside")); err != nil || !fi.IsDir() {
		t.Fatalf("the directory's contents after a refused write: %v", err)
	}
	if n := names(t, dir); !slices.Equal(n, []string{"occupied"}) {
		t.Fatalf("directory holds %v after a refused write", n)
	}
	if err := SyncDir(missing); err == nil {
		t.Fatal("SyncDir of a missing directory succeeded")
	}
}

// Readers see the old contents or the new, never a mix or an empty file.
func TestWriteFileReadersSeeWholeContents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	a, b := bytes.Repeat([]byte("a"), 256<<10), bytes.Repeat([]byte("b"), 300<<10)
	if err := WriteFile(path, a, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var bad error
	wg.Add(1)
	go func() {
		defer wg.Done()
		deadline := time.Now().Add(time.Minute)
		for reads := 0; reads < 100000 && time.Now().Before(deadline); reads++ {
			select {
			case <-done:
				return
			default:
			}
			got, err := os.ReadFile(path)
			if err != nil || !(bytes.Equal(got, a) || bytes.Equal(got, b)) {
				bad = errors.New("a reader saw a partial file or none")
				if err != nil {
					bad = err
				}
				return
			}
		}
	}()
	for i := range 40 {
		data := a
		if i%2 == 0 {
			data = b
		}
		if err := WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	if bad != nil {
		t.Fatal(bad)
	}
}

// TestHelperWriteFile is run by TestWriteFileSyncsFileThenDirectory under
// strace; on its own it does nothing.
func TestHelperWriteFile(t *testing.T) {
	path := os.Getenv("SAFEIO_HELPER_PATH")
	if path == "" {
		t.Skip("run by TestWriteFileSyncsFileThenDirectory")
	}
	if err := WriteFile(path, []byte("durable"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The crash guarantee, seen in the system calls: the temporary file is
// fsynced before it is renamed over path, and the directory is fsynced
// after the rename.
func TestWriteFileSyncsFileThenDirectory(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("needs strace (make tools installs it)")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "data")
	cmd := exec.Command(strace, "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
		os.Args[0], "-test.run=^TestHelperWriteFile$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SAFEIO_HELPER_PATH="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "ptrace") || strings.Contains(string(out), "Operation not permitted") {
			t.Skipf("strace cannot trace here: %s", out)
		}
		t.Fatalf("helper under strace: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(path); string(got) != "durable" {
		t.Fatalf("helper wrote %q", got)
	}
	tmp := regexp.QuoteMeta(filepath.Join(dir, ".data.tmp"))
	steps := []*regexp.Regexp{
		regexp.MustCompile(`fsync\(\d+<` + tmp + `\d+>\) = 0`),
		regexp.MustCompile(`rename(at2?)?\(.*"` + tmp + `\d+".*"` + regexp.QuoteMeta(path) + `".*\) = 0`),
		regexp.MustCompile(`fsync\(\d+<` + regexp.QuoteMeta(dir) + `>\) = 0`),
	}
	next := 0
	for _, line := range strings.Split(string(out), "\n") {
		if next < len(steps) && steps[next].MatchString(line) {
			next++
		}
	}
	if next < len(steps) {
		t.Fatalf("system calls lack, in order, %v (found the first %d):\n%s", steps[next], next, out)
	}
}
