package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Endpoint is a running /metrics listener.
type Endpoint struct {
	ln  net.Listener
	srv *http.Server
	err chan error
}

// Serve listens on addr (host:port) and serves /metrics. The host must be
// a loopback address or "localhost" (SPEC section 3: metrics are
// localhost only) unless allowPublic is set, for an operator who puts the
// port behind a firewall of their own.
func (m *Metrics) Serve(addr string, allowPublic bool) (*Endpoint, error) {
	if !allowPublic {
		if err := CheckLoopback(addr); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); ok && !allowPublic && !a.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("metrics: %s is bound to %s, which is not loopback", addr, a.IP)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
	}
	e := &Endpoint{ln: ln, srv: srv, err: make(chan error, 1)}
	go func() { e.err <- srv.Serve(ln) }()
	return e, nil
}

// Addr is the bound address.
func (e *Endpoint) Addr() net.Addr { return e.ln.Addr() }

// Close stops the listener and waits for it.
func (e *Endpoint) Close() error {
	err := e.srv.Close()
	if serr := <-e.err; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	return err
}

// CheckLoopback refuses an address whose host is not a loopback IP or
// "localhost". An empty host (all interfaces) is refused.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics: address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("metrics: %q is not a loopback address; metrics are served on localhost only (set metrics_allow_public to override)", addr)
	}
	return nil
}
