package relay

import (
	"crypto/tls"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// handshakeGate bounds how many TLS handshakes compute at once, so that a
// login storm (every client of a restarted relay reconnecting) leaves a
// core to the clients already connected: their deliveries and IDLE
// wake-ups do not queue behind a thousand key exchanges in Go's run
// queue, which knows no priorities.
//
// A handshake holds a slot only while it computes: from the moment its
// ClientHello has been read (tls.Config.GetConfigForClient) until it next
// reads from or writes to the network; each read that returns takes the
// slot again, until the handshake's last step (VerifyConnection, called
// once the server's flight is sent and before the client's Finished is
// read). A client that stalls mid-handshake therefore holds nothing, and
// no slot is held across a network wait. Only connections the relay
// accepted (limitedConn) are gated; others pass.
//
// A wait for a slot is bounded (maxWait): past it the handshake goes on
// without one, so a fault that kept a slot could slow handshakes but never
// stop them.
type handshakeGate struct {
	slots   chan struct{}
	maxWait time.Duration
	// bypassed counts handshakes that went on without a slot after
	// maxWait: under a sustained storm, or never.
	bypassed atomic.Int64
	// gated counts the handshakes that went through the gate.
	gated atomic.Int64
}

// handshakeGateWait is how long a handshake waits for a slot at most. A
// storm of 1000 handshakes in flight at 0.3 ms each queues for about
// 300 ms.
const handshakeGateWait = time.Second

// newHandshakeGate gives n slots; n <= 0 means GOMAXPROCS-1, at least 1.
func newHandshakeGate(n int) *handshakeGate {
	if n <= 0 {
		n = max(1, runtime.GOMAXPROCS(0)-1)
	}
	return &handshakeGate{slots: make(chan struct{}, n), maxWait: handshakeGateWait}
}

// acquire takes a slot, waiting at most maxWait; false means none was
// taken.
func (g *handshakeGate) acquire() bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(g.maxWait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-t.C:
		g.bypassed.Add(1)
		return false
	}
}

func (g *handshakeGate) release() { <-g.slots }

// collectors are the gate's metrics.
func (g *handshakeGate) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "chatrelay_tls_handshakes_gated_total",
			Help: "TLS handshakes that computed under the handshake gate (at most GOMAXPROCS-1 at once).",
		}, func() float64 { return float64(g.gated.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "chatrelay_tls_handshake_gate_timeouts_total",
			Help: "TLS handshakes that waited a second for a slot and went on without one: a sustained storm.",
		}, func() float64 { return float64(g.bypassed.Load()) }),
	}
}

// inUse is the number of slots held, for tests.
func (g *handshakeGate) inUse() int { return len(g.slots) }

// wrap has conf's handshakes gated. conf must not be changed or cloned
// afterwards: each handshake runs on a copy of conf as it is now.
func (g *handshakeGate) wrap(conf *tls.Config) *tls.Config {
	if g == nil {
		return conf
	}
	base := conf.Clone()
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c := gatedConn(hello.Conn)
		if c == nil {
			return nil, nil
		}
		c.engage(g)
		per := base.Clone()
		per.VerifyConnection = func(tls.ConnectionState) error {
			c.disengage()
			return nil
		}
		return per, nil
	}
	return conf
}

// gatedConn finds the relay's own connection beneath hello's, if any.
func gatedConn(c net.Conn) *limitedConn {
	for range 4 {
		switch v := c.(type) {
		case *limitedConn:
			return v
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// engage starts gating c's handshake and takes a slot for the work that
// follows the ClientHello.
func (c *limitedConn) engage(g *handshakeGate) {
	g.gated.Add(1)
	c.gate.Store(g)
	c.take(g)
}

// disengage ends gating: the handshake's work is done.
func (c *limitedConn) disengage() {
	if g := c.gate.Swap(nil); g != nil {
		c.letGo(g)
	}
}

// take acquires a slot for c. Close may run at the same time (an aborted
// handshake); exactly one of them lets the slot go.
func (c *limitedConn) take(g *handshakeGate) {
	if !g.acquire() {
		return
	}
	c.held.Store(true)
	if c.closed.Load() || c.gate.Load() == nil {
		c.letGo(g)
	}
}

func (c *limitedConn) letGo(g *handshakeGate) {
	if c.held.CompareAndSwap(true, false) {
		g.release()
	}
}

// Read gives the slot up while it waits on the network and takes it again
// when bytes arrived, while a handshake is gated.
func (c *limitedConn) Read(p []byte) (int, error) {
	g := c.gate.Load()
	if g == nil {
		return c.Conn.Read(p)
	}
	c.letGo(g)
	n, err := c.Conn.Read(p)
	if err == nil && c.gate.Load() == g {
		c.take(g)
	}
	return n, err
}

// Write gives the slot up: after a flight is written, a handshake waits
// for the client.
func (c *limitedConn) Write(p []byte) (int, error) {
	if g := c.gate.Load(); g != nil {
		c.letGo(g)
	}
	return c.Conn.Write(p)
}
