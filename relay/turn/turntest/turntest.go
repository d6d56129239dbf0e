// Package turntest has TURN client helpers for tests: pion/turn clients
// against a server on 127.0.0.1.
package turntest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	pion "github.com/pion/turn/v4"
)

// Dial makes a client of the TURN server on 127.0.0.1:port over
// transport ("udp" or "tcp"), closed when the test ends.
func Dial(tb testing.TB, transport string, port int, user, pass string) *pion.Client {
	tb.Helper()
	server := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var conn net.PacketConn
	switch transport {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		conn = c
	case "tcp":
		c, err := net.DialTimeout("tcp", server, 30*time.Second)
		if err != nil {
			tb.Fatal(err)
		}
		conn = pion.NewSTUNConn(c)
	default:
		tb.Fatalf("transport %q", transport)
	}
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelDisabled
	cl, err := pion.NewClient(&pion.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server, Conn: conn,
		Username: user, Password: pass, LoggerFactory: lf,
		// A busy machine: retransmit calmly.
		RTO: time.Second,
	})
	if err != nil {
		conn.Close()
		tb.Fatal(err)
	}
	if err := cl.Listen(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cl.Close(); conn.Close() })
	return cl
}

// Allocate allocates a relay address or fails the test.
func Allocate(tb testing.TB, cl *pion.Client) net.PacketConn {
	tb.Helper()
	relay, err := cl.Allocate()
	if err != nil {
		tb.Fatalf("allocate: %v", err)
	}
	tb.Cleanup(func() { relay.Close() })
	return relay
}

// Exchange sends datagrams from a to b's relay address and back, and
// checks each arrives from the other's relay address with its content.
// A relay passes on datagrams only from peers its client has a permission
// for, so each side first sends one to the other ("open", which makes the
// permission). Datagrams may be lost (UDP), so each is sent again until
// it arrives, at most 30 times.
func Exchange(tb testing.TB, a, b net.PacketConn) {
	tb.Helper()
	for _, p := range [][2]net.PacketConn{{a, b}, {b, a}} {
		if _, err := p[0].WriteTo([]byte("open"), p[1].LocalAddr()); err != nil {
			tb.Fatalf("permission for %v: %v", p[1].LocalAddr(), err)
		}
	}
	earlier := map[string]bool{"open": true}
	one := func(from, to net.PacketConn, text string) {
		defer func() { earlier[text] = true }()
		buf := make([]byte, 1500)
		for try := 0; ; try++ {
			if try == 30 {
				tb.Fatalf("%q from %v never arrived at %v", text, from.LocalAddr(), to.LocalAddr())
			}
			if _, err := from.WriteTo([]byte(text), to.LocalAddr()); err != nil {
				tb.Fatalf("send %q: %v", text, err)
			}
			to.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, src, err := to.ReadFrom(buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if err != nil {
				tb.Fatalf("read: %v", err)
			}
			if earlier[string(buf[:n])] {
				continue // a permission opener, or a late copy of an earlier datagram
			}
			if !bytes.Equal(buf[:n], []byte(text)) || src.String() != from.LocalAddr().String() {
				tb.Fatalf("got %q from %v, want %q from %v", buf[:n], src, text, from.LocalAddr())
			}
			return
		}
	}
	for i := range 3 {
		one(a, b, fmt.Sprintf("ping %d", i))
		one(b, a, fmt.Sprintf("pong %d", i))
	}
}

// WantCode fails the test unless err is a TURN error response with code.
func WantCode(tb testing.TB, err error, code stun.ErrorCode) {
	tb.Helper()
	var te *stun.TurnError
	if !errors.As(err, &te) || te.ErrorCodeAttr.Code != code {
		tb.Fatalf("got %v, want error %d", err, code)
	}
}
