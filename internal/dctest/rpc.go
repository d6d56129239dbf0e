// Package dctest drives Delta Chat core (deltachat-rpc-server) from Go tests.
//
// deltachat-rpc-server speaks JSON-RPC 2.0 over stdin/stdout, one JSON object
// per line, with positional parameters. Requests are served concurrently, so
// replies are matched to requests by id. Events are fetched with the
// long-polling get_next_event_batch call, which one goroutine repeats for the
// life of the process and sorts into a queue per account.
package dctest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// RPC is one running deltachat-rpc-server process.
type RPC struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	dir   string

	writeMu sync.Mutex // serialises request lines on stdin

	mu      sync.Mutex
	nextID  int64
	pending map[int64]chan response
	queues  map[uint32]*eventQueue
	readErr error // set once stdout is closed

	readerDone chan struct{}
	stderrDone chan struct{}
	waitDone   chan struct{}
	stopEvents context.CancelFunc
	eventsDone chan struct{}

	eventLog *os.File
	net      *netLog

	closeOnce sync.Once
}

type request struct {
	JSONRPC string `json:"jsonrpc"`
	ID      int64  `json:"id"`
	Method  string `json:"method"`
	Params  []any  `json:"params"`
}

type response struct {
	ID     *int64          `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *Error          `json:"error"`
}

// Error is a JSON-RPC error reply from core.
type Error struct {
	Method  string `json:"-"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: rpc error %d: %s", e.Method, e.Code, e.Message)
}

// ErrClosed is returned by calls made after the server went away.
var ErrClosed = errors.New("deltachat-rpc-server closed")

// Start runs the deltachat-rpc-server binary bin with its accounts, logs and
// event record under dir. ctx bounds only the start-up (the first
// get_system_info call); the process lives until Close.
//
// Core's log (RUST_LOG=info) goes to dir/core.log, every event but Info to
// dir/events.log. Both are scanned for the hosts core connects to; see
// ConnectionTargets.
func Start(ctx context.Context, bin, dir string) (*RPC, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("dctest: %w", err)
	}
	coreLog, err := os.Create(filepath.Join(dir, "core.log"))
	if err != nil {
		return nil, fmt.Errorf("dctest: %w", err)
	}
	eventLog, err := os.Create(filepath.Join(dir, "events.log"))
	if err != nil {
		coreLog.Close()
		return nil, fmt.Errorf("dctest: %w", err)
	}

	cmd := exec.Command(bin)
	cmd.Dir = dir
	cmd.Env = coreEnv(filepath.Join(dir, "accounts"))
	stdin, err1 := cmd.StdinPipe()
	stdout, err2 := cmd.StdoutPipe()
	stderr, err3 := cmd.StderrPipe()
	if err := errors.Join(err1, err2, err3); err != nil {
		coreLog.Close()
		eventLog.Close()
		return nil, fmt.Errorf("dctest: %w", err)
	}
	if err := cmd.Start(); err != nil {
		coreLog.Close()
		eventLog.Close()
		return nil, fmt.Errorf("dctest: start %s: %w", bin, err)
	}

	r := &RPC{
		cmd:        cmd,
		stdin:      stdin,
		dir:        dir,
		pending:    make(map[int64]chan response),
		queues:     make(map[uint32]*eventQueue),
		readerDone: make(chan struct{}),
		stderrDone: make(chan struct{}),
		waitDone:   make(chan struct{}),
		eventsDone: make(chan struct{}),
		eventLog:   eventLog,
		net:        newNetLog(),
	}
	go r.readReplies(stdout)
	go func() {
		defer close(r.stderrDone)
		defer coreLog.Close()
		r.net.scan(stderr, coreLog)
	}()
	go func() {
		// Wait closes the pipes, so it runs only after both readers are done.
		<-r.readerDone
		<-r.stderrDone
		cmd.Wait()
		close(r.waitDone)
	}()

	if _, err := r.SystemInfo(ctx); err != nil {
		r.Close()
		return nil, fmt.Errorf("dctest: %s does not answer: %w", bin, err)
	}
	evctx, cancel := context.WithCancel(context.Background())
	r.stopEvents = cancel
	go r.pumpEvents(evctx)
	return r, nil
}

