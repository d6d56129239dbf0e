package imapext

import (
	"bufio"
	"compress/flate"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

const (
	testUser = "alice@example.org"
	testPass = "secret"
)

var testCaps = []string{"METADATA", "QUOTA", "QUOTA=RES-STORAGE", "ID", "COMPRESS=DEFLATE", "XCHATMAIL", "XDELTAPUSH"}

// fakeHandler keeps metadata in memory.
type fakeHandler struct {
	mu          sync.Mutex
	meta        map[string]string // mailbox + "\x00" + entry
	used, limit int64
}

func (h *fakeHandler) GetMetadata(user, mailbox string, entries []string, opts GetMetadataOptions) (map[string]*string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]*string)
	for _, e := range entries {
		if v, ok := h.meta[mailbox+"\x00"+e]; ok {
			out[e] = &v
		} else {
			out[e] = nil
		}
	}
	return out, nil
}

func (h *fakeHandler) SetMetadata(user, mailbox string, entries map[string]*string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(entries) > 3 {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: "METADATA TOOMANY", Text: "Too many entries"}
	}
	for e, v := range entries {
		if v == nil {
			delete(h.meta, mailbox+"\x00"+e)
		} else {
			h.meta[mailbox+"\x00"+e] = *v
		}
	}
	return nil
}

func (h *fakeHandler) Quota(user string) (int64, int64, error) { return h.used, h.limit, nil }

func (h *fakeHandler) get(mailbox, entry string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.meta[mailbox+"\x00"+entry]
	return v, ok
}

// loginSession tells the layer who logged in, as the mailbox package does.
type loginSession struct {
	imapserver.Session
	conn *imapserver.Conn
	env  *testEnv
}

func (s *loginSession) Login(username, password string) error {
	if d := time.Duration(s.env.loginTakes.Load()); d > 0 {
		time.Sleep(d) // a login queued behind a storm of password hashes
	}
	if err := s.Session.Login(username, password); err != nil {
		return err
	}
	UserSetter(s.conn.NetConn()).SetUser(username)
	return nil
}

// Idle flushes updates queued before IDLE began: imapmemserver's tracker
// only wakes IDLE for updates that arrive after it started waiting, so an
// APPEND racing the IDLE command would otherwise go unseen (the mailbox
// package has its own IDLE loop without that gap).
func (s *loginSession) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	if err := s.Session.Poll(w, true); err != nil {
		return err
	}
	return s.Session.Idle(w, stop)
}

type testEnv struct {
	addr string
	h    *fakeHandler
	opts *Options
	srv  *Server

	mu    sync.Mutex
	conns []*Conn // the layer's connections, for notifyAll

	// loginTakes makes each LOGIN take that long; capDeadline caps every
	// read deadline of connections accepted afterwards, as the relay's
	// test hook does.
	loginTakes, capDeadline atomic.Int64
	socketWait              atomic.Bool // capped connections show their socket
}

// cappedConn shortens every read deadline to at most max from now.
type cappedConn struct {
	net.Conn
	max time.Duration
}

// syscallCappedConn also shows its socket, so that the layer waits for the
// client on the socket (wait.go) instead of in a read.
type syscallCappedConn struct{ *cappedConn }

func (c syscallCappedConn) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

func (c *cappedConn) SetReadDeadline(t time.Time) error {
	if limit := time.Now().Add(c.max); t.IsZero() || t.After(limit) {
		t = limit
	}
	return c.Conn.SetReadDeadline(t)
}

// notifyAll plays the mailbox package's hub: it tells every connection that
// its mailbox changed (imapmemserver has no such hook).
func (env *testEnv) notifyAll() {
	env.mu.Lock()
	defer env.mu.Unlock()
	for _, c := range env.conns {
		c.Notify()
	}
}

