package install

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/chatrelay/chatrelay/internal/safeio"
)

// A Command is one program run on the host (useradd, chown, systemctl).
// Commands are data: the planner makes them, a Runner runs them, and with
// --root (and in tests) a Recorder only writes them down.
type Command struct {
	Args []string
	// MayFail marks a command whose failure is expected on some hosts
	// (stopping a unit that is not loaded); it is reported, not fatal.
	MayFail bool
}

func (c Command) String() string {
	q := make([]string, len(c.Args))
	for i, a := range c.Args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\;&|<>*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// A Runner runs host commands.
type Runner interface {
	Run(ctx context.Context, c Command) error
}

// ExecRunner runs commands on this machine.
type ExecRunner struct{}

// Run runs c and returns its combined output in the error when it fails.
func (ExecRunner) Run(ctx context.Context, c Command) error {
	out, err := exec.CommandContext(ctx, c.Args[0], c.Args[1:]...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg != "" {
			return fmt.Errorf("%s: %w: %s", c, err, msg)
		}
		return fmt.Errorf("%s: %w", c, err)
	}
	return nil
}

// Recorder runs nothing: it keeps the commands it is given, in order.
type Recorder struct {
	Commands []Command
}

// Run records c.
func (r *Recorder) Run(_ context.Context, c Command) error {
	r.Commands = append(r.Commands, c)
	return nil
}

// A Dir is a directory the plan makes (or keeps), with its mode and the
// owner it should end up with ("user:group"). Ownership is set by a chown
// Command in the plan, so that it shows in the recorded host commands.
type Dir struct {
	Path  string
	Mode  fs.FileMode
	Owner string
}

// A File is a file the plan writes atomically. With Keep, an existing file
// is left untouched (the operator's config).
type File struct {
	Path  string
	Mode  fs.FileMode
	Owner string
	Keep  bool
	// Content, or the file at Source when Content is nil.
	Content []byte
	Source  string
}

// A Step is one numbered line of progress: directories, files, an action
// that needs Go code (making a key, waiting for the service), then host
// commands, in that order.
type Step struct {
	Title    string
	Dirs     []Dir
	Files    []File
	Remove   []string // paths removed recursively
	Action   func(ctx context.Context, root string) (note string, err error)
	Commands []Command
	// Hint says what to do when the step fails.
	Hint string
}

// A Plan is the list of steps of an install or uninstall.
type Plan struct {
	Steps []Step
}

// Commands is every host command of the plan, in the order it runs.
func (p *Plan) Commands() []Command {
	var cs []Command
	for _, s := range p.Steps {
		cs = append(cs, s.Commands...)
	}
	return cs
}

// Dirs is every directory of the plan.
func (p *Plan) Dirs() []Dir {
	var ds []Dir
	for _, s := range p.Steps {
		ds = append(ds, s.Dirs...)
	}
	return ds
}

// Files is every file of the plan.
func (p *Plan) Files() []File {
	var fs []File
	for _, s := range p.Steps {
		fs = append(fs, s.Files...)
	}
	return fs
}

// executor carries out a plan: files under root, commands through run.
type executor struct {
	root string
	run  Runner
	out  io.Writer
}

// hostPath maps an absolute path on the target system into the root.
func hostPath(root, p string) string {
	if root == "" {
		return p
	}
	return filepath.Join(root, p)
}

// execute runs every step, printing "[i/n] title ... ok". It stops at the
// first failure and returns an error that says what to do next.
func (e *executor) execute(ctx context.Context, p *Plan) error {
	return e.executeSteps(ctx, p, 0, len(p.Steps))
}

// executeSteps runs steps [from, to) of p, numbered among all of p's.
func (e *executor) executeSteps(ctx context.Context, p *Plan, from, to int) error {
	n := len(p.Steps)
	for i := from; i < to; i++ {
		s := p.Steps[i]
		fmt.Fprintf(e.out, "[%d/%d] %s ... ", i+1, n, s.Title)
		note, err := e.step(ctx, s)
		if err != nil {
			fmt.Fprintln(e.out, "failed")
			if s.Hint != "" {
				return fmt.Errorf("%s: %w\n  what to do: %s", s.Title, err, s.Hint)
			}
			return fmt.Errorf("%s: %w", s.Title, err)
		}
		if note == "" {
			note = "ok"
		}
		fmt.Fprintln(e.out, note)
	}
	return nil
}

func (e *executor) step(ctx context.Context, s Step) (string, error) {
	var notes []string
	for _, d := range s.Dirs {
		p := hostPath(e.root, d.Path)
		// Parents (/var/lib) get the usual 0755, only d itself d.Mode.
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.Mkdir(p, d.Mode); err != nil && !os.IsExist(err) {
			return "", err
		}
		// MkdirAll leaves an existing directory's mode alone and is subject
		// to the umask; the data directory must end up 0700 either way.
		if err := os.Chmod(p, d.Mode); err != nil {
			return "", err
		}
	}
	for _, f := range s.Files {
		kept, err := e.writeFile(f)
		if err != nil {
			return "", err
		}
		if kept {
			notes = append(notes, "kept existing "+f.Path)
		}
	}
	for _, r := range s.Remove {
		p := hostPath(e.root, r)
		if _, err := os.Lstat(p); err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return "", err
		}
		if err := os.RemoveAll(p); err != nil {
			return "", err
		}
		notes = append(notes, "removed "+r)
	}
	if s.Action != nil {
		note, err := s.Action(ctx, e.root)
		if err != nil {
			return "", err
		}
		if note != "" {
			notes = append(notes, note)
		}
	}
	for _, c := range s.Commands {
		if err := e.run.Run(ctx, c); err != nil {
			if !c.MayFail {
				return "", err
			}
			notes = append(notes, "ignored: "+err.Error())
		}
	}
	return strings.Join(notes, "; "), nil
}

// writeFile writes f atomically under the root. It reports whether an
// existing file was kept.
func (e *executor) writeFile(f File) (kept bool, err error) {
	p := hostPath(e.root, f.Path)
	if f.Keep {
		if _, err := os.Lstat(p); err == nil {
			return true, nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return false, err
	}
	if f.Content != nil {
		return false, safeio.WriteFile(p, f.Content, f.Mode)
	}
	src, err := os.Open(f.Source)
	if err != nil {
		return false, err
	}
	defer src.Close()
	return false, safeio.WriteFrom(p, f.Mode, func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	})
}

// sameFile reports whether a and b hold the same bytes (a re-run of the
// installed binary need not copy itself over itself).
func sameFile(a, b string) bool {
	ai, err1 := os.Stat(a)
	bi, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		return false
	}
	if os.SameFile(ai, bi) {
		return true
	}
	if ai.Size() != bi.Size() {
		return false
	}
	ad, err1 := os.ReadFile(a)
	bd, err2 := os.ReadFile(b)
	return err1 == nil && err2 == nil && bytes.Equal(ad, bd)
}
