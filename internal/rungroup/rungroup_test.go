package rungroup

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestStopCancelsAndWaitsForEveryTask(t *testing.T) {
	g := New()
	var ended atomic.Int32
	started := make(chan struct{}, 3)
	for range 3 {
		g.Go("loop", func(ctx context.Context) error {
			started <- struct{}{}
			<-ctx.Done()
			time.Sleep(10 * time.Millisecond) // finishing work after the cancel
			ended.Add(1)
			return nil
		})
	}
	for range 3 {
		<-started
	}
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	if n := ended.Load(); n != 3 {
		t.Fatalf("Stop returned with %d of 3 tasks finished", n)
	}
}

func TestFirstErrorIsKept(t *testing.T) {
	g := New()
	first := errors.New("first")
	done := make(chan struct{})
	g.Go("a", func(context.Context) error { defer close(done); return first })
	<-done
	g.Go("b", func(ctx context.Context) error { <-ctx.Done(); return errors.New("second") })
	if err := g.Err(); !errors.Is(err, first) {
		t.Fatalf("Err = %v, want the first task's error", err)
	}
	if err := g.Stop(); !errors.Is(err, first) || err.Error() != "a: first" {
		t.Fatalf("Stop = %v, want a: first", err)
	}
}

func TestGoAfterStopRunsNothing(t *testing.T) {
	g := New()
	g.Stop()
	ran := false
	if g.Go("late", func(context.Context) error { ran = true; return nil }) {
		t.Fatal("Go after Stop reported a start")
	}
	if err := g.Stop(); err != nil || ran {
		t.Fatalf("second Stop = %v, task ran = %v", err, ran)
	}
}