func newTestEnv(t *testing.T, mod func(*Options)) *testEnv {
	t.Helper()
	mem := imapmemserver.New()
	u := imapmemserver.NewUser(testUser, testPass)
	if err := u.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	mem.AddUser(u)
	env := &testEnv{}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			env.mu.Lock()
			env.conns = append(env.conns, c.NetConn().(*Conn))
			env.mu.Unlock()
			if k, ok := Kept(c.NetConn()).(*keptSession); ok {
				k.conn = c
				return k, &imapserver.GreetingData{PreAuth: true}, nil
			}
			s := &loginSession{Session: mem.NewSession(), conn: c, env: env}
			if env.opts.HibernateAfter > 0 {
				return &keptSession{loginSession: s}, nil, nil
			}
			return s, nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}},
		InsecureAuth: true,
		Logger:       log.New(io.Discard, "", 0),
	})
	env.h = &fakeHandler{meta: map[string]string{"\x00/shared/comment": "hello relay"}, used: 5000, limit: 100 << 20}
	env.opts = &Options{
		Server:       srv,
		Handler:      env.h,
		InsecureAuth: true,
		ExtraCaps:    testCaps,
		ID:           map[string]string{"name": "chatrelay", "version": "1"},
	}
	if mod != nil {
		mod(env.opts)
	}
	env.srv = New(*env.opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.addr = ln.Addr().String()
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if d := time.Duration(env.capDeadline.Load()); d > 0 {
				c = &cappedConn{Conn: c, max: d}
				if env.socketWait.Load() {
					c = syscallCappedConn{c.(*cappedConn)}
				}
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				env.srv.Serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		env.srv.Close()
		srv.Close()
		wg.Wait()
	})
	return env
}

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.test"},
		DNSNames:     []string{"relay.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (env *testEnv) client(t *testing.T) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(env.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (env *testEnv) loggedIn(t *testing.T) *imapclient.Client {
	t.Helper()
	c := env.client(t)
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatal(err)
	}
	return c
}

// rawConn is a client speaking IMAP by hand.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
	w  io.Writer
	fw *flate.Writer
}

func (env *testEnv) raw(t *testing.T) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawConn{t: t, c: c, br: bufio.NewReader(c), w: c}
	r.expect("* OK")
	return r
}

func (r *rawConn) send(s string) {
	r.t.Helper()
	r.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(r.w, s); err != nil {
		r.t.Fatal(err)
	}
	if r.fw != nil {
		if err := r.fw.Flush(); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *rawConn) line() string {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	l, err := r.br.ReadString('\n')
	if err != nil {
		r.t.Fatalf("reading response: %v (got %q)", err, l)
	}
	return l
}

// expect reads lines until one starts with prefix and returns it with the
// lines before it.
func (r *rawConn) expect(prefix string) (string, []string) {
	r.t.Helper()
	var before []string
	for {
		l := r.line()
		if strings.HasPrefix(l, prefix) {
			return l, before
		}
		if strings.HasPrefix(prefix, "+") || !strings.HasPrefix(l, "*") {
			r.t.Fatalf("want %q, got %q (after %q)", prefix, l, before)
		}
		before = append(before, l)
	}
}

// compress turns COMPRESS=DEFLATE on (tag z1); the client compresses at
// level.
func (r *rawConn) compress(level int) {
	r.t.Helper()
	r.send("z1 COMPRESS DEFLATE\r\n")
	r.expect("z1 OK")
	fw, _ := flate.NewWriter(r.c, level)
	r.w, r.fw = fw, fw
	r.br = bufio.NewReader(flate.NewReader(r.br))
}

func (r *rawConn) login() {
	r.t.Helper()
	r.send("l1 LOGIN " + testUser + " " + testPass + "\r\n")
	r.expect("l1 OK")
}

func TestCapabilitiesAdvertised(t *testing.T) {
	env := newTestEnv(t, nil)
	c := env.client(t)
	if err := c.WaitGreeting(); err != nil {
		t.Fatal(err)
	}
	for _, cp := range append([]string{"AUTH=PLAIN", "IMAP4rev1"}, testCaps...) {
		if !c.Caps().Has(imap.Cap(cp)) {
			t.Errorf("greeting lacks %s: %v", cp, c.Caps())
		}
	}
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatal(err)
	}
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range append([]string{"IDLE"}, testCaps...) {
		if !caps.Has(imap.Cap(cp)) {
			t.Errorf("CAPABILITY after login lacks %s: %v", cp, caps)
		}
	}
}

