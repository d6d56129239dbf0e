package dctest

import (
	"bufio"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// Core logs every host it resolves or connects to, for example:
//
//	INFO deltachat::net::dns: No memory-cached DNS resolution for 127.0.0.1 available, ...
//	INFO deltachat::smtp: SMTP trying to connect to 127.0.0.1:465:tls.
//	INFO deltachat::imap::client: Attempting IMAP connection to 127.0.0.1 (127.0.0.1:993).
//
// and URLs it fetches (autoconfig, DCACCOUNT). Each pattern's first group is
// a host name or address, possibly with a port.
var targetPatterns = []*regexp.Regexp{
	regexp.MustCompile(`Attempting \w+ connection to (\S+) \(`),
	regexp.MustCompile(`Attempting \w+ connection to \S+ \(([^)\s]+)\)`),
	regexp.MustCompile(`trying to connect to (\S+)`),
	regexp.MustCompile(`DNS resolution for (\S+)`),
	regexp.MustCompile(`[Cc]onnect(?:ion|ing)? to (\S+)`),
	regexp.MustCompile(`\b(?:GET|POST|[Ff]etch\w*) (https?://\S+)`),
}

var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;]*m")

// netLog collects the hosts core mentions connecting to.
type netLog struct {
	mu      sync.Mutex
	targets map[string]bool
	local   []string // domains named in a hosts file of the test's own (LocalDomain)
}

func newNetLog() *netLog { return &netLog{targets: make(map[string]bool)} }

// scan copies core's log to w line by line and records connection targets.
func (n *netLog) scan(r io.Reader, w io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := ansiEscape.ReplaceAllString(sc.Text(), "")
		io.WriteString(w, line+"\n")
		n.scanLine(line)
	}
	io.Copy(io.Discard, r) // a line over 16 MiB: keep the pipe flowing
}

func (n *netLog) scanLine(line string) {
	for _, re := range targetPatterns {
		for _, m := range re.FindAllStringSubmatch(line, -1) {
			if h := targetHost(m[1]); h != "" {
				n.mu.Lock()
				n.targets[h] = true
				n.mu.Unlock()
			}
		}
	}
}

// targetHost reduces "127.0.0.1:465:tls.", "[::1]:993", "https://h/p" or
// "host." to the bare host name or address; "" if it is not one.
func targetHost(s string) string {
	s = strings.Trim(s, ".,;:'\"`()")
	if rest, ok := strings.CutPrefix(s, "https://"); ok {
		s = rest
	} else if rest, ok := strings.CutPrefix(s, "http://"); ok {
		s = rest
	}
	if i := strings.IndexAny(s, "/?#"); i >= 0 {
		s = s[:i]
	}
	if strings.HasPrefix(s, "[") {
		if i := strings.Index(s, "]"); i > 0 {
			return s[1:i]
		}
		return ""
	}
	if ip := net.ParseIP(s); ip != nil {
		return ip.String()
	}
	if i := strings.Index(s, ":"); i >= 0 {
		s = s[:i]
	}
	if s == "" || !strings.Contains(s, ".") && s != "localhost" {
		// Not a host: a word that happened to follow "connect to".
		return ""
	}
	if net.ParseIP(s) == nil && !validHostName(s) {
		return ""
	}
	return strings.ToLower(s)
}

func validHostName(s string) bool {
	for _, c := range s {
		if !(c == '.' || c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// isLoopback reports whether host is a loopback address or the name
// localhost (which core resolves itself, to loopback only).
func isLoopback(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ConnectionTargets lists every host or address core's log or events
// mentioned resolving, connecting to or fetching from, sorted.
func (r *RPC) ConnectionTargets() []string {
	r.net.mu.Lock()
	defer r.net.mu.Unlock()
	var all []string
	for h := range r.net.targets {
		all = append(all, h)
	}
	slices.Sort(all)
	return all
}

// LocalDomain tells that domain and the names under it are the test's own:
// named in the hosts file of a network namespace the test made, which
// has nothing but its own loopback, so reaching them does not leave the
// machine.
func (r *RPC) LocalDomain(domain string) {
	r.net.mu.Lock()
	defer r.net.mu.Unlock()
	r.net.local = append(r.net.local, strings.ToLower(domain))
}

// NonLoopbackTargets is ConnectionTargets without loopback hosts and
// LocalDomain names: any entry means core tried to leave the machine.
func (r *RPC) NonLoopbackTargets() []string {
	r.net.mu.Lock()
	local := slices.Clone(r.net.local)
	r.net.mu.Unlock()
	var bad []string
	for _, h := range r.ConnectionTargets() {
		if !isLoopback(h) && !slices.ContainsFunc(local, func(d string) bool { return h == d || strings.HasSuffix(h, "."+d) }) {
			bad = append(bad, h)
		}
	}
	return bad
}
