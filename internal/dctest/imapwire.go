package dctest

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxRecord bounds what the proxy keeps of each direction of a connection.
const maxRecord = 8 << 20

// IMAPProxy sits between an IMAP client and an IMAP server, both speaking
// implicit TLS, and records what passes in plain text: it ends the client's
// TLS with a self-signed certificate of its own (so the client must accept
// invalid certificates) and opens TLS to the server. It asks the server for
// the ALPN protocol the client asked it for.
//
// Sessions decodes the record, following COMPRESS=DEFLATE (RFC 4978): after
// the server's OK to COMPRESS, both directions are raw DEFLATE streams.
type IMAPProxy struct {
	ln       net.Listener
	upstream string
	timeout  time.Duration

	mu     sync.Mutex
	conns  []*wireConn
	closed bool
	wg     sync.WaitGroup
}

// wireConn is one proxied connection and its record.
type wireConn struct {
	client, server net.Conn
	up, down       capBuffer // client->server, server->client
	err            error     // why the connection to the server failed
}

type capBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	truncated bool
}

func (b *capBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := maxRecord - b.buf.Len(); len(p) > room {
		b.buf.Write(p[:max(room, 0)])
		b.truncated = true
	} else {
		b.buf.Write(p)
	}
	return len(p), nil
}

func (b *capBuffer) snapshot() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes()), b.truncated
}

// NewIMAPProxy listens on a free port of 127.0.0.1 and forwards each
// connection to upstream (host:port, implicit TLS, certificate not checked).
func NewIMAPProxy(upstream string) (*IMAPProxy, error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, fmt.Errorf("dctest: proxy certificate: %w", err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"imap"}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		return nil, fmt.Errorf("dctest: proxy: %w", err)
	}
	p := &IMAPProxy{ln: ln, upstream: upstream, timeout: 10 * time.Second}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is where clients connect.
func (p *IMAPProxy) Addr() *net.TCPAddr { return p.ln.Addr().(*net.TCPAddr) }

func (p *IMAPProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		w := &wireConn{client: c}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns = append(p.conns, w)
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.wg.Done()
			p.serve(w)
		}()
	}
}

func (p *IMAPProxy) serve(w *wireConn) {
	defer w.client.Close()
	tc := w.client.(*tls.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		w.setErr(fmt.Errorf("client handshake: %w", err))
		return
	}
	var alpn []string
	if proto := tc.ConnectionState().NegotiatedProtocol; proto != "" {
		alpn = []string{proto}
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: p.timeout}, Config: &tls.Config{InsecureSkipVerify: true, NextProtos: alpn}}
	s, err := d.DialContext(ctx, "tcp", p.upstream)
	if err != nil {
		w.setErr(fmt.Errorf("dial %s: %w", p.upstream, err))
		return
	}
	p.mu.Lock()
	w.server = s
	closed := p.closed
	p.mu.Unlock()
	if closed {
		s.Close()
		return
	}
	defer s.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, rec io.Writer) {
		io.Copy(io.MultiWriter(dst, rec), src)
		// One side is done: end both, so the other copy ends too.
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go pipe(s, w.client, &w.up)
	go pipe(w.client, s, &w.down)
	<-done
	<-done
}

func (w *wireConn) setErr(err error) {
	w.up.mu.Lock()
	w.err = err
	w.up.mu.Unlock()
}