func TestLoginResponseCarriesCaps(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.send("l1 LOGIN " + testUser + " " + testPass + "\r\n")
	l, _ := r.expect("l1 OK")
	if !strings.Contains(l, "[CAPABILITY ") || !strings.Contains(l, " XDELTAPUSH") {
		t.Fatalf("login OK without our caps: %q", l)
	}
}

func TestMetadataWithClient(t *testing.T) {
	env := newTestEnv(t, nil)
	c := env.loggedIn(t)
	token := []byte("opaque-token:1234")
	if err := c.SetMetadata("INBOX", map[string]*[]byte{"/private/devicetoken": &token}).Wait(); err != nil {
		t.Fatal(err)
	}
	if v, _ := env.h.get("INBOX", "/private/devicetoken"); v != string(token) {
		t.Fatalf("stored token = %q", v)
	}
	data, err := c.GetMetadata("", []string{"/shared/comment", "/shared/admin"}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if v := data.Entries["/shared/comment"]; v == nil || string(*v) != "hello relay" {
		t.Fatalf("comment = %v", data.Entries)
	}
	if v, ok := data.Entries["/shared/admin"]; !ok || v != nil {
		t.Fatalf("admin should be NIL: %v", data.Entries)
	}
	maxSize := uint32(3)
	data, err = c.GetMetadata("", []string{"/shared/comment"}, &imapclient.GetMetadataOptions{MaxSize: &maxSize}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := data.Entries["/shared/comment"]; ok {
		t.Fatalf("value over MAXSIZE returned: %v", data.Entries)
	}
}

func TestSetMetadataHandlerError(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.login()
	r.send(`s1 SETMETADATA INBOX (/private/a "1" /private/b "2" /private/c "3" /private/d "4")` + "\r\n")
	if l, _ := r.expect("s1 "); !strings.HasPrefix(l, "s1 NO [METADATA TOOMANY]") {
		t.Fatalf("got %q", l)
	}
	r.send(`s2 SETMETADATA INBOX (/private/a* "1")` + "\r\n")
	if l, _ := r.expect("s2 "); !strings.HasPrefix(l, "s2 BAD") {
		t.Fatalf("wildcard entry accepted: %q", l)
	}
}

func TestQuotaWithClient(t *testing.T) {
	env := newTestEnv(t, nil)
	c := env.loggedIn(t)
	roots, err := c.GetQuotaRoot("INBOX").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 1 || roots[0].Root != "" {
		t.Fatalf("roots = %+v", roots)
	}
	st := roots[0].Resources[imap.QuotaResourceStorage]
	if st.Usage != 5 || st.Limit != 100<<10 {
		t.Fatalf("storage = %+v", st)
	}
	q, err := c.GetQuota("").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if q.Resources[imap.QuotaResourceStorage].Limit != 100<<10 {
		t.Fatalf("quota = %+v", q)
	}
	if _, err := c.GetQuota("other").Wait(); err == nil {
		t.Fatal("unknown quota root accepted")
	}
}

func TestIDWithClient(t *testing.T) {
	env := newTestEnv(t, nil)
	c := env.client(t)
	id, err := c.ID(&imap.IDData{Name: "Delta Chat", Version: "2.0"}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "chatrelay" || id.Version != "1" {
		t.Fatalf("id = %+v", id)
	}
	r := env.raw(t)
	r.send("i1 ID NIL\r\ni2 ID (\"name\" NIL \"os\" {5}\r\n")
	r.expect("i1 OK")
	r.expect("+ ")
	r.send("Linux)\r\n")
	r.expect("i2 OK")
	r.send("i3 ID (\"name\")\r\n")
	r.expect("i3 BAD")
}

func TestPipelinedCommandsStayInOrder(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.login()
	r.send("a1 SELECT INBOX\r\na2 GETMETADATA \"\" /shared/comment\r\na3 NOOP\r\na4 ID NIL\r\n" +
		"a5 GETQUOTAROOT INBOX\r\na6 CAPABILITY\r\na7 NOOP\r\n")
	var seen []string
	metaAfter := ""
	for len(seen) < 7 {
		l := r.line()
		if strings.HasPrefix(l, "* METADATA") {
			metaAfter = strings.Join(seen, ",")
		}
		if !strings.HasPrefix(l, "*") {
			seen = append(seen, strings.Fields(l)[0])
		}
	}
	if got := strings.Join(seen, ","); got != "a1,a2,a3,a4,a5,a6,a7" {
		t.Fatalf("tagged responses in order %s", got)
	}
	if metaAfter != "a1" {
		t.Fatalf("METADATA response after %q, want after a1", metaAfter)
	}
}

func TestSetMetadataLiterals(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.login()
	r.send("s1 SETMETADATA INBOX (/private/devicetoken {6}\r\n")
	r.expect("+ ")
	r.send("tok\r\n1)\r\n")
	r.expect("s1 OK")
	if v, _ := env.h.get("INBOX", "/private/devicetoken"); v != "tok\r\n1" {
		t.Fatalf("sync literal stored as %q", v)
	}
	r.send("s2 SETMETADATA INBOX (/private/devicetoken {4+}\r\nabcd /shared/x NIL)\r\ns3 NOOP\r\n")
	r.expect("s2 OK")
	r.expect("s3 OK")
	if v, _ := env.h.get("INBOX", "/private/devicetoken"); v != "abcd" {
		t.Fatalf("non-sync literal stored as %q", v)
	}
	r.send("g1 GETMETADATA INBOX (/private/devicetoken)\r\n")
	l, _ := r.expect("* METADATA")
	if !strings.Contains(l, `"abcd"`) {
		t.Fatalf("got %q", l)
	}
}

func TestMetadataValueBombRefused(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.MaxMetadataSize = 1024 })
	r := env.raw(t)
	r.login()
	r.send("b1 SETMETADATA INBOX (/private/x {100000000}\r\n")
	if l, _ := r.expect("b1 "); !strings.HasPrefix(l, "b1 NO [METADATA MAXSIZE 1024]") {
		t.Fatalf("got %q", l)
	}
	big := strings.Repeat("x", 5000)
	r.send("b2 SETMETADATA INBOX (/private/x {5000+}\r\n" + big + ")\r\nb3 NOOP\r\n")
	if l, _ := r.expect("b2 "); !strings.HasPrefix(l, "b2 NO [METADATA MAXSIZE 1024]") {
		t.Fatalf("got %q", l)
	}
	r.expect("b3 OK")
	r.send("b4 SETMETADATA INBOX (/private/x \"" + strings.Repeat("y", 2000) + "\")\r\n")
	if l, _ := r.expect("b4 "); !strings.HasPrefix(l, "b4 NO [METADATA MAXSIZE 1024]") {
		t.Fatalf("got %q", l)
	}
	if _, ok := env.h.get("INBOX", "/private/x"); ok {
		t.Fatal("oversized value stored")
	}
}

func TestUnauthenticatedMetadataRefused(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.send("m1 GETMETADATA \"\" /shared/comment\r\n")
	if l, _ := r.expect("m1 "); !strings.HasPrefix(l, "m1 BAD") {
		t.Fatalf("got %q", l)
	}
	r.send("m2 SETMETADATA INBOX (/private/x {3}\r\n")
	if l, _ := r.expect("m2 "); !strings.HasPrefix(l, "m2 BAD") {
		t.Fatalf("got %q (a + would invite the literal)", l)
	}
	r.send("m3 GETQUOTAROOT INBOX\r\n")
	r.expect("m3 BAD")
	r.send("m4 NOOP\r\n")
	r.expect("m4 OK")
}

func TestAuthenticatePlainContinuation(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.send("a1 AUTHENTICATE PLAIN\r\n")
	r.expect("+")
	r.send(base64.StdEncoding.EncodeToString([]byte("\x00"+testUser+"\x00"+testPass)) + "\r\n")
	l, _ := r.expect("a1 OK")
	if !strings.Contains(l, "METADATA") {
		t.Fatalf("AUTHENTICATE OK without our caps: %q", l)
	}
	r.send("a2 GETMETADATA \"\" /shared/comment\r\n")
	r.expect("* METADATA")
	r.expect("a2 OK")

	// A cancelled exchange ("*") ends the command; the next line is a command.
	r2 := env.raw(t)
	r2.send("c1 AUTHENTICATE PLAIN\r\n")
	r2.expect("+")
	r2.send("*\r\n")
	r2.expect("c1 BAD")
	r2.send("c2 NOOP\r\n")
	r2.expect("c2 OK")
}

func TestLiteralRefusedByServerStaysInSync(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	// imapserver refuses buffered literals over 4096 bytes.
	r.send("l1 LOGIN {5000}\r\n")
	if l, _ := r.expect("l1 "); !strings.HasPrefix(l, "l1 NO") {
		t.Fatalf("got %q", l)
	}
	junk := strings.Repeat("x", 2000) + "\r\nj1 LOGOUT\r\n" + strings.Repeat("y", 2988)
	r.send("l2 LOGIN {5000+}\r\n" + junk + " pw\r\nl3 NOOP\r\n")
	if l, _ := r.expect("l2 "); !strings.HasPrefix(l, "l2 NO") {
		t.Fatalf("got %q", l)
	}
	r.expect("l3 OK")
	r.login()
}

func TestAppendLargeLiteralPassesThrough(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.login()
	body := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef", 1<<16) + "\r\n"
	r.send(fmt.Sprintf("p1 APPEND INBOX {%d}\r\n", len(body)))
	r.expect("+")
	r.send(body + "\r\n")
	r.expect("p1 OK")
	r.send(fmt.Sprintf("p2 APPEND INBOX {%d+}\r\n%s\r\np3 SELECT INBOX\r\n", len(body), body))
	r.expect("p2 OK")
	l, _ := r.expect("p3 OK")
	_ = l
	r.send("p4 FETCH 2 (RFC822.SIZE)\r\n")
	l, _ = r.expect("* 2 FETCH")
	if !strings.Contains(l, fmt.Sprint(len(body))) {
		t.Fatalf("size mismatch: %q", l)
	}
	r.expect("p4 OK")
}

func TestLoginRefusedBeforeSTARTTLS(t *testing.T) {
	env := newTestEnv(t, func(o *Options) {
		o.InsecureAuth = false
		o.TLSConfig = &tls.Config{}
	})
	r := env.raw(t)
	r.send("c1 CAPABILITY\r\n")
	l, _ := r.expect("* CAPABILITY")
	for _, want := range []string{" STARTTLS", " LOGINDISABLED", " METADATA"} {
		if !strings.Contains(l, want) {
			t.Errorf("caps lack %s: %q", want, l)
		}
	}
	if strings.Contains(l, "AUTH=") {
		t.Errorf("caps offer AUTH before TLS: %q", l)
	}
	r.expect("c1 OK")
	r.send("l1 LOGIN " + testUser + " " + testPass + "\r\n")
	if l, _ := r.expect("l1 "); !strings.HasPrefix(l, "l1 NO [PRIVACYREQUIRED]") {
		t.Fatalf("got %q", l)
	}
	r.send("l2 LOGIN {17}\r\n")
	if l, _ := r.expect("l2 "); !strings.HasPrefix(l, "l2 NO [PRIVACYREQUIRED]") {
		t.Fatalf("got %q", l)
	}
	r.send("l3 AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testUser+"\x00"+testPass)) + "\r\n")
	if l, _ := r.expect("l3 "); !strings.HasPrefix(l, "l3 NO [PRIVACYREQUIRED]") {
		t.Fatalf("got %q", l)
	}
	r.send("l4 NOOP\r\n")
	r.expect("l4 OK")
}

func TestStartTLSThenLogin(t *testing.T) {
	cert := testCert(t)
	env := newTestEnv(t, func(o *Options) {
		o.InsecureAuth = false
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	conn, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := imapclient.NewStartTLS(conn, &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if caps.Has(imap.CapStartTLS) || caps.Has(imap.CapLoginDisabled) || !caps.Has("AUTH=PLAIN") {
		t.Fatalf("caps under TLS: %v", caps)
	}
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetMetadata("", []string{"/shared/comment"}, nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestStartTLSInjectionClosesConnection(t *testing.T) {
	cert := testCert(t)
	env := newTestEnv(t, func(o *Options) {
		o.InsecureAuth = false
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	r := env.raw(t)
	r.send("t1 STARTTLS\r\nt2 LOGIN " + testUser + " " + testPass + "\r\n")
	r.expect("t1 OK")
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := r.br.ReadString('\n'); err == nil {
		t.Fatalf("connection still open, got %q", l)
	}
}

func TestIdleThroughCompress(t *testing.T) {
	for _, notify := range []bool{false, true} {
		t.Run(fmt.Sprint("IdleNotify=", notify), func(t *testing.T) {
			testIdleThroughCompress(t, notify)
		})
	}
}

func testIdleThroughCompress(t *testing.T, notify bool) {
	env := newTestEnv(t, func(o *Options) { o.IdleNotify = notify })
	r := env.raw(t)
	r.login()
	r.compress(flate.BestSpeed)
	r.send("z2 COMPRESS DEFLATE\r\n")
	if l, _ := r.expect("z2 "); !strings.HasPrefix(l, "z2 NO [COMPRESSIONACTIVE]") {
		t.Fatalf("got %q", l)
	}
	r.send("z3 SELECT INBOX\r\n")
	r.expect("z3 OK")
	// The message lands before IDLE, so the update is waiting when IDLE
	// starts and must come out through the compressor at once, without a
	// race with imapmemserver's IDLE start (see TestIdleWithClient).
	other := env.loggedIn(t)
	msg := "Subject: hi\r\n\r\nhello\r\n"
	ac := other.Append("INBOX", int64(len(msg)), nil)
	io.WriteString(ac, msg)
	ac.Close()
	if _, err := ac.Wait(); err != nil {
		t.Fatal(err)
	}
	r.send("z4 IDLE\r\n")
	r.expect("+")
	if l := r.line(); l != "* 1 EXISTS\r\n" {
		t.Fatalf("during IDLE got %q", l)
	}
	if notify {
		// A change while idling comes through the compressor too.
		appendMsg(t, other)
		env.notifyAll()
		if l := r.line(); l != "* 2 EXISTS\r\n" {
			t.Fatalf("during IDLE got %q", l)
		}
	}
	r.send("DONE\r\n")
	r.expect("z4 OK")
	r.send("z5 GETQUOTAROOT INBOX\r\n")
	r.expect("z5 OK")
}

func appendMsg(t *testing.T, c *imapclient.Client) {
	t.Helper()
	msg := "Subject: hi\r\n\r\nhello\r\n"
	ac := c.Append("INBOX", int64(len(msg)), nil)
	io.WriteString(ac, msg)
	ac.Close()
	if _, err := ac.Wait(); err != nil {
		t.Fatal(err)
	}
}

// With IdleNotify the layer answers IDLE: updates queued before IDLE and
// notified during it come at once, DONE completes it, and the connection
// goes on with ordinary commands.
func TestLayerIdle(t *testing.T) {
	var idling atomic.Int32
	env := newTestEnv(t, func(o *Options) {
		o.IdleNotify = true
		o.OnIdle = func() func() {
			idling.Add(1)
			return func() { idling.Add(-1) }
		}
	})
	other := env.loggedIn(t)
	r := env.raw(t)
	r.login()
	r.send("a1 SELECT INBOX\r\n")
	r.expect("a1 OK")
	appendMsg(t, other) // before IDLE: announced when IDLE starts
	r.send("a2 IDLE\r\n")
	r.expect("+ idling")
	if l := r.line(); l != "* 1 EXISTS\r\n" {
		t.Fatalf("queued before IDLE: got %q", l)
	}
	if n := idling.Load(); n != 1 {
		t.Fatalf("OnIdle count %d", n)
	}
	for i := 2; i <= 4; i++ {
		appendMsg(t, other)
		env.notifyAll()
		env.notifyAll() // a second notification costs at most one more NOOP
		if l := r.line(); l != fmt.Sprintf("* %d EXISTS\r\n", i) {
			t.Fatalf("during IDLE got %q", l)
		}
	}
	// An expunge by the other session.
	if _, err := other.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := other.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := other.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	env.notifyAll()
	for {
		l := r.line()
		if l == "* 1 EXPUNGE\r\n" {
			break
		}
		if !strings.HasPrefix(l, "* 1 FETCH") { // the \Deleted flag
			t.Fatalf("during IDLE got %q", l)
		}
	}
	r.send("DONE\r\n")
	if l, _ := r.expect("a2 "); l != "a2 OK IDLE completed\r\n" {
		t.Fatalf("got %q", l)
	}
	r.send("a3 NOOP\r\n")
	r.expect("a3 OK")
	if n := idling.Load(); n != 0 {
		t.Fatalf("OnIdle count %d after DONE", n)
	}
	// Anything but DONE ends IDLE as imapserver does it, and is no command.
	r.send("a4 IDLE\r\n")
	r.expect("+ idling")
	r.send("a5 NOOP\r\n")
	if l, _ := r.expect("a4 "); !strings.HasPrefix(l, "a4 BAD [CLIENTBUG]") {
		t.Fatalf("got %q", l)
	}
	r.send("a6 IDLE\r\n")
	r.expect("+ idling")
	r.send("DONE\r\na7 GETQUOTAROOT INBOX\r\na8 LOGOUT\r\n")
	r.expect("a6 OK")
	r.expect("a7 OK")
	r.expect("a8 OK")
}

// Before login, and with arguments, IDLE goes to imapserver, which refuses
// it.
func TestLayerIdleRefused(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.IdleNotify = true })
	r := env.raw(t)
	r.send("a1 IDLE\r\n")
	r.expect("a1 BAD")
	r.login()
	r.send("a2 IDLE now\r\n")
	r.expect("a2 BAD")
	r.send("a3 NOOP\r\n")
	r.expect("a3 OK")
}

// An idle connection costs two goroutines: the layer's, waiting for the
// client, and imapserver's, waiting for a command.
func TestLayerIdleGoroutines(t *testing.T) {
	env := newTestEnv(t, func(o *Options) { o.IdleNotify = true })
	idleAll := func(n int) {
		for range n {
			r := env.raw(t)
			r.login()
			r.send("a1 SELECT INBOX\r\n")
			r.expect("a1 OK")
			r.send("a2 IDLE\r\n")
			r.expect("+ idling")
		}
	}
	idleAll(1) // imapserver's listener and the like
	settle := func() int {
		n := runtime.NumGoroutine()
		for range 50 {
			time.Sleep(20 * time.Millisecond)
			m := runtime.NumGoroutine()
			if m == n {
				break
			}
			n = m
		}
		return n
	}
	before := settle()
	const n = 20
	idleAll(n)
	after := settle()
	if per := float64(after-before) / n; per > 2 {
		t.Fatalf("%.2f goroutines per idle connection, want 2", per)
	}
}

func TestCompressRequiresLogin(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.send("z1 COMPRESS DEFLATE\r\n")
	r.expect("z1 BAD")
	r.login()
	r.send("z2 COMPRESS LZMA\r\n")
	r.expect("z2 BAD")
}

func TestIdleWithClient(t *testing.T) {
	env := newTestEnv(t, nil)
	got := make(chan uint32, 4)
	c, err := imapclient.DialInsecure(env.addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					got <- *d.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	other := env.loggedIn(t)
	msg := "Subject: hi\r\n\r\nhello\r\n"
	// imapmemserver's tracker can miss an update that lands while its IDLE
	// is starting (a go-imap race the mailbox package avoids; see
	// loginSession.Idle); what this test checks is that the layer carries
	// EXISTS through IDLE, so a second APPEND, a second later, is allowed.
	var n uint32
	for try := 0; try < 3 && n == 0; try++ {
		ac := other.Append("INBOX", int64(len(msg)), nil)
		io.WriteString(ac, msg)
		ac.Close()
		if _, err := ac.Wait(); err != nil {
			t.Fatal(err)
		}
		select {
		case n = <-got:
		case <-time.After(time.Duration(try+1) * time.Second):
		}
	}
	if n == 0 {
		t.Fatal("no EXISTS during IDLE")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(n), &imap.FetchOptions{RFC822Size: true}).Collect()
	if err != nil || len(msgs) != 1 || msgs[0].RFC822Size != int64(len(msg)) {
		t.Fatalf("fetch: %v %+v", err, msgs)
	}
}

// TestSlowLoginIsNotIdle: a client waiting for its LOGIN's answer is not
// idle, however long the answer takes (a login storm queues password
// hashes); the read timeout counts only while the client owes a command.
func TestSlowLoginIsNotIdle(t *testing.T) {
	for _, socketWait := range []bool{false, true} {
		t.Run(fmt.Sprintf("socketWait=%v", socketWait), func(t *testing.T) {
			env := newTestEnv(t, nil)
			env.capDeadline.Store(int64(200 * time.Millisecond))
			// LOGIN takes five periods.
			env.loginTakes.Store(int64(time.Second))
			env.socketWait.Store(socketWait)
			r := env.raw(t)
			r.send("a LOGIN " + testUser + " " + testPass + "\r\n")
			if line, _ := r.expect("a "); !strings.HasPrefix(line, "a OK") {
				t.Fatalf("slow LOGIN answered %q", line)
			}
			// An answer that comes just before a renewed deadline leaves
			// the client a whole period for its next command.
			env.loginTakes.Store(int64(390 * time.Millisecond))
			r2 := env.raw(t)
			r2.send("b LOGIN " + testUser + " " + testPass + "\r\n")
			if line, _ := r2.expect("b "); !strings.HasPrefix(line, "b OK") {
				t.Fatalf("second slow LOGIN answered %q", line)
			}
			time.Sleep(100 * time.Millisecond) // a client slow to send its next command
			r2.send("c NOOP\r\n")
			if line, _ := r2.expect("c "); !strings.HasPrefix(line, "c OK") {
				t.Fatalf("NOOP after a slow LOGIN answered %q", line)
			}
			// Once answered, a silent client is idle again and is logged out.
			if line := r.line(); !strings.Contains(line, "BYE") {
				t.Fatalf("idle client after login got %q, want BYE", line)
			}
		})
	}
}

func TestInvalidCommandBeforeLoginCloses(t *testing.T) {
	env := newTestEnv(t, nil)
	r := env.raw(t)
	r.send("+bad\r\n")
	r.expect("* BYE")
}

func TestLogoutEndsServe(t *testing.T) {
	env := newTestEnv(t, nil)
	c := env.loggedIn(t)
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed after LOGOUT")
	}
}

// corkedConn holds what is written while corked, until flush, so that
// several TLS records reach the server in one segment.
type corkedConn struct {
	net.Conn
	corked bool
	buf    []byte
}

func (c *corkedConn) Write(p []byte) (int, error) {
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

func (c *corkedConn) flush() error {
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// TestParkedReadSeesRecordsTLSHolds: two commands in two TLS records that
// arrive together. crypto/tls reads both from the socket while the layer
// asks for the first; a connection that then parks on the socket alone
// would wait for the second forever.
func TestParkedReadSeesRecordsTLSHolds(t *testing.T) {
	cert := testCert(t)
	env := newTestEnv(t, func(o *Options) {
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	r := env.raw(t)
	r.send("t1 STARTTLS\r\n")
	r.expect("t1 OK")
	cork := &corkedConn{Conn: r.c}
	tc := tls.Client(cork, &tls.Config{InsecureSkipVerify: true})
	r.c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r.br, r.w = bufio.NewReader(tc), tc
	cork.corked = true
	for i := range 3 {
		io.WriteString(tc, fmt.Sprintf("a%d NOOP\r\n", i))
		io.WriteString(tc, fmt.Sprintf("b%d NOOP\r\n", i))
		if err := cork.flush(); err != nil {
			t.Fatal(err)
		}
		r.expect(fmt.Sprintf("a%d OK", i))
		r.expect(fmt.Sprintf("b%d OK", i))
	}
}
