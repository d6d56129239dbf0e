package relay

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ipLimiter is a token bucket per client IP with a bound on the number of
// IPs it remembers.
type ipLimiter struct {
	mu    sync.Mutex
	every rate.Limit
	burst int
	m     map[string]*ipEntry
}

type ipEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

const ipLimiterMax = 50000

func newIPLimiter(every rate.Limit, burst int) *ipLimiter {
	return &ipLimiter{every: every, burst: burst, m: map[string]*ipEntry{}}
}

func (l *ipLimiter) allow(ip string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[ip]
	if e == nil {
		if len(l.m) >= ipLimiterMax {
			for k, v := range l.m {
				// A bucket idle long enough to be full again holds no state.
				if now.Sub(v.seen) > time.Hour {
					delete(l.m, k)
				}
			}
			if len(l.m) >= ipLimiterMax {
				return false
			}
		}
		e = &ipEntry{lim: rate.NewLimiter(l.every, l.burst)}
		l.m[ip] = e
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}
