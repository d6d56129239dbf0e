package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// HandlerFunc answers one command. args is the request's raw arguments
// (may be empty); progress reports on a long job. A returned *Error reaches
// the client as it is; any other error is reported as CodeInternal.
type HandlerFunc func(ctx context.Context, args json.RawMessage, progress func(Progress)) (any, error)

// Server answers requests on a unix socket.
type Server struct {
	log      *slog.Logger
	handlers map[string]HandlerFunc

	ln     net.Listener
	path   string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

// maxRequest bounds a request line; requests are small.
const maxRequest = 64 << 10

// NewServer makes a server; add commands with Handle, then Listen.
func NewServer(log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{log: log, handlers: map[string]HandlerFunc{}, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
}

// Handle registers the handler of cmd.
func (s *Server) Handle(cmd string, h HandlerFunc) { s.handlers[cmd] = h }

// maxSocketPath is the portable limit of a unix socket path (sun_path
// holds 108 bytes on Linux, 104 on BSDs, with the terminating NUL).
const maxSocketPath = 103

// Listen binds the socket at path (mode 0600) and serves in the background.
// A socket file left by a relay that died is replaced; one that a live
// process answers on is an error.
func (s *Server) Listen(path string) error {
	if len(path) > maxSocketPath {
		return fmt.Errorf("control socket path %s is longer than %d bytes; use a shorter data directory", path, maxSocketPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("control socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("control socket %s: another process is listening on it (is chatrelay already running?)", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove stale control socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	// The data directory is 0700 already; the socket mode keeps it private
	// even if the directory is opened up.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	s.ln, s.path = ln, path
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serve(ln)
	}()
	return nil
}

// Addr is the socket path.
func (s *Server) Addr() string { return s.path }

func (s *Server) serve(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("control socket stopped", "err", err)
			}
			return
		}
		s.mu.Lock()
		s.conns[conn] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(conn)
			s.mu.Lock()
			delete(s.conns, conn)
			s.mu.Unlock()
			conn.Close()
		}()
	}
}

func (s *Server) serveConn(conn net.Conn) {
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReaderSize(conn, 4096)
	line, err := readLine(r, maxRequest)
	if err != nil {
		s.write(conn, Response{V: Version, Done: true, Error: Errorf(CodeBadRequest, "read request: %v", err)})
		return
	}
	conn.SetReadDeadline(time.Time{})
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		s.write(conn, Response{V: Version, Done: true, Error: Errorf(CodeBadRequest, "request is not JSON: %v", err)})
		return
	}
	if req.V != Version {
		s.write(conn, Response{V: Version, Done: true, Error: Errorf(CodeBadRequest, "protocol version %d not supported (server speaks %d); use the chatrelay binary of the running relay", req.V, Version)})
		return
	}
	h := s.handlers[req.Cmd]
	if h == nil {
		s.write(conn, Response{V: Version, Done: true, Error: Errorf(CodeUnknownCmd, "unknown command %q", req.Cmd)})
		return
	}
	// The job ends when the client goes away: a closed connection shows
	// as a read returning.
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go func() {
		var b [1]byte
		conn.Read(b[:])
		cancel()
	}()
	var wmu sync.Mutex
	progress := func(p Progress) {
		wmu.Lock()
		defer wmu.Unlock()
		s.write(conn, Response{V: Version, Progress: &p})
	}
	res, err := h(ctx, req.Args, progress)
	wmu.Lock()
	defer wmu.Unlock()
	if err != nil {
		var ce *Error
		if !errors.As(err, &ce) {
			s.log.Error("control command failed", "cmd", req.Cmd, "err", err)
			ce = &Error{Code: CodeInternal, Message: err.Error()}
		}
		s.write(conn, Response{V: Version, Done: true, Error: ce})
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		s.write(conn, Response{V: Version, Done: true, Error: Errorf(CodeInternal, "encode result: %v", err)})
		return
	}
	s.write(conn, Response{V: Version, Done: true, Result: b})
}

func (s *Server) write(conn net.Conn, resp Response) {
	b, err := json.Marshal(resp)
	if err != nil {
		return
	}
	conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	conn.Write(append(b, '\n'))
}

// Close stops listening, cancels running jobs, and waits for them.
func (s *Server) Close() error {
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		// Let a handler finish its answer; a cancelled job returns soon.
		c.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// readLine reads up to '\n', refusing lines longer than limit.
func readLine(r *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > limit {
			return nil, fmt.Errorf("line longer than %d bytes", limit)
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}
