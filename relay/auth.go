package relay

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/mailbox"
)

// Failed logins are throttled per client IP and per account: after
// failLimit failures within failWindow, further attempts are refused
// without checking the password until the window passes.
const (
	failLimit      = 10
	failWindow     = 5 * time.Minute
	throttleMaxKey = 100000
)

var errThrottled = errors.New("too many failed logins")

type authenticator struct {
	s     *Server
	byIP  *throttle
	byAcc *throttle
	guard *resourceGuard
}

func newAuthenticator(s *Server) *authenticator {
	return &authenticator{
		s:     s,
		byIP:  newThrottle(failLimit*5, failWindow),
		byAcc: newThrottle(failLimit, failWindow),
		guard: newResourceGuard(s.cfg),
	}
}

// login checks a login from any protocol, creating the account at first
// login when the registration rules allow. The reason for a refusal goes to
// the log; the client learns only that authentication failed, and which
// public account rule the address or password breaks (ruleReason).
func (a *authenticator) login(remote net.Addr, user, pass, proto string) (*mailbox.Account, error) {
	now := time.Now()
	ip := ipKey(remote) // IPv6: per /64, as the connection caps
	addr := strings.ToLower(strings.TrimSpace(user))
	if a.byIP.blocked(ip, now) || a.byAcc.blocked(addr, now) {
		a.s.log.Info("login throttled", "proto", proto)
		return nil, errThrottled
	}
	var create mailbox.CreateCheck
	if a.s.cfg.Registration == "open" {
		create = a.mayCreate
	}
	acc, err := a.s.store.Login(addr, pass, create)
	a.s.metrics.Login(proto, err == nil)
	if errors.Is(err, mailbox.ErrUnavailable) {
		a.s.log.Warn("new account refused", "proto", proto, "reason", err.Error())
		return nil, err
	} else if err != nil {
		a.byIP.fail(ip, now)
		a.byAcc.fail(addr, now)
		a.s.log.Info("login failed", "proto", proto, "reason", err.Error())
		if rule := a.s.ruleReason(addr, pass); rule != nil {
			return nil, rule
		}
		return nil, err
	}
	return acc, nil
}

// mayCreate applies SPEC section 4 to an unknown address at first login.
func (a *authenticator) mayCreate(addr, password string) error {
	if err := a.s.rules.CheckNewAccount(addr, password, a.s.cfg.MailDomain()); err != nil {
		return err
	}
	if err := a.guard.check(a.s.cfg.DataDir); err != nil {
		return fmt.Errorf("%w: %v", mailbox.ErrUnavailable, err)
	}
	return nil
}

func hostOf(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return host
}

// throttle counts failures per key in a fixed window, with a bound on the
// number of keys so an attacker cycling keys cannot grow it without limit.
type throttle struct {
	mu     sync.Mutex
	limit  int
	window time.Duration
	m      map[string]*failCount
}

type failCount struct {
	n     int
	start time.Time
}

func newThrottle(limit int, window time.Duration) *throttle {
	return &throttle{limit: limit, window: window, m: map[string]*failCount{}}
}

func (t *throttle) blocked(key string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[key]
	return c != nil && now.Sub(c.start) < t.window && c.n >= t.limit
}

func (t *throttle) fail(key string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[key]
	if c == nil || now.Sub(c.start) >= t.window {
		if len(t.m) >= throttleMaxKey {
			for k, v := range t.m {
				if now.Sub(v.start) >= t.window {
					delete(t.m, k)
				}
			}
			if len(t.m) >= throttleMaxKey {
				// Still full of live entries: forget an arbitrary one
				// rather than grow.
				for k := range t.m {
					delete(t.m, k)
					break
				}
			}
		}
		c = &failCount{start: now}
		t.m[key] = c
	}
	c.n++
}

// resourceGuard refuses new accounts while the machine is starved (SPEC
// section 4): high load, little free memory or disk. Readings are cached
// briefly so a burst of sign-ups does not read /proc each time.
type resourceGuard struct {
	cfg Config

	mu      sync.Mutex
	checked time.Time
	last    error
}

func newResourceGuard(cfg Config) *resourceGuard { return &resourceGuard{cfg: cfg} }

func (g *resourceGuard) check(dataDir string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.checked) < 5*time.Second {
		return g.last
	}
	g.checked = time.Now()
	g.last = nil
	if load, err := load1(); err == nil && g.cfg.MaxLoad1 > 0 && load > g.cfg.MaxLoad1 {
		g.last = fmt.Errorf("machine busy: load %.1f > %.1f", load, g.cfg.MaxLoad1)
	} else if mem, err := freeMemory(); err == nil && mem < g.cfg.MinFreeMemory {
		g.last = fmt.Errorf("low memory: %d MiB free", mem>>20)
	} else if disk, err := freeDisk(dataDir); err == nil && disk < g.cfg.MinFreeDisk {
		g.last = fmt.Errorf("low disk: %d MiB free", disk>>20)
	}
	return g.last
}
