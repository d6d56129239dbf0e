// Package load is the client side of chatrelay's benchmarks: a small IMAP
// client that logs in, selects and idles with as little memory as it can
// (so that tens of thousands of connections fit beside the server), a
// submission client, and the measured scenarios (P1 latency, P3
// throughput, P4 idle connections, P5 login storm). It speaks only plain
// IMAP and SMTP, so the same code measures chatrelay and its peers.
package load

import (
	"bufio"
	"compress/flate"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// ClientTLS accepts any certificate: every server under test has a
// self-signed one, and the benchmarks run on loopback only.
func ClientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", ClientSessionCache: nil}
}

// IMAPConn is one IMAP connection over implicit TLS.
type IMAPConn struct {
	conn   net.Conn
	r      *bufio.Reader
	tag    int
	exists int
	idling string // tag of the running IDLE
	// deflate: COMPRESS=DEFLATE is on; what is written goes as stored
	// DEFLATE blocks (no compressor state to hold per connection).
	deflate bool
}

// write sends p, as one stored DEFLATE block once COMPRESS is on.
func (c *IMAPConn) write(p []byte) (int, error) {
	if !c.deflate {
		return c.conn.Write(p)
	}
	if len(p) > 0xffff {
		return 0, errors.New("command too long for one stored block")
	}
	// BFINAL 0, BTYPE 00, padded to the byte; then LEN and NLEN. An
	// empty stored block after it is the sync flush (RFC 4978 section 4):
	// inflaters hand out a block's data once the next block starts.
	blk := make([]byte, 0, 10+len(p))
	blk = append(blk, 0, byte(len(p)), byte(len(p)>>8), ^byte(len(p)), ^byte(len(p)>>8))
	blk = append(blk, p...)
	blk = append(blk, 0, 0, 0, 0xff, 0xff)
	if _, err := c.conn.Write(blk); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Compress turns on COMPRESS=DEFLATE (RFC 4978), as Delta Chat does after
// login.
func (c *IMAPConn) Compress(ctx context.Context) error {
	if err := c.Cmd(ctx, "COMPRESS DEFLATE"); err != nil {
		return err
	}
	c.deflate = true
	c.r = bufio.NewReaderSize(flate.NewReader(c.r), 1024)
	return nil
}

// Sessions holds one TLS session cache per account, as each Delta Chat
// account keeps the tickets its relay gave it: a connection made with
// them resumes the session instead of a full handshake.
type Sessions []tls.ClientSessionCache

// NewSessions makes caches for accounts [0, n).
func NewSessions(n int) Sessions {
	s := make(Sessions, n)
	for i := range s {
		s[i] = tls.NewLRUClientSessionCache(2)
	}
	return s
}

// cache is account i's cache, nil without one.
func (s Sessions) cache(i int) tls.ClientSessionCache {
	if i < 0 || i >= len(s) {
		return nil
	}
	return s[i]
}

// DialIMAP connects with implicit TLS from local (nil: any loopback source)
// and reads the greeting.
func DialIMAP(ctx context.Context, addr string, local net.IP) (*IMAPConn, error) {
	return DialIMAPSession(ctx, addr, local, nil)
}

// DialIMAPSession is DialIMAP resuming from and keeping tickets in cache
// (nil: a full handshake every time).
func DialIMAPSession(ctx context.Context, addr string, local net.IP, cache tls.ClientSessionCache) (*IMAPConn, error) {
	d := &net.Dialer{Timeout: 30 * time.Second}
	if local != nil {
		d.LocalAddr = &net.TCPAddr{IP: local}
	}
	cfg := ClientTLS()
	cfg.ClientSessionCache = cache
	td := tls.Dialer{NetDialer: d, Config: cfg}
	conn, err := td.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &IMAPConn{conn: conn, r: bufio.NewReaderSize(conn, 1024)}
	c.deadline(ctx, 30*time.Second)
	line, err := c.readLine()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(line, "* OK") {
		conn.Close()
		return nil, fmt.Errorf("greeting %q", line)
	}
	return c, nil
}

func (c *IMAPConn) deadline(ctx context.Context, d time.Duration) {
	t := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
		t = dl
	}
	c.conn.SetDeadline(t)
}

// Close drops the connection without LOGOUT.
func (c *IMAPConn) Close() error { return c.conn.Close() }

// Resumed tells whether the TLS handshake resumed an earlier session.
func (c *IMAPConn) Resumed() bool {
	tc, ok := c.conn.(*tls.Conn)
	return ok && tc.ConnectionState().DidResume
}

