package iroh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const wait = 30 * time.Second

type testRelay struct {
	srv *Server
	m   *Metrics
	ts  *httptest.Server
}

func newTestRelay(t *testing.T, opts Options) *testRelay {
	t.Helper()
	opts.Metrics = NewMetrics(prometheus.NewRegistry())
	srv := New(opts)
	ts := httptest.NewUnstartedServer(srv)
	// As the relay's own HTTPS server: the relay must clear these.
	ts.Config.ReadTimeout = time.Minute
	ts.Config.WriteTimeout = time.Minute
	ts.Start()
	t.Cleanup(func() { srv.Close(); ts.Close() })
	return &testRelay{srv: srv, m: opts.Metrics, ts: ts}
}

func (r *testRelay) dial(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", r.ts.Listener.Addr().String(), wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func newPriv(t *testing.T) ed25519.PrivateKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// connect joins a native client and waits until the relay has it.
func (r *testRelay) connect(t *testing.T) *Client {
	t.Helper()
	c, err := Handshake(r.dial(t), "relay.test", newPriv(t), ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "client registered", func() bool {
		r.srv.mu.Lock()
		defer r.srv.mu.Unlock()
		return r.srv.clients[c.Key] != nil
	})
	return c
}

func (r *testRelay) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func recvFrom(t *testing.T, c *Client, from NodeKey, want []byte) {
	t.Helper()
	src, p, err := c.Recv(time.Now().Add(wait))
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if src != from || !bytes.Equal(p, want) {
		t.Fatalf("got %q from %x, want %q from %x", p, src[:4], want, from[:4])
	}
}

// closedSoon waits for the relay to close c's connection: a read ends in
// EOF (or a reset) rather than the deadline.
func closedSoon(t *testing.T, c *Client) {
	t.Helper()
	for i := 0; i < 100; i++ {
		_, _, err := c.Read(time.Now().Add(wait))
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v", wait)
		}
		return
	}
	t.Fatal("connection still sending frames")
}

func TestRelayForwardsBetweenNativeClients(t *testing.T) {
	r := newTestRelay(t, Options{})
	a, b := r.connect(t), r.connect(t)
	if err := a.Send(b.Key, []byte("hello b")); err != nil {
		t.Fatal(err)
	}
	recvFrom(t, b, a.Key, []byte("hello b"))
	if err := b.Send(a.Key, []byte("hello a")); err != nil {
		t.Fatal(err)
	}
	recvFrom(t, a, b.Key, []byte("hello a"))
	// Counted once written, which may be just after the reader has it.
	r.waitFor(t, "two packets counted", func() bool { return testutil.ToFloat64(r.m.Packets) == 2 })
	if got := testutil.ToFloat64(r.m.Bytes); got != 14 {
		t.Errorf("bytes forwarded %v, want 14", got)
	}
	if got := testutil.ToFloat64(r.m.Nodes); got != 2 {
		t.Errorf("nodes %v, want 2", got)
	}
	// A packet for a node that is not here is dropped and counted.
	if err := a.Send(NodeKey{1}, []byte("nobody")); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "drop counted", func() bool { return testutil.ToFloat64(r.m.Dropped.WithLabelValues("no_peer")) == 1 })
}

// TestRelayWebSocketToNative: a browser's WebSocket client and core's
// native client reach each other through the same relay.
func TestRelayWebSocketToNative(t *testing.T) {
	r := newTestRelay(t, Options{})
	native := r.connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+r.ts.Listener.Addr().String()+RelayPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	priv := newPriv(t)
	var wsKey NodeKey
	copy(wsKey[:], priv.Public().(ed25519.PublicKey))
	if err := ws.Write(ctx, websocket.MessageBinary, append([]byte{FrameClientInfo}, MarshalClientInfo(priv, ProtocolVersion)...)); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "websocket client registered", func() bool { return r.srv.Nodes() == 2 })
	msg := append(append([]byte{FrameSendPacket}, native.Key[:]...), "from the browser"...)
	if err := ws.Write(ctx, websocket.MessageBinary, msg); err != nil {
		t.Fatal(err)
	}
	recvFrom(t, native, wsKey, []byte("from the browser"))
	if err := native.Send(wsKey, []byte("from core")); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		typ, m, err := ws.Read(ctx)
		if err != nil || i > 100 {
			t.Fatalf("websocket read: %v", err)
		}
		if typ != websocket.MessageBinary || len(m) == 0 || m[0] != FrameRecvPacket {
			continue
		}
		if !bytes.Equal(m[1:1+KeyLen], native.Key[:]) || string(m[1+KeyLen:]) != "from core" {
			t.Fatalf("websocket got %x", m)
		}
		break
	}
	if got := testutil.ToFloat64(r.m.Accepts.WithLabelValues("websocket")); got != 1 {
		t.Errorf("websocket accepts %v", got)
	}
}

