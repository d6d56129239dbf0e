package dctest

import (
	"bufio"
	"bytes"
	"compress/flate"
	"crypto/tls"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func deflate(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, s)
	w.Flush() // a sync flush, as IMAP COMPRESS clients do; no final block
	return b.Bytes()
}

func TestDecodeIMAPFollowsCompress(t *testing.T) {
	up := []byte("a1 LOGIN u p\r\na2 COMPRESS DEFLATE\r\n")
	up = append(up, deflate(t, "a3 GETMETADATA \"\" (/shared/comment)\r\na4 APPEND INBOX {5+}\r\nhello\r\na5 GETQUOTAROOT INBOX\r\n")...)
	down := []byte("* OK hi\r\na1 OK\r\na2 OK DEFLATE active\r\n")
	down = append(down, deflate(t, "* METADATA \"\" (/shared/comment {3}\r\nabc)\r\na3 OK\r\n")...)

	s := DecodeIMAP(up, down)
	if s.Err != nil || !s.Compressed {
		t.Fatalf("Compressed = %v, Err = %v", s.Compressed, s.Err)
	}
	wantUp := []string{"a1 LOGIN u p", "a2 COMPRESS DEFLATE", `a3 GETMETADATA "" (/shared/comment)`, "a4 APPEND INBOX {5+} ", "a5 GETQUOTAROOT INBOX"}
	if !slices.Equal(s.Commands, wantUp) {
		t.Errorf("Commands = %q, want %q", s.Commands, wantUp)
	}
	wantDown := []string{"* OK hi", "a1 OK", "a2 OK DEFLATE active", `* METADATA "" (/shared/comment {3} )`, "a3 OK"}
	if !slices.Equal(s.Responses, wantDown) {
		t.Errorf("Responses = %q, want %q", s.Responses, wantDown)
	}

	// Refused: the server's NO leaves the stream plain.
	s = DecodeIMAP([]byte("a2 COMPRESS DEFLATE\r\na3 NOOP\r\n"), []byte("a2 NO not now\r\na3 OK\r\n"))
	if s.Compressed || !slices.Equal(s.Commands, []string{"a2 COMPRESS DEFLATE", "a3 NOOP"}) || !slices.Equal(s.Responses, []string{"a2 NO not now", "a3 OK"}) {
		t.Errorf("refused COMPRESS: %+v", s)
	}
}

// TestIMAPProxy runs the proxy between a client and a tiny server, both of
// which switch to DEFLATE, and reads the decoded record.
func TestIMAPProxy(t *testing.T) {
	cert, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"imap"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	alpn := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := c.(*tls.Conn)
		if tc.Handshake() != nil {
			return
		}
		alpn <- tc.ConnectionState().NegotiatedProtocol
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "* OK ready\r\n")
		line, _ := br.ReadString('\n') // a1 COMPRESS DEFLATE
		fmt.Fprintf(c, "%s OK DEFLATE active\r\n", strings.Fields(line)[0])
		zw, _ := flate.NewWriter(c, flate.BestSpeed)
		zr := bufio.NewReader(flate.NewReader(br))
		line, _ = zr.ReadString('\n') // a2 GETQUOTAROOT INBOX
		fmt.Fprintf(zw, "* QUOTAROOT INBOX \"\"\r\n%s OK done\r\n", strings.Fields(line)[0])
		zw.Flush()
		zr.ReadString('\n') // a3 LOGOUT
	}()

	p, err := NewIMAPProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := tls.Dial("tcp", p.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"imap"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	br.ReadString('\n')
	fmt.Fprintf(c, "a1 COMPRESS DEFLATE\r\n")
	if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, "a1 OK") {
		t.Fatalf("COMPRESS: %q", line)
	}
	zw, _ := flate.NewWriter(c, flate.BestSpeed)
	zr := bufio.NewReader(flate.NewReader(br))
	fmt.Fprintf(zw, "a2 GETQUOTAROOT INBOX\r\n")
	zw.Flush()
	zr.ReadString('\n')
	if line, _ := zr.ReadString('\n'); !strings.HasPrefix(line, "a2 OK") {
		t.Fatalf("GETQUOTAROOT: %q", line)
	}
	fmt.Fprintf(zw, "a3 LOGOUT\r\n")
	zw.Flush()

	if got := <-alpn; got != "imap" {
		t.Errorf("server saw ALPN %q, want imap passed on", got)
	}
	// The server may not have read a3 yet; wait for the record to have it.
	var s IMAPSession
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ss := p.Sessions()
		if len(ss) != 1 {
			t.Fatalf("%d sessions, want 1", len(ss))
		}
		if s = ss[0]; slices.Contains(s.Commands, "a3 LOGOUT") {
			break
		}
	}
	if s.Err != nil || !s.Compressed {
		t.Fatalf("session %+v", s)
	}
	if want := []string{"a1 COMPRESS DEFLATE", "a2 GETQUOTAROOT INBOX", "a3 LOGOUT"}; !slices.Equal(s.Commands, want) {
		t.Errorf("Commands = %q, want %q", s.Commands, want)
	}
	if want := []string{"* OK ready", "a1 OK DEFLATE active", `* QUOTAROOT INBOX ""`, "a2 OK done"}; !slices.Equal(s.Responses, want) {
		t.Errorf("Responses = %q, want %q", s.Responses, want)
	}
	// Close ends open connections and returns.
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	var one [1]byte
	if _, err := c.Read(one[:]); err == nil {
		t.Error("client connection still open after Close")
	}
}
