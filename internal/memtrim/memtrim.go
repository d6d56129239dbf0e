// Package memtrim gives memory back to the kernel when the process has gone
// quiet. The Go runtime keeps the heap it grew for a burst (a login storm,
// thousands of TLS handshakes) and returns it only gradually; the garbage of
// the burst stays until the next collection, which an idle relay does not
// trigger. On a small VPS that is memory other programs cannot use. Run
// collects and returns it once the process is quiet: no collection since the
// last look, and enough to gain.
package memtrim

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// minGain is the least reclaimable memory worth a forced collection. With
// 16 MiB a relay that had served a few hundred logins (argon2id's 4 MiB
// each) sometimes kept 30 MiB of garbage and free heap for good.
const minGain = 4 << 20

var names = []string{
	"/gc/cycles/total:gc-cycles",
	"/gc/heap/live:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
}

// reading is what one look at the runtime sees.
type reading struct {
	cycles uint64
	// live is the heap marked live by the last collection; objects counts
	// those plus what has been allocated since (garbage, mostly, when
	// quiet); free is heap memory held but unused and not yet returned.
	live, objects, free uint64
}

func read() reading {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return reading{cycles: v(0), live: v(1), objects: v(2), free: v(3)}
}

// reclaimable is what a collection plus a return to the kernel would free.
func (r reading) reclaimable() uint64 {
	garbage := uint64(0)
	if r.objects > r.live {
		garbage = r.objects - r.live
	}
	return garbage + r.free
}

// worth decides from two looks, prev then now: the process is quiet (no
// collection in between) and would gain at least minGain and a quarter of
// its live heap.
func worth(prev, now reading) bool {
	if now.cycles != prev.cycles {
		return false
	}
	gain := now.reclaimable()
	return gain >= minGain && gain >= now.live/4
}

// Run looks every interval until ctx ends.
func Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	prev := read()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := read()
		if worth(prev, now) {
			debug.FreeOSMemory()
			now = read()
		}
		prev = now
	}
}