// Close stops listening, ends every proxied connection and waits for them.
func (p *IMAPProxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for _, w := range p.conns {
		w.client.Close()
		if w.server != nil {
			w.server.Close()
		}
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

// IMAPSession is one proxied connection, decoded.
type IMAPSession struct {
	// Commands are the client's lines, CRLF removed, with literals left
	// out (a line ending in {N} is joined with its continuation).
	Commands []string
	// Responses are the server's lines, the same way.
	Responses []string
	// Compressed: the client asked for COMPRESS DEFLATE and the server
	// said OK, so the rest was decoded from DEFLATE.
	Compressed bool
	// Truncated: the record hit its size limit.
	Truncated bool
	// Err is a failure to connect to the server or to decode the record.
	Err error
}

// Sessions decodes the record of every connection so far. Connections
// still open are decoded up to the last byte that passed.
func (p *IMAPProxy) Sessions() []IMAPSession {
	p.mu.Lock()
	conns := append([]*wireConn(nil), p.conns...)
	p.mu.Unlock()
	var out []IMAPSession
	for _, w := range conns {
		up, t1 := w.up.snapshot()
		down, t2 := w.down.snapshot()
		w.up.mu.Lock()
		err := w.err
		w.up.mu.Unlock()
		s := DecodeIMAP(up, down)
		s.Truncated = t1 || t2
		if err != nil {
			s.Err = errors.Join(err, s.Err)
		}
		out = append(out, s)
	}
	return out
}

var (
	compressCmd = regexp.MustCompile(`(?i)^(\S+) COMPRESS DEFLATE$`)
	literalEnd  = regexp.MustCompile(`\{(\d+)\+?\}$`)
)

// DecodeIMAP decodes both directions of one IMAP connection as recorded
// in plain text (after TLS). Both switch to DEFLATE after the server's OK
// to a COMPRESS DEFLATE command.
func DecodeIMAP(up, down []byte) IMAPSession {
	var s IMAPSession
	// The tags of COMPRESS commands, from the client's stream read plain:
	// past an accepted one, that is noise, which matches nothing.
	tags := map[string]bool{}
	decodeLines(up, func(line string) bool {
		if m := compressCmd.FindStringSubmatch(line); m != nil {
			tags[m[1]] = true
		}
		return false
	})
	var accepted string
	var err1, err2 error
	s.Responses, err1 = decodeLines(down, func(line string) bool {
		tag, rest, _ := strings.Cut(line, " ")
		if tags[tag] && len(rest) >= 2 && strings.EqualFold(rest[:2], "OK") {
			accepted = tag
			return true
		}
		return false
	})
	s.Compressed = accepted != ""
	s.Commands, err2 = decodeLines(up, func(line string) bool {
		m := compressCmd.FindStringSubmatch(line)
		return m != nil && m[1] == accepted
	})
	s.Err = errors.Join(err2, err1)
	return s
}

// decodeLines splits an IMAP stream into lines. When switchAt accepts a
// line, the bytes after it are inflated (raw DEFLATE) and read on. A
// stream that ends part way is not an error: the record is a snapshot.
func decodeLines(data []byte, switchAt func(line string) bool) ([]string, error) {
	var lines []string
	br := bufio.NewReader(bytes.NewReader(data))
	var r io.Reader = br
	switched := false
	var cur strings.Builder
	for {
		line, err := readLine(r)
		if line == "" && err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return lines, nil
			}
			return lines, err
		}
		if m := literalEnd.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			cur.WriteString(line)
			cur.WriteString(" ")
			if _, err := io.CopyN(io.Discard, r, n); err != nil {
				lines = append(lines, cur.String())
				return lines, nil
			}
			continue
		}
		cur.WriteString(line)
		full := cur.String()
		cur.Reset()
		lines = append(lines, full)
		if err != nil {
			return lines, nil
		}
		if !switched && switchAt != nil && switchAt(full) {
			switched = true
			// Whatever bufio read ahead is part of the DEFLATE stream.
			rest, _ := io.ReadAll(br)
			r = bufio.NewReader(flate.NewReader(bytes.NewReader(rest)))
		}
	}
}

// readLine reads up to LF and returns the line without CRLF. A last line
// without LF comes back with the error that ended it.
func readLine(r io.Reader) (string, error) {
	var b []byte
	var one [1]byte
	for {
		n, err := r.Read(one[:])
		if n == 1 {
			if one[0] == '\n' {
				return strings.TrimSuffix(string(b), "\r"), nil
			}
			b = append(b, one[0])
			if len(b) > 1<<20 {
				return string(b), errors.New("line over 1 MiB")
			}
		}
		if err != nil {
			return string(b), err
		}
	}
}

// selfSigned makes a throwaway certificate for 127.0.0.1 and localhost.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "dctest imap proxy"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
