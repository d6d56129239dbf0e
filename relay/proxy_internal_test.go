package relay

import (
	"net"
	"testing"
)

// In production only the relay's own names and addresses pass; loopback
// and localhost are dev-mode conveniences.
func TestProxyOwnHost(t *testing.T) {
	cfg := Default()
	cfg.Domain = "chat.example"
	cfg.IP = "203.0.113.7"
	p := &proxy{s: &Server{cfg: cfg}}
	var local string
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				local = n.IP.String()
				break
			}
		}
	}
	for host, want := range map[string]bool{
		"chat.example": true, "CHAT.example.": true, "www.chat.example": true, "mta-sts.chat.example": true,
		"autoconfig.chat.example": true, "203.0.113.7": true,
		"other.example": false, "chat.example.evil": false, "evilchat.example": false,
		"localhost": false, "127.0.0.1": false, "::1": false, "0.0.0.0": false, "192.0.2.1": false,
		"": false, "224.0.0.1": false,
	} {
		if got := p.ownHost(host); got != want {
			t.Errorf("ownHost(%q) = %v, want %v", host, got, want)
		}
	}
	if local != "" && !p.ownHost(local) {
		t.Errorf("this machine's address %s refused", local)
	}
	p.s.cfg.Dev = true
	for _, h := range []string{"localhost", "127.0.0.1", "127.0.0.2", "::1"} {
		if !p.ownHost(h) {
			t.Errorf("dev mode refused %s", h)
		}
	}
}
