package policy

import (
	"container/list"
	"math"
	"strings"
	"sync"
	"time"
)

// DefaultMaxSenders is the most senders a RateLimiter remembers at once.
// An entry is about 100 bytes, so the default costs at most a few MiB.
const DefaultMaxSenders = 100_000

// RateLimiter limits how much mail each sender sends: a token bucket per
// sender that refills at perMinute and holds burst (SPEC section 5: 60 a
// minute, burst 10).
//
// Memory is bounded. A sender whose bucket has been idle long enough to
// refill completely is forgotten, which loses nothing: a new bucket is
// full too. Beyond MaxSenders the least recently seen sender is forgotten
// even if its bucket was not full; that sender gets a fresh burst, which is
// the price of a hard bound.
//
// The buckets are kept here rather than with golang.org/x/time/rate so
// that the time of refill is known, for forgetting, and entries stay small.
// It is safe for concurrent use.
type RateLimiter struct {
	mu         sync.Mutex
	perSecond  float64
	burst      float64
	refill     time.Duration // time for an empty bucket to fill
	maxSenders int
	senders    map[string]*list.Element
	lru        list.List // of *bucket, most recently seen at the front
}

type bucket struct {
	sender string
	tokens float64
	last   time.Time
}

// NewRateLimiter returns a limiter of perMinute messages a minute with
// bursts of burst. A perMinute of zero or less disables the limit; a burst
// below 1 is taken as 1.
func NewRateLimiter(perMinute float64, burst int) *RateLimiter {
	if burst < 1 {
		burst = 1
	}
	l := &RateLimiter{
		perSecond:  perMinute / 60,
		burst:      float64(burst),
		maxSenders: DefaultMaxSenders,
		senders:    make(map[string]*list.Element),
	}
	if l.perSecond > 0 {
		// Saturate rather than overflow for absurdly slow rates.
		l.refill = time.Duration(math.MaxInt64)
		if s := l.burst / l.perSecond; s < float64(math.MaxInt64/int64(time.Second)) {
			l.refill = time.Duration(s * float64(time.Second))
		}
	}
	return l
}

// SetMaxSenders changes how many senders are remembered at most (n >= 1).
func (l *RateLimiter) SetMaxSenders(n int) {
	if n < 1 {
		n = 1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maxSenders = n
	for l.lru.Len() > n {
		l.remove(l.lru.Back())
	}
}

// Len returns how many senders are remembered, for metrics and tests.
func (l *RateLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// Allow reports whether sender may send one more message at now, and if so
// counts it. Time is passed in so that callers and tests control it;
// a now earlier than a sender's last message counts as no time passed.
// Senders are compared without regard to case.
func (l *RateLimiter) Allow(sender string, now time.Time) bool {
	if l.perSecond <= 0 {
		return true
	}
	sender = strings.ToLower(sender)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetIdle(now)

	var b *bucket
	if e, ok := l.senders[sender]; ok {
		b = e.Value.(*bucket)
		if d := now.Sub(b.last); d > 0 {
			b.tokens = min(l.burst, b.tokens+d.Seconds()*l.perSecond)
			b.last = now
		}
		l.lru.MoveToFront(e)
	} else {
		for l.lru.Len() >= l.maxSenders {
			l.remove(l.lru.Back())
		}
		b = &bucket{sender: sender, tokens: l.burst, last: now}
		l.senders[sender] = l.lru.PushFront(b)
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// forgetIdle drops the senders unseen for a whole refill time. They sit at
// the back of the list, so the cost is proportional to what is dropped.
func (l *RateLimiter) forgetIdle(now time.Time) {
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		if now.Sub(e.Value.(*bucket).last) < l.refill {
			return
		}
		l.remove(e)
	}
}

func (l *RateLimiter) remove(e *list.Element) {
	delete(l.senders, e.Value.(*bucket).sender)
	l.lru.Remove(e)
}