// readLine reads one response line; a literal {n} at its end is read and
// folded into the line.
func (c *IMAPConn) readLine() (string, error) {
	var sb strings.Builder
	for range 1000 {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		sb.WriteString(line)
		s := strings.TrimRight(line, "\r\n")
		if !strings.HasSuffix(s, "}") {
			break
		}
		i := strings.LastIndexByte(s, '{')
		n, err := strconv.Atoi(strings.TrimSuffix(s[i+1:len(s)-1], "+"))
		if i < 0 || err != nil || n < 0 || n > 64<<20 {
			break
		}
		buf := make([]byte, n)
		if _, err := ioReadFull(c.r, buf); err != nil {
			return "", err
		}
		sb.Write(buf)
	}
	s := strings.TrimRight(sb.String(), "\r\n")
	c.noteExists(s)
	return s, nil
}

func (c *IMAPConn) noteExists(line string) {
	if f := strings.Fields(line); len(f) == 3 && f[0] == "*" && strings.EqualFold(f[2], "EXISTS") {
		if n, err := strconv.Atoi(f[1]); err == nil {
			c.exists = n
		}
	}
}

func ioReadFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Cmd sends one command and reads up to its tagged reply, which must be OK.
func (c *IMAPConn) Cmd(ctx context.Context, cmd string) error {
	c.tag++
	tag := "a" + strconv.Itoa(c.tag)
	c.deadline(ctx, 60*time.Second)
	if _, err := c.write([]byte(tag + " " + cmd + "\r\n")); err != nil {
		return err
	}
	for range 100000 {
		line, err := c.readLine()
		if err != nil {
			return fmt.Errorf("%s: %w", firstWord(cmd), err)
		}
		if rest, ok := strings.CutPrefix(line, tag+" "); ok {
			if strings.HasPrefix(strings.ToUpper(rest), "OK") {
				return nil
			}
			return fmt.Errorf("%s: %s", firstWord(cmd), rest)
		}
	}
	return errors.New("too many response lines")
}

func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return w
}

// Login logs in with LOGIN.
func (c *IMAPConn) Login(ctx context.Context, user, pass string) error {
	return c.Cmd(ctx, "LOGIN "+quote(user)+" "+quote(pass))
}

// Select selects INBOX; Exists is its message count afterwards.
func (c *IMAPConn) Select(ctx context.Context) error { return c.Cmd(ctx, "SELECT INBOX") }

// Exists is the last EXISTS count the server sent.
func (c *IMAPConn) Exists() int { return c.exists }

// Idle starts IDLE and returns once the server answered "+".
func (c *IMAPConn) Idle(ctx context.Context) error {
	c.tag++
	tag := "a" + strconv.Itoa(c.tag)
	c.deadline(ctx, 60*time.Second)
	if _, err := c.write([]byte(tag + " IDLE\r\n")); err != nil {
		return err
	}
	for range 1000 {
		line, err := c.readLine()
		if err != nil {
			return fmt.Errorf("IDLE: %w", err)
		}
		if strings.HasPrefix(line, "+") {
			c.idling = tag
			// Idle connections stay open for as long as the scenario
			// runs; only WaitExists reads from them again.
			c.conn.SetDeadline(time.Time{})
			return nil
		}
		if strings.HasPrefix(line, tag+" ") {
			return fmt.Errorf("IDLE: %s", line)
		}
	}
	return errors.New("IDLE: no continuation")
}

// WaitExists reads untagged responses during IDLE until EXISTS reports
// more than n messages, and returns the time it was read.
func (c *IMAPConn) WaitExists(n int, timeout time.Duration) (time.Time, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.conn.SetReadDeadline(time.Time{})
	for range 100000 {
		if _, err := c.readLine(); err != nil {
			return time.Time{}, err
		}
		if c.exists > n {
			return time.Now(), nil
		}
	}
	return time.Time{}, errors.New("no EXISTS")
}

// Done ends IDLE.
func (c *IMAPConn) Done(ctx context.Context) error {
	if c.idling == "" {
		return nil
	}
	tag := c.idling
	c.idling = ""
	c.deadline(ctx, 30*time.Second)
	if _, err := c.write([]byte("DONE\r\n")); err != nil {
		return err
	}
	for range 100000 {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, tag+" ") {
			return nil
		}
	}
	return errors.New("DONE: no tagged reply")
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