func TestRelayAnswersPing(t *testing.T) {
	r := newTestRelay(t, Options{})
	a := r.connect(t)
	if err := a.Write(FramePing, []byte("8 bytes!")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		typ, p, err := a.Read(time.Now().Add(wait))
		if err != nil {
			t.Fatal(err)
		}
		if typ == FramePong {
			if string(p) != "8 bytes!" {
				t.Fatalf("pong %q", p)
			}
			return
		}
	}
	t.Fatal("no pong")
}

// TestRelayMalformedFrameClosesOnlyThatClient: a client that breaks the
// protocol loses its connection; the others keep theirs.
func TestRelayMalformedFrameClosesOnlyThatClient(t *testing.T) {
	cases := map[string][]byte{
		"unknown type":       AppendFrame(nil, 99, []byte("x")),
		"short ping":         AppendFrame(nil, FramePing, []byte("1234")),
		"packet too large":   AppendFrame(nil, FrameSendPacket, make([]byte, KeyLen+MaxPacketSize+1)),
		"huge length":        {FrameSendPacket, 0x7f, 0xff, 0xff, 0xff},
		"server-only frame":  AppendFrame(nil, FrameRecvPacket, make([]byte, KeyLen)),
		"second client info": AppendFrame(nil, FrameClientInfo, MarshalClientInfo(testKey(4), 3)),
	}
	for name, frame := range cases {
		t.Run(name, func(t *testing.T) {
			r := newTestRelay(t, Options{})
			a, b, bad := r.connect(t), r.connect(t), r.connect(t)
			if _, err := bad.conn.Write(frame); err != nil {
				t.Fatal(err)
			}
			closedSoon(t, bad)
			r.waitFor(t, "bad client gone", func() bool { return r.srv.Nodes() == 2 })
			if got := testutil.ToFloat64(r.m.Refusals.WithLabelValues("malformed")); got != 1 {
				t.Errorf("malformed refusals %v", got)
			}
			if err := a.Send(b.Key, []byte("still here")); err != nil {
				t.Fatal(err)
			}
			recvFrom(t, b, a.Key, []byte("still here"))
		})
	}
}

func TestRelayHandshake(t *testing.T) {
	t.Run("wrong version gets health and is closed", func(t *testing.T) {
		r := newTestRelay(t, Options{})
		c, err := Handshake(r.dial(t), "relay.test", newPriv(t), 2)
		if err != nil {
			t.Fatal(err)
		}
		typ, p, err := c.Read(time.Now().Add(wait))
		if err != nil || typ != FrameHealth || !strings.Contains(string(p), "version") {
			t.Fatalf("got %d %q %v, want a health frame", typ, p, err)
		}
		closedSoon(t, c)
		if got := testutil.ToFloat64(r.m.Refusals.WithLabelValues("version")); got != 1 {
			t.Errorf("version refusals %v", got)
		}
	})
	t.Run("bad signature", func(t *testing.T) {
		r := newTestRelay(t, Options{})
		c, err := upgrade(r.dial(t), "relay.test")
		if err != nil {
			t.Fatal(err)
		}
		info := MarshalClientInfo(newPriv(t), ProtocolVersion)
		info[len(magic)+KeyLen] ^= 1
		c.Write(FrameClientInfo, info)
		closedSoon(t, c)
		if got := testutil.ToFloat64(r.m.Refusals.WithLabelValues("handshake")); got != 1 {
			t.Errorf("handshake refusals %v", got)
		}
		if r.srv.Nodes() != 0 {
			t.Errorf("nodes %d", r.srv.Nodes())
		}
	})
	t.Run("first frame not client info", func(t *testing.T) {
		r := newTestRelay(t, Options{})
		c, err := upgrade(r.dial(t), "relay.test")
		if err != nil {
			t.Fatal(err)
		}
		c.Write(FrameSendPacket, make([]byte, KeyLen))
		closedSoon(t, c)
		if got := testutil.ToFloat64(r.m.Refusals.WithLabelValues("handshake")); got != 1 {
			t.Errorf("handshake refusals %v", got)
		}
	})
}

// TestRelayNodeGone: when a node leaves, a node that sent to it hears so.
func TestRelayNodeGone(t *testing.T) {
	r := newTestRelay(t, Options{})
	a, b := r.connect(t), r.connect(t)
	if err := a.Send(b.Key, []byte("x")); err != nil {
		t.Fatal(err)
	}
	recvFrom(t, b, a.Key, []byte("x"))
	b.Close()
	for i := 0; i < 10; i++ {
		typ, p, err := a.Read(time.Now().Add(wait))
		if err != nil {
			t.Fatal(err)
		}
		if typ == FrameNodeGone {
			if !bytes.Equal(p, b.Key[:]) {
				t.Fatalf("node gone for %x", p)
			}
			return
		}
	}
	t.Fatal("no node gone frame")
}

