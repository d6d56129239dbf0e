package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/relay/courier"
	"github.com/chatrelay/chatrelay/relay/dkim"
	"github.com/chatrelay/chatrelay/relay/queue"
)

// DKIMKeyPath is where a relay keeps its DKIM private key.
func DKIMKeyPath(dataDir string) string { return filepath.Join(dataDir, "dkim", "private.pem") }

// federation is everything about other relays: the outbound queue and the
// courier that empties it, our DKIM key, and how we find peers' keys.
type federation struct {
	key      *dkim.Key
	resolver courier.Resolver
	courier  *courier.Courier
	queue    *queue.Queue
	// keyClient fetches DKIM keys from static-route peers over HTTPS.
	keyClient *http.Client
}

func (s *Server) setupFederation(opts Options) error {
	fc := s.cfg.Federation
	key, err := dkim.LoadOrCreate(DKIMKeyPath(s.cfg.DataDir))
	if err != nil {
		return fmt.Errorf("dkim key: %w", err)
	}
	f := &federation{key: key, resolver: opts.Resolver}
	if f.resolver == nil {
		f.resolver = courier.NewDNSResolver(fc.Resolver)
	}
	var local net.IP
	var dk courier.DKIMOptions
	if s.cfg.IP != "" {
		// IP-literal senders carry no DKIM; the receiver checks that we
		// connect from the address in our domain instead.
		local = net.ParseIP(s.cfg.IP)
	} else {
		dk = courier.DKIMOptions{Key: key, Domain: s.cfg.Domain, Selector: fc.DKIMSelector}
	}
	own := courier.InterfaceAddrs()
	if ip, err := netip.ParseAddr(s.cfg.IP); err == nil {
		own = append(own, ip.Unmap()) // behind NAT it is no interface's
	}
	f.courier = courier.New(courier.Options{
		Resolver:       f.resolver,
		StaticRoutes:   fc.StaticRoutes,
		HeloName:       s.cfg.Hostname(),
		LocalAddr:      local,
		SMTPPort:       fc.SMTPPort,
		HTTPSPort:      fc.HTTPSPort,
		RootCAs:        opts.RootCAs,
		DKIM:           dk,
		DisableMXDeliv: fc.DisableMXDeliv,
		AllowTargets:   fc.AllowTargets(),
		OwnAddrs:       own,
		Now:            s.now,
		Logger:         s.log,
	})
	f.queue, err = queue.Open(queue.Options{
		DB:      s.store.DB(),
		Dir:     filepath.Join(s.cfg.DataDir, queue.SpoolDir),
		Deliver: s.countOutbound(f.courier.Deliver),
		Bounce:  s.bounce,
		MaxAge:  time.Duration(fc.BounceAfterHours) * time.Hour,
		Now:     s.now,
		Logger:  s.log,
	})
	if err != nil {
		return fmt.Errorf("outbound queue: %w", err)
	}
	f.keyClient = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsClientConfig(opts.RootCAs),
		DialContext:     (&net.Dialer{LocalAddr: localTCPAddr(local)}).DialContext,
	}}
	s.fed = f
	return nil
}

// countOutbound counts each recipient a delivery attempt reached.
func (s *Server) countOutbound(deliver queue.DeliverFunc) queue.DeliverFunc {
	return func(ctx context.Context, from, domain string, rcpts []string, body func() (io.ReadCloser, error)) []queue.Result {
		start := time.Now()
		res := deliver(ctx, from, domain, rcpts, body)
		for _, r := range res {
			if r.Err == nil {
				s.metrics.Delivered("out", time.Since(start))
			}
		}
		return res
	}
}

// Queue is the outbound queue (admin commands, tests).
func (s *Server) Queue() *queue.Queue { return s.fed.queue }

// DKIMRecord is the TXT record to publish at SELECTOR._domainkey.DOMAIN.
func (s *Server) DKIMRecord() string { return s.fed.key.TXTRecord() }

func localTCPAddr(ip net.IP) net.Addr {
	if ip == nil {
		return nil
	}
	return &net.TCPAddr{IP: ip}
}

// dkimLookup finds a peer's DKIM key: from the peer itself over HTTPS when
// a static route reaches it (its DNS may be gone), else from DNS.
func (s *Server) dkimLookup(name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	selector, domain, ok := strings.Cut(strings.ToLower(name), "._domainkey.")
	if ok {
		if route, found := s.cfg.Federation.StaticRoutes[domain]; found {
			return s.fetchPeerKey(ctx, route, domain, selector)
		}
	}
	return s.fed.resolver.LookupTXT(ctx, name)
}

const dkimKeyPath = "/.well-known/chatrelay/dkim/"

// fetchPeerKey asks a static-route peer for its DKIM TXT record. TLS is
// verified against the peer's domain, as for mail.
func (s *Server) fetchPeerKey(ctx context.Context, route, domain, selector string) ([]string, error) {
	host := route
	if h, _, err := net.SplitHostPort(route); err == nil {
		host = h
	}
	port := s.cfg.Federation.HTTPSPort
	u := fmt.Sprintf("https://%s%s%s", net.JoinHostPort(host, fmt.Sprint(port)), dkimKeyPath, selector)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Host = domain
	client := *s.fed.keyClient
	tr := client.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.ServerName = domain
	if strings.HasPrefix(domain, "_") {
		tr.TLSClientConfig.InsecureSkipVerify = true
	}
	client.Transport = tr
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, dkim.ErrNoKey
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("dkim key from %s: HTTP %d", domain, resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8192))
	if err != nil {
		return nil, err
	}
	return []string{strings.TrimSpace(string(b))}, nil
}

// handleDKIMKey publishes our DKIM TXT record for peers without DNS.
func (s *Server) handleDKIMKey(w http.ResponseWriter, r *http.Request) {
	sel := strings.TrimPrefix(r.URL.Path, dkimKeyPath)
	if s.cfg.IP != "" || sel != s.cfg.Federation.DKIMSelector {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, s.fed.key.TXTRecord())
}

// headerFrom reads the address in a message's From: header.
func headerFrom(r io.Reader) (string, error) {
	msg, err := mail.ReadMessage(bufio.NewReaderSize(r, 4096))
	if err != nil {
		return "", err
	}
	list, err := msg.Header.AddressList("From")
	if err != nil || len(list) != 1 {
		return "", fmt.Errorf("no single From address")
	}
	return strings.ToLower(list[0].Address), nil
}

func tlsClientConfig(roots *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
}
