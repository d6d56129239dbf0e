package policy

import (
	"fmt"
	"sync"
	"testing"
)

func TestCapsPerKeyAndTotal(t *testing.T) {
	c := NewCaps[string](3, 2)
	steps := []struct {
		key  string
		want Full
	}{
		{"a", NotFull}, {"a", NotFull}, {"a", KeyFull}, // a's two
		{"b", NotFull}, // three in all
		{"c", TotalFull}, {"b", TotalFull},
	}
	for i, s := range steps {
		if got := c.Acquire(s.key); got != s.want {
			t.Fatalf("step %d: Acquire(%s) = %v, want %v", i, s.key, got, s.want)
		}
	}
	if c.Len() != 3 || c.Held("a") != 2 || c.Held("b") != 1 || c.Keys() != 2 {
		t.Fatalf("Len %d, a %d, b %d, keys %d", c.Len(), c.Held("a"), c.Held("b"), c.Keys())
	}
	c.Release("a")
	if got := c.Acquire("c"); got != NotFull {
		t.Fatalf("after a release: Acquire(c) = %v", got)
	}
	if got := c.Acquire("a"); got != TotalFull {
		t.Fatalf("full again: Acquire(a) = %v", got)
	}
}

// A key that holds nothing is forgotten, and releasing it again changes
// nothing: a stray Release cannot free another key's slot.
func TestCapsReleaseForgetsEmptyKeys(t *testing.T) {
	c := NewCaps[int](1, 0)
	c.Acquire(1)
	c.Release(1)
	c.Release(1)
	c.Release(2)
	if c.Len() != 0 || c.Keys() != 0 {
		t.Fatalf("Len %d, keys %d after releases, want 0", c.Len(), c.Keys())
	}
	if got := c.Acquire(2); got != NotFull {
		t.Fatalf("Acquire after releases = %v", got)
	}
	if got := c.Acquire(3); got != TotalFull {
		t.Fatalf("a stray Release freed a slot: Acquire(3) = %v", got)
	}
}

func TestCapsFitsThenAdd(t *testing.T) {
	c := NewCaps[string](0, 1)
	if !c.Fits("a") {
		t.Fatal("empty caps do not fit")
	}
	c.Add("a")
	if c.Fits("a") || !c.Fits("b") {
		t.Fatal("Fits ignores the per-key cap")
	}
	c.Add("a") // the work was done: counted even past the cap
	if c.Held("a") != 2 {
		t.Fatalf("Held(a) = %d, want 2", c.Held("a"))
	}
}

func TestCapsNoCaps(t *testing.T) {
	c := NewCaps[string](0, 0)
	for i := range 100 {
		if got := c.Acquire("a"); got != NotFull {
			t.Fatalf("acquire %d without caps = %v", i, got)
		}
	}
}

func TestCapsConcurrentNeverExceeds(t *testing.T) {
	c := NewCaps[string](10, 3)
	var wg sync.WaitGroup
	var mu sync.Mutex
	taken := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				k := fmt.Sprint((g + i) % 5)
				if c.Acquire(k) == NotFull {
					mu.Lock()
					taken++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if taken != 10 || c.Len() != 10 {
		t.Fatalf("%d slots taken (Len %d), want exactly the total cap 10", taken, c.Len())
	}
	for k := range 5 {
		if h := c.Held(fmt.Sprint(k)); h > 3 {
			t.Fatalf("key %d holds %d, over its cap 3", k, h)
		}
	}
}
