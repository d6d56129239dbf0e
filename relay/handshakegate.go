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
// A handshake holds a slot only while it computes its answer to the
// ClientHello: from the moment the ClientHello has been read
// (tls.Config.GetConfigForClient) until the server first writes (its
// flight: ServerHello to Finished in TLS 1.3, to ServerHelloDone in 1.2,
// or a HelloRetryRequest). That is the key exchange and the signature,
// nearly all of a handshake's server CPU; no network wait falls in it, so
// a client that stalls holds nothing. What comes after the first write
// (a second ClientHello after a HelloRetryRequest, TLS 1.2's
// ClientKeyExchange) is not gated. Only connections the relay accepted
// (limitedConn) are gated; others pass. The configs are shared: nothing
// is kept per connection beyond two words in limitedConn.
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

// wrap has conf's handshakes gated and returns it.
func (g *handshakeGate) wrap(conf *tls.Config) *tls.Config {
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if c := gatedConn(hello.Conn); c != nil {
			c.engage(g)
		}
		return nil, nil // conf itself
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

// Write ends a gated handshake's computing: its first write is its answer
// to the ClientHello.
func (c *limitedConn) Write(p []byte) (int, error) {
	if c.gate.Load() != nil {
		c.disengage()
	}
	return c.Conn.Write(p)
}