// coreEnv is the environment of the rpc server: ours, minus anything that
// would point core at a proxy, plus the accounts directory and log level.
// Core never learns a public host name from the tests (servers are given as
// 127.0.0.1); ConnectionTargets checks that it kept to that.
func coreEnv(accounts string) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch name, _, _ := strings.Cut(kv, "="); name {
		case "DC_ACCOUNTS_PATH", "RUST_LOG",
			"http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "DC_ACCOUNTS_PATH="+accounts, "RUST_LOG=info", "NO_COLOR=1")
}

// Dir is the directory given to Start (accounts, core.log, events.log).
func (r *RPC) Dir() string { return r.dir }

func (r *RPC) readReplies(stdout io.Reader) {
	defer close(r.readerDone)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var resp response
		if err := json.Unmarshal(sc.Bytes(), &resp); err != nil || resp.ID == nil {
			continue // not a reply; the server prints nothing else on stdout
		}
		r.mu.Lock()
		ch := r.pending[*resp.ID]
		delete(r.pending, *resp.ID)
		r.mu.Unlock()
		if ch != nil {
			ch <- resp
		}
	}
	err := sc.Err()
	if err == nil {
		err = ErrClosed
	}
	r.mu.Lock()
	r.readErr = err
	for id, ch := range r.pending {
		close(ch)
		delete(r.pending, id)
	}
	r.mu.Unlock()
}

// Call sends one request and waits for its reply or for ctx to end.
// params are sent as a positional array.
func (r *RPC) Call(ctx context.Context, method string, params ...any) (json.RawMessage, error) {
	if params == nil {
		params = []any{}
	}
	ch := make(chan response, 1)
	r.mu.Lock()
	if r.readErr != nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", method, ErrClosed)
	}
	r.nextID++
	id := r.nextID
	r.pending[id] = ch
	r.mu.Unlock()

	line, err := json.Marshal(request{JSONRPC: "2.0", ID: id, Method: method, Params: params})
	if err != nil {
		r.forget(id)
		return nil, fmt.Errorf("%s: encode params: %w", method, err)
	}
	r.writeMu.Lock()
	_, err = r.stdin.Write(append(line, '\n'))
	r.writeMu.Unlock()
	if err != nil {
		r.forget(id)
		return nil, fmt.Errorf("%s: write request: %w", method, err)
	}

	select {
	case resp, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("%s: %w", method, ErrClosed)
		}
		if resp.Error != nil {
			resp.Error.Method = method
			return nil, resp.Error
		}
		return resp.Result, nil
	case <-ctx.Done():
		r.forget(id)
		return nil, fmt.Errorf("%s: %w", method, context.Cause(ctx))
	}
}

func (r *RPC) forget(id int64) {
	r.mu.Lock()
	delete(r.pending, id)
	r.mu.Unlock()
}

// CallResult is Call followed by decoding the result into out.
func (r *RPC) CallResult(ctx context.Context, out any, method string, params ...any) error {
	raw, err := r.Call(ctx, method, params...)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s: decode result %.200s: %w", method, raw, err)
	}
	return nil
}

// Close ends the server: it closes stdin (core then stops all accounts and
// exits) and kills the process if it has not exited within five seconds.
// It is safe to call more than once.
func (r *RPC) Close() error {
	r.closeOnce.Do(func() {
		if r.stopEvents != nil {
			r.stopEvents()
		}
		r.stdin.Close()
		select {
		case <-r.waitDone:
		case <-time.After(5 * time.Second):
			r.cmd.Process.Kill()
			<-r.waitDone
		}
		if r.stopEvents != nil {
			<-r.eventsDone
		}
		r.eventLog.Close()
	})
	return nil
}
