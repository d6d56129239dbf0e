package memtrim

import (
	"context"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestWorth(t *testing.T) {
	const mib = 1 << 20
	quiet := reading{cycles: 7, live: 100 * mib, objects: 100 * mib, free: 0}
	cases := []struct {
		name      string
		prev, now reading
		want      bool
	}{
		{"nothing to gain", quiet, quiet, false},
		{"much free, quiet", quiet, reading{cycles: 7, live: 100 * mib, objects: 110 * mib, free: 40 * mib}, true},
		{"much free, but collecting", quiet, reading{cycles: 8, live: 100 * mib, objects: 110 * mib, free: 40 * mib}, false},
		{"under the floor", reading{cycles: 1}, reading{cycles: 1, live: 4 * mib, objects: 4 * mib, free: 3 * mib}, false},
		{"a small heap's burst", reading{cycles: 1}, reading{cycles: 1, live: 4 * mib, objects: 10 * mib, free: 2 * mib}, true},
		{"small against the live heap", quiet, reading{cycles: 7, live: 400 * mib, objects: 420 * mib, free: 40 * mib}, false},
	}
	for _, c := range cases {
		if got := worth(c.prev, c.now); got != c.want {
			t.Errorf("%s: worth = %v, want %v", c.name, got, c.want)
		}
	}
}

var sink [][]byte

func released() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// After a burst of garbage and a quiet spell, Run returns the memory.
func TestRunReturnsMemoryWhenQuiet(t *testing.T) {
	for range 64 {
		sink = append(sink, make([]byte, 1<<20))
	}
	sink = nil
	before := released()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, 50*time.Millisecond); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for released() < before+32<<20 {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("released %d MiB more, want >= 32 MiB", (released()-before)>>20)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	runtime.KeepAlive(sink)
}
