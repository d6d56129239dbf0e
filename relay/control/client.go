package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// ErrNotRunning is returned by Call when nothing listens on the socket.
var ErrNotRunning = errors.New("no relay is listening on the control socket")

// maxResponse bounds one response line (a long account list).
const maxResponse = 256 << 20

// Call sends cmd with args to the socket at path and decodes the result
// into result (which may be nil). progress, if not nil, hears of a long
// job's progress. Errors from the server are *Error; a socket with nothing
// behind it is ErrNotRunning.
func Call(ctx context.Context, path, cmd string, args, result any, progress func(Progress)) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("%w (%s)", ErrNotRunning, path)
		}
		return fmt.Errorf("connect to %s: %w", path, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req := Request{V: Version, Cmd: cmd}
	if args != nil {
		if req.Args, err = json.Marshal(args); err != nil {
			return err
		}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	r := bufio.NewReader(conn)
	for {
		line, err := readLine(r, maxResponse)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read response: %w", err)
		}
		var resp Response
		if err := json.Unmarshal(line, &resp); err != nil {
			return fmt.Errorf("bad response: %w", err)
		}
		if !resp.Done {
			if resp.Progress != nil && progress != nil {
				progress(*resp.Progress)
			}
			continue
		}
		if resp.Error != nil {
			return resp.Error
		}
		if result != nil && len(resp.Result) > 0 {
			if err := json.Unmarshal(resp.Result, result); err != nil {
				return fmt.Errorf("bad result: %w", err)
			}
		}
		return nil
	}
}
