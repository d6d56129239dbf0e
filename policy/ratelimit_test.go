package policy

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 6, 2, 10, 0, 0, 0, time.UTC)

func TestRateLimiterBurstThenRefusal(t *testing.T) {
	l := NewRateLimiter(60, 10)
	for i := range 10 {
		if !l.Allow(alice, t0) {
			t.Fatalf("message %d of the burst refused", i+1)
		}
	}
	if l.Allow(alice, t0) {
		t.Fatal("11th message at the same instant allowed")
	}
	if l.Allow("ALICE0001@example.org", t0) {
		t.Fatal("the same sender in upper case allowed")
	}
	if !l.Allow(bob, t0) {
		t.Fatal("another sender refused")
	}
}

func TestRateLimiterRecovers(t *testing.T) {
	l := NewRateLimiter(60, 10)
	for range 10 {
		l.Allow(alice, t0)
	}
	if l.Allow(alice, t0.Add(500*time.Millisecond)) {
		t.Fatal("allowed after half a token")
	}
	// 60 a minute: one more token each second.
	if !l.Allow(alice, t0.Add(time.Second)) {
		t.Fatal("refused after a second")
	}
	if l.Allow(alice, t0.Add(time.Second)) {
		t.Fatal("two messages allowed after one second")
	}
	// A long pause refills the bucket to burst, no more.
	now := t0.Add(time.Hour)
	for i := range 10 {
		if !l.Allow(alice, now) {
			t.Fatalf("message %d after an hour refused", i+1)
		}
	}
	if l.Allow(alice, now) {
		t.Fatal("more than burst after an hour")
	}
	// Time going backwards gives nothing.
	if l.Allow(alice, t0) {
		t.Fatal("allowed when the clock went back")
	}
}

func TestRateLimiterSustainedRate(t *testing.T) {
	l := NewRateLimiter(60, 10)
	allowed := 0
	for i := range 600 { // ten minutes, a message every 100ms
		if l.Allow(alice, t0.Add(time.Duration(i)*100*time.Millisecond)) {
			allowed++
		}
	}
	// burst + one a second for 59.9 seconds
	if allowed < 68 || allowed > 70 {
		t.Errorf("allowed %d messages in a minute, want burst 10 + 59", allowed)
	}
}

func TestRateLimiterForgetsIdleSenders(t *testing.T) {
	l := NewRateLimiter(60, 10)
	for i := range 1000 {
		l.Allow(fmt.Sprintf("user%05d@example.org", i), t0)
	}
	if n := l.Len(); n != 1000 {
		t.Fatalf("Len = %d, want 1000", n)
	}
	// Ten seconds later every bucket has refilled; the next call forgets
	// them all.
	l.Allow(alice, t0.Add(10*time.Second))
	if n := l.Len(); n != 1 {
		t.Errorf("Len after refill time = %d, want 1", n)
	}
}

func TestRateLimiterHardCap(t *testing.T) {
	l := NewRateLimiter(60, 10)
	l.SetMaxSenders(100)
	for range 10 {
		l.Allow(alice, t0)
	}
	for i := range 10_000 {
		l.Allow(fmt.Sprintf("user%05d@example.org", i), t0)
		if n := l.Len(); n > 100 {
			t.Fatalf("Len = %d after %d senders, want at most 100", n, i+1)
		}
	}
	// alice was evicted as the least recently seen: she starts afresh,
	// which is the documented price of the cap.
	if !l.Allow(alice, t0) {
		t.Error("evicted sender still limited")
	}
	l.SetMaxSenders(10)
	if n := l.Len(); n != 10 {
		t.Errorf("Len after SetMaxSenders(10) = %d", n)
	}
}

func TestRateLimiterKeepsRecentSenderUnderCap(t *testing.T) {
	l := NewRateLimiter(60, 10)
	l.SetMaxSenders(100)
	for range 10 {
		l.Allow(alice, t0)
	}
	for i := range 1000 {
		l.Allow(fmt.Sprintf("user%05d@example.org", i), t0)
		if l.Allow(alice, t0) {
			t.Fatalf("alice allowed after %d other senders: her bucket was lost though she stays recent", i+1)
		}
	}
}

func TestRateLimiterDisabled(t *testing.T) {
	l := NewRateLimiter(0, 10)
	for range 1000 {
		if !l.Allow(alice, t0) {
			t.Fatal("disabled limiter refused")
		}
	}
	if l.Len() != 0 {
		t.Error("disabled limiter remembers senders")
	}
	l = NewRateLimiter(1e-300, 0) // no overflow in the refill time
	if !l.Allow(alice, t0) || l.Allow(alice, t0.Add(time.Hour)) {
		t.Error("burst 0 should act as 1 and refill never")
	}
}

func TestRateLimiterConcurrent(t *testing.T) {
	l := NewRateLimiter(60, 10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				if l.Allow(alice, t0) {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
				l.Allow(fmt.Sprintf("g%d-%d@example.org", g, i), t0)
			}
		})
	}
	wg.Wait()
	if allowed != 10 {
		t.Errorf("allowed %d concurrent messages, want the burst of 10", allowed)
	}
}

func BenchmarkRateLimiterAllow(b *testing.B) {
	l := NewRateLimiter(60, 10)
	senders := make([]string, 1000)
	for i := range senders {
		senders[i] = fmt.Sprintf("user%05d@example.org", i)
	}
	now := t0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Millisecond)
		l.Allow(senders[i%len(senders)], now)
	}
}
