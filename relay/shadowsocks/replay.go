package shadowsocks

import (
	"bufio"
	"errors"
	"fmt"
	"io"
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

// salts returns every remembered salt.
func (f *replayFilter) salts() [][saltSize]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][saltSize]byte, 0, len(f.cur)+len(f.prev))
	for k := range f.cur {
		out = append(out, k)
	}
	for k := range f.prev {
		out = append(out, k)
	}
	return out
}

// restore adds salts saved by an earlier run; they are kept for at least
// another window.
func (f *replayFilter) restore(salts [][saltSize]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.prev == nil {
		f.prev = map[[saltSize]byte]struct{}{}
	}
	for _, k := range salts {
		if len(f.prev) >= maxSalts {
			return
		}
		f.prev[k] = struct{}{}
	}
}

// SaveReplay writes the replay filter's salts, so that a restart does not
// open a window for replays (SIP004 has no timestamps to stop them).
func (s *Server) SaveReplay(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, k := range s.replay.salts() {
		bw.Write(k[:])
	}
	return bw.Flush()
}

// LoadReplay reads salts written by SaveReplay.
func (s *Server) LoadReplay(r io.Reader) error {
	var salts [][saltSize]byte
	br := bufio.NewReader(r)
	for len(salts) < maxSalts {
		var k [saltSize]byte
		if _, err := io.ReadFull(br, k[:]); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("replay salts: %w", err)
		}
		salts = append(salts, k)
	}
	s.replay.restore(salts)
	return nil
}
