package shadowsocks

import (
	"sync"
	"time"
)

// maxSalts bounds each generation of the replay filter; a flood of valid
// connections beyond it rotates early (and the window shrinks) rather
// than growing memory without bound.
const maxSalts = 1 << 20

// replayFilter remembers salts for at least window and at most twice
// that: two generations, the older dropped when the newer is window old.
type replayFilter struct {
	window time.Duration
	now    func() time.Time

	mu        sync.Mutex
	cur, prev map[[saltSize]byte]struct{}
	started   time.Time // of cur
}

func newReplayFilter(window time.Duration, now func() time.Time) *replayFilter {
	return &replayFilter{window: window, now: now, cur: map[[saltSize]byte]struct{}{}, started: now()}
}

// add records salt and reports whether it was new.
func (f *replayFilter) add(salt []byte) bool {
	var k [saltSize]byte
	copy(k[:], salt)
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	if now.Sub(f.started) >= f.window || len(f.cur) >= maxSalts {
		if now.Sub(f.started) >= 2*f.window {
			f.prev = nil // both generations are past the window
		} else {
			f.prev = f.cur
		}
		f.cur = map[[saltSize]byte]struct{}{}
		f.started = now
	}
	if _, ok := f.cur[k]; ok {
		return false
	}
	if _, ok := f.prev[k]; ok {
		return false
	}
	f.cur[k] = struct{}{}
	return true
}
