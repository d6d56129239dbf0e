package relay

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/mailbox"

	"github.com/chatrelay/chatrelay/acme"
)

// fuzzServer is a relay that is built but not started: its HTTPS handler
// and store work, no listener is open.
func fuzzServer(f *testing.F) *Server {
	f.Helper()
	dir := f.TempDir()
	cfg := DevDefault()
	cfg.DataDir = dir
	cfg.MaxLoad1, cfg.MinFreeMemory, cfg.MinFreeDisk = 0, 0, 0
	cfg.MaxMessageSize = 64 << 10
	log := slog.New(slog.DiscardHandler)
	certs, err := acme.New(acme.Config{Mode: acme.ModeSelfSigned, Domain: cfg.Domain, DataDir: dir, Logger: log})
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(cfg, certs, Options{Logger: log})
	if err != nil {
		f.Fatal(err)
	}
	if err := s.store.CreateAccount("bobbobbob@localhost", "long-enough-password", mailbox.Chosen); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Shutdown(context.Background()); certs.Close() })
	return s
}

// FuzzHTTPSRequest sends arbitrary requests (method, path, headers, body)
// to the HTTPS handler, /new and /mxdeliv above all: no panic, and a sane
// status: /mxdeliv answers only what its protocol knows, nothing answers
// 5xx but a full or starved relay.
func FuzzHTTPSRequest(f *testing.F) {
	s := fuzzServer(f)
	h := s.httpsHandler()
	msg := "From: <x@[127.0.0.1]>\r\nTo: <bobbobbob@localhost>\r\n\r\nhi\r\n"
	for _, seed := range []string{
		"POST /new HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
		"GET /new?token=abc HTTP/1.1\r\nHost: localhost\r\n\r\n",
		"PUT /new HTTP/1.1\r\nHost: localhost\r\n\r\n",
		"POST /mxdeliv HTTP/1.1\r\nHost: localhost\r\nX-Mail-From: x@[127.0.0.1]\r\nX-Mail-To: bobbobbob@localhost\r\nContent-Length: 55\r\n\r\n" + msg,
		"POST /mxdeliv HTTP/1.1\r\nHost: localhost\r\nX-Mail-To: <bobbobbob@localhost>\r\nX-Mail-To: x@example.org\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nFrom:\r\n0\r\n\r\n",
		"POST /mxdeliv HTTP/1.1\r\nHost: localhost\r\nX-Mail-To: bobbobbob@localhost\r\nContent-Length: 5\r\n\r\nFrom:",
		"GET /mxdeliv HTTP/1.1\r\nHost: localhost\r\n\r\n",
		"GET /downloads/..%2f..%2findex.db HTTP/1.1\r\nHost: localhost\r\n\r\n",
		"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.localhost\r\n\r\n",
		"GET /info HTTP/1.1\r\nHost: www.localhost:1443\r\nAccept-Language: de;q=0.9, *\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		req.RemoteAddr = "127.0.0.1:40000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		code := rec.Code
		if code < 200 || code > 599 {
			t.Fatalf("status %d", code)
		}
		if req.URL.Path == "/mxdeliv" {
			switch code {
			case 200, 400, 405, 413:
			default:
				t.Fatalf("/mxdeliv answered %d %q", code, rec.Body.String())
			}
			if code == 200 && !strings.HasPrefix(rec.Body.String(), "250 ") {
				t.Fatalf("/mxdeliv 200 without 250: %q", rec.Body.String())
			}
		}
		if code >= 500 && code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s answered %d %q", req.Method, req.URL, code, rec.Body.String())
		}
	})
}

// FuzzHeaderFrom reads the From: address of arbitrary messages: no panic,
// and an address only when there is exactly one, in lower case.
func FuzzHeaderFrom(f *testing.F) {
	for _, seed := range []string{
		"From: <Alice@Example.org>\r\n\r\nhi",
		"From: a@b.example, c@d.example\r\n\r\n",
		"From: =?utf-8?q?=C3=A4?= <a@[127.0.0.1]>\r\n\r\n",
		"From: \"x\\\"y\" <a@b>\r\nFrom: c@d\r\n\r\n",
		"from:\r\n  (comment) a@b\r\n\r\n",
		"From: <a@b\x00c>\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		from, err := headerFrom(bytes.NewReader(msg))
		if err != nil {
			return
		}
		if from != strings.ToLower(from) {
			t.Fatalf("address %q not lower case", from)
		}
		if !strings.Contains(from, "@") {
			t.Fatalf("address %q without @", from)
		}
	})
}
