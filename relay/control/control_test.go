package control

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func startServer(t *testing.T) (*Server, string) {
	t.Helper()
	s := NewServer(nil)
	s.Handle("echo", func(_ context.Context, args json.RawMessage, _ func(Progress)) (any, error) {
		var a AddrArgs
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, Errorf(CodeBadRequest, "bad args: %v", err)
		}
		if a.Addr == "" {
			return nil, Errorf(CodeNotFound, "no such account")
		}
		return a, nil
	})
	s.Handle("long", func(_ context.Context, _ json.RawMessage, progress func(Progress)) (any, error) {
		for i := range 3 {
			progress(Progress{Done: i + 1, Total: 3})
		}
		return "done", nil
	})
	s.Handle("fail", func(context.Context, json.RawMessage, func(Progress)) (any, error) {
		return nil, errors.New("disk on fire")
	})
	path := filepath.Join(t.TempDir(), "control.sock")
	if err := s.Listen(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestControlCallResultErrorsAndProgress(t *testing.T) {
	_, path := startServer(t)
	ctx := context.Background()
	var got AddrArgs
	if err := Call(ctx, path, "echo", AddrArgs{Addr: "a@b"}, &got, nil); err != nil || got.Addr != "a@b" {
		t.Fatalf("echo: %+v %v", got, err)
	}
	if err := Call(ctx, path, "echo", AddrArgs{}, nil, nil); !IsCode(err, CodeNotFound) {
		t.Fatalf("not found: %v", err)
	}
	if err := Call(ctx, path, "nope", nil, nil, nil); !IsCode(err, CodeUnknownCmd) {
		t.Fatalf("unknown command: %v", err)
	}
	if err := Call(ctx, path, "fail", nil, nil, nil); !IsCode(err, CodeInternal) || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("internal error: %v", err)
	}
	var steps []int
	var res string
	if err := Call(ctx, path, "long", nil, &res, func(p Progress) { steps = append(steps, p.Done) }); err != nil || res != "done" {
		t.Fatalf("long: %q %v", res, err)
	}
	if len(steps) != 3 || steps[2] != 3 {
		t.Fatalf("progress %v", steps)
	}
}

func TestControlRejectsOtherVersionsAndGarbage(t *testing.T) {
	_, path := startServer(t)
	for _, line := range []string{`{"v":2,"cmd":"echo"}`, `not json`} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(line + "\n"))
		var resp Response
		if err := json.NewDecoder(c).Decode(&resp); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if !resp.Done || resp.Error == nil || resp.Error.Code != CodeBadRequest {
			t.Fatalf("%s: %+v", line, resp)
		}
	}
}

func TestControlSocketModeAndStaleFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "control.sock")
	// A socket file left by a dead relay.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	s := NewServer(nil)
	if err := s.Listen(path); err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v", fi.Mode(), err)
	}
	// A second server on a live socket is refused.
	if err := NewServer(nil).Listen(path); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second server: %v", err)
	}
	s.Close()
	if err := Call(context.Background(), path, "status", nil, nil, nil); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("after close: %v", err)
	}
}

func TestControlCloseCancelsJobs(t *testing.T) {
	s := NewServer(nil)
	started := make(chan struct{})
	s.Handle("wait", func(ctx context.Context, _ json.RawMessage, _ func(Progress)) (any, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	path := filepath.Join(t.TempDir(), "control.sock")
	if err := s.Listen(path); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Call(context.Background(), path, "wait", nil, nil, nil) }()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("request never arrived")
	}
	s.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("cancelled job reported success")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the job")
	}
}
