package policy

import "sync"

// Full names the cap a Caps refused at.
type Full int

const (
	// NotFull: the slot was taken.
	NotFull Full = iota
	// TotalFull: every slot of all keys is held.
	TotalFull
	// KeyFull: the key holds all its slots.
	KeyFull
)

// Caps counts what each key (a client address, most often) holds at once
// (connections, allocations) against a cap per key and a cap in total.
// A key that holds nothing takes no memory, so a flood of addresses
// cannot grow it beyond what is held. A cap of zero or less is no cap.
// It is safe for concurrent use; the zero value is not usable.
type Caps[K comparable] struct {
	mu     sync.Mutex
	total  int
	perKey int
	n      int
	held   map[K]int
}

// NewCaps returns caps of total slots in all and perKey for one key.
func NewCaps[K comparable](total, perKey int) *Caps[K] {
	return &Caps[K]{total: total, perKey: perKey, held: map[K]int{}}
}

// Acquire takes a slot for key unless a cap is full, and says which.
// Each slot taken is given back with Release.
func (c *Caps[K]) Acquire(key K) Full {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.full(key); f != NotFull {
		return f
	}
	c.n++
	c.held[key]++
	return NotFull
}

// Fits says whether Acquire would take a slot now, for a caller that
// must ask before it can take (Add) what it asked for.
func (c *Caps[K]) Fits(key K) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.full(key) == NotFull
}

// Add takes a slot for key whether or not a cap is full (after Fits,
// once the work it asked for was done).
func (c *Caps[K]) Add(key K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	c.held[key]++
}

// Release gives back one slot of key; it is a no-op for a key that holds
// none.
func (c *Caps[K]) Release(key K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.held[key]
	if !ok {
		return
	}
	c.n--
	if h <= 1 {
		delete(c.held, key)
	} else {
		c.held[key] = h - 1
	}
}

// Held is the number of slots key holds.
func (c *Caps[K]) Held(key K) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.held[key]
}

// Len is the number of slots held in all.
func (c *Caps[K]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Keys is the number of keys that hold a slot.
func (c *Caps[K]) Keys() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held)
}

func (c *Caps[K]) full(key K) Full {
	switch {
	case c.total > 0 && c.n >= c.total:
		return TotalFull
	case c.perKey > 0 && c.held[key] >= c.perKey:
		return KeyFull
	}
	return NotFull
}
