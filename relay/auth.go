package relay

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
)

// Failed logins slow the guesser, never the owner (SPEC section 4):
//
//   - failures are counted per client address (IPv6 per /64): after
//     ipFailLimit within failWindow that address is refused without a
//     password check, whatever account it names;
//   - failures are counted per account only together with the address they
//     came from: after failLimit, that address is refused for that account;
//     a correct password from any other address still works;
//   - against many addresses guessing one account (a botnet): once
//     failLimit different addresses that never logged in to the account
//     failed on it within failWindow, every attempt on it from such an
//     address waits attackDelay first (doubling per further failLimit
//     addresses, up to attackDelayMax); the password is still checked after
//     the wait, so the owner on a new device gets in, only later, and
//     addresses the account logged in from before (within knownGoodFor)
//     never wait.
//
// Every map is bounded (throttleMaxKey), so an address flood cannot grow
// them without limit.
const (
	failLimit      = 10
	ipFailLimit    = failLimit * 5
	failWindow     = 5 * time.Minute
	throttleMaxKey = 100000
	knownGoodFor   = 30 * 24 * time.Hour
	attackDelay    = 250 * time.Millisecond
	attackDelayMax = 2 * time.Second
)

var errThrottled = errors.New("too many failed logins")

// errCreationRate refuses an account creation over the per-address budget
// it shares with /new; the client may try again later.
var errCreationRate = fmt.Errorf("%w: too many new accounts from this address", mailbox.ErrUnavailable)

type authenticator struct {
	s *Server
	// byIP counts failures per client address, byAccIP per account and
	// address, byAcc per account the addresses not known good for it
	// that failed.
	byIP, byAccIP, byAcc *throttle
	// knownGood remembers the addresses each account logged in from.
	knownGood *throttle
	// newAccounts is the per-address budget of new accounts, shared by
	// /new and creation at first login (SPEC section 4).
	newAccounts *policy.RateLimiter
	// granted are the names given a new account from the budget within
	// the last minute: concurrent first logins of one name spend it once.
	grantMu sync.Mutex
	granted *throttle
	guard   *resourceGuard
	// sleep waits out an attack delay; tests replace it.
	sleep func(time.Duration)
}

func newAuthenticator(s *Server) *authenticator {
	return &authenticator{
		s:           s,
		byIP:        newThrottle(ipFailLimit, failWindow),
		byAccIP:     newThrottle(failLimit, failWindow),
		byAcc:       newThrottle(0, failWindow),
		knownGood:   newThrottle(0, knownGoodFor),
		newAccounts: policy.NewRateLimiter(s.cfg.NewAccountsPerMinute, s.cfg.NewAccountsBurst),
		granted:     newThrottle(0, time.Minute),
		guard:       newResourceGuard(s.cfg),
		sleep:       time.Sleep,
	}
}

// login checks a login from any protocol, creating the account at first
// login when the registration rules allow. The reason for a refusal goes to
// the log; the client learns only that authentication failed, and which
// public account rule the address or password breaks (ruleReason).
func (a *authenticator) login(local, remote net.Addr, user, pass, proto string) (*mailbox.Account, error) {
	now := time.Now()
	ip := ipKey(remote) // IPv6: per /64, as the connection caps
	addr := strings.ToLower(strings.TrimSpace(user))
	accIP := addr + "\x00" + ip
	if a.byIP.blocked(ip, now) || a.byAccIP.blocked(accIP, now) {
		a.s.log.Info("login throttled", "proto", proto)
		return nil, errThrottled
	}
	// A client whose login is being checked is not cut off by
	// prove_within_seconds nor evicted for a newcomer while it waits (an
	// attack delay, a slot for a slow hash); a failed login puts it back
	// among the unproven with a fresh deadline.
	a.s.limits.proved(local, remote)
	known := a.knownGood.count(accIP, now) > 0
	if !known {
		if d := attackWait(a.byAcc.count(addr, now)); d > 0 {
			a.s.log.Info("login delayed: account guessed from many addresses", "proto", proto)
			a.sleep(d)
		}
	}
	var create mailbox.CreateCheck
	if a.s.cfg.Registration == "open" {
		create = func(addr, password string) error { return a.mayCreate(ip, addr, password) }
	}
	acc, err := a.s.store.Login(addr, pass, create)
	a.s.metrics.Login(proto, err == nil)
	if errors.Is(err, mailbox.ErrUnavailable) {
		a.s.log.Warn("new account refused", "proto", proto, "reason", err.Error())
		return nil, err
	} else if err != nil {
		a.s.limits.idleAgain(local, remote)
		if !known && a.byAccIP.count(accIP, now) == 0 {
			// Counted once per address: many addresses make an attack
			// on the account, one address is only its own problem.
			a.byAcc.fail(addr, now)
		}
		a.byIP.fail(ip, now)
		a.byAccIP.fail(accIP, now)
		a.s.log.Info("login failed", "proto", proto, "reason", err.Error())
		if rule := a.s.ruleReason(addr, pass); rule != nil {
			return nil, rule
		}
		return nil, err
	}
	a.knownGood.fail(accIP, now)
	return acc, nil
}

// attackWait is the delay for an attempt on an account that n addresses
// not known good for it failed on.
func attackWait(n int) time.Duration {
	if n < failLimit {
		return 0
	}
	d := attackDelay
	for i := n / failLimit; i > 1 && d < attackDelayMax; i-- {
		d *= 2
	}
	return min(d, attackDelayMax)
}

// allowNewAccount spends one unit of the per-address budget of new
// accounts (SPEC section 4: /new and first login share it).
func (a *authenticator) allowNewAccount(ip string) bool {
	return a.newAccounts.Allow(ip, time.Now())
}

// mayCreate applies SPEC section 4 to an unknown address at first login
// from client address ip. The budget is spent last, so that a refused name
// does not use it up.
func (a *authenticator) mayCreate(ip, addr, password string) error {
	if err := a.s.rules.CheckNewAccount(addr, password, a.s.cfg.MailDomain()); err != nil {
		return err
	}
	if err := a.guard.check(a.s.cfg.DataDir); err != nil {
		return fmt.Errorf("%w: %v", mailbox.ErrUnavailable, err)
	}
	now := time.Now()
	a.grantMu.Lock()
	defer a.grantMu.Unlock()
	if a.granted.count(addr, now) > 0 {
		// A concurrent first login of this name spent the budget; the
		// store creates the account once.
		return nil
	}
	if !a.allowNewAccount(ip) {
		return errCreationRate
	}
	a.granted.fail(addr, now)
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
	return t.limit > 0 && t.count(key, now) >= t.limit
}

// count is the number of failures of key in its current window.
func (t *throttle) count(key string, now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[key]
	if c == nil || now.Sub(c.start) >= t.window {
		return 0
	}
	return c.n
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