// TestRelayReconnectReplaces: a node connecting again takes over its key;
// packets go to the new connection.
func TestRelayReconnectReplaces(t *testing.T) {
	r := newTestRelay(t, Options{})
	a := r.connect(t)
	priv := newPriv(t)
	old, err := Handshake(r.dial(t), "relay.test", priv, ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "first connection", func() bool { return r.srv.Nodes() == 2 })
	fresh, err := Handshake(r.dial(t), "relay.test", priv, ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	closedSoon(t, old)
	if err := a.Send(fresh.Key, []byte("to the new one")); err != nil {
		t.Fatal(err)
	}
	recvFrom(t, fresh, a.Key, []byte("to the new one"))
	if n := r.srv.Nodes(); n != 2 {
		t.Errorf("nodes %d, want 2", n)
	}
}

func TestRelayConnectionLimits(t *testing.T) {
	r := newTestRelay(t, Options{MaxClientsPerIP: 2, MaxClients: 3})
	r.connect(t)
	r.connect(t)
	if _, err := Handshake(r.dial(t), "relay.test", newPriv(t), ProtocolVersion); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("third client from one address: %v, want 503", err)
	}
	if got := testutil.ToFloat64(r.m.Refusals.WithLabelValues("busy_ip")); got != 1 {
		t.Errorf("busy_ip refusals %v", got)
	}
	// The total limit counts every address: 127.0.0.2 is loopback too.
	conn, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: wait}).Dial("tcp", r.ts.Listener.Addr().String())
	if err != nil {
		t.Skipf("no second loopback address: %v", err)
	}
	defer conn.Close()
	if _, err := Handshake(conn, "relay.test", newPriv(t), ProtocolVersion); err != nil {
		t.Fatalf("client from a second address: %v", err)
	}
	conn2, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: wait}).Dial("tcp", r.ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if _, err := Handshake(conn2, "relay.test", newPriv(t), ProtocolVersion); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("fourth client: %v, want 503", err)
	}
	if got := testutil.ToFloat64(r.m.Refusals.WithLabelValues("busy")); got != 1 {
		t.Errorf("busy refusals %v", got)
	}
}

func TestRelayIdleClientClosed(t *testing.T) {
	// The server pings less often than the idle limit, and this client
	// never answers.
	r := newTestRelay(t, Options{IdleTimeout: 200 * time.Millisecond, PingInterval: time.Hour})
	c := r.connect(t)
	closedSoon(t, c)
	r.waitFor(t, "idle refusal", func() bool { return testutil.ToFloat64(r.m.Refusals.WithLabelValues("idle")) == 1 })
	r.waitFor(t, "idle client unregistered", func() bool { return r.srv.Nodes() == 0 })
}

// TestRelayRateLimit: a client sending above its bytes per second is
// slowed down, and still every packet arrives.
func TestRelayRateLimit(t *testing.T) {
	r := newTestRelay(t, Options{BytesPerSecond: MaxPacketSize})
	a, b := r.connect(t), r.connect(t)
	packet := make([]byte, MaxPacketSize/2)
	for i := range 3 {
		packet[0] = byte(i)
		if err := a.Send(b.Key, packet); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		src, p, err := b.Recv(time.Now().Add(wait))
		if err != nil || src != a.Key || len(p) != len(packet) || p[0] != byte(i) {
			t.Fatalf("packet %d: %v", i, err)
		}
	}
	if got := testutil.ToFloat64(r.m.RateLimited); got != 1 {
		t.Errorf("rate limited %v, want 1 (the third packet)", got)
	}
}

func TestRelayProbes(t *testing.T) {
	r := newTestRelay(t, Options{})
	get := func(path string, hdr http.Header) *http.Response {
		req, _ := http.NewRequest("GET", r.ts.URL+path, nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := r.ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get(PingPath, nil); resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("/ping: %s %v", resp.Status, resp.Header)
	}
	resp := get(NoContentPath, http.Header{challengeHeader: {"abc_1.-Z"}})
	if resp.StatusCode != 204 || resp.Header.Get(responseHeader) != "response abc_1.-Z" {
		t.Errorf("/generate_204: %s %v", resp.Status, resp.Header)
	}
	if resp := get(NoContentPath, http.Header{challengeHeader: {"no spaces"}}); resp.StatusCode != 204 || resp.Header.Get(responseHeader) != "" {
		t.Errorf("/generate_204 with a bad challenge: %s %v", resp.Status, resp.Header)
	}
	if resp := get(RelayPath, nil); resp.StatusCode != 400 {
		t.Errorf("/relay without upgrade: %s", resp.Status)
	}
}

func TestRelayCloseEndsClients(t *testing.T) {
	r := newTestRelay(t, Options{})
	c := r.connect(t)
	r.srv.Close()
	closedSoon(t, c)
	if _, err := Handshake(r.dial(t), "relay.test", newPriv(t), ProtocolVersion); err == nil {
		t.Fatal("handshake after Close succeeded")
	}
}
