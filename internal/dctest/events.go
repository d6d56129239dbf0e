package dctest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Event is one core event (schema EventType). Only the fields the tests use
// are decoded; Raw holds the whole payload.
type Event struct {
	Account   uint32          `json:"-"`
	At        time.Time       `json:"-"` // when the event loop received it
	Kind      string          `json:"kind"`
	Msg       string          `json:"msg"` // Info, Warning, Error, ...
	ChatID    uint32          `json:"chatId"`
	MsgID     uint32          `json:"msgId"`
	ContactID uint32          `json:"contactId"`
	Progress  int             `json:"progress"` // ConfigureProgress, Securejoin*Progress
	Comment   string          `json:"comment"`
	Raw       json.RawMessage `json:"-"`
}

func (e Event) String() string {
	return fmt.Sprintf("acc%d %s", e.Account, e.Raw)
}

type wireEvent struct {
	ContextID uint32          `json:"contextId"`
	Event     json.RawMessage `json:"event"`
}

// eventQueue holds one account's events until a waiter takes them.
type eventQueue struct {
	mu     sync.Mutex
	events []Event
	notify chan struct{} // closed and replaced on every push
}

func newEventQueue() *eventQueue {
	return &eventQueue{notify: make(chan struct{})}
}

func (q *eventQueue) push(e Event) {
	q.mu.Lock()
	q.events = append(q.events, e)
	close(q.notify)
	q.notify = make(chan struct{})
	q.mu.Unlock()
}

// pop takes the oldest event, or returns a channel closed on the next push.
func (q *eventQueue) pop() (Event, bool, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.events) == 0 {
		return Event{}, false, q.notify
	}
	e := q.events[0]
	q.events[0] = Event{}
	q.events = q.events[1:]
	return e, true, nil
}

func (r *RPC) queue(acc uint32) *eventQueue {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[acc]
	if q == nil {
		q = newEventQueue()
		r.queues[acc] = q
	}
	return q
}

// pumpEvents long-polls get_next_event_batch until ctx ends or the server
// goes away, sorting events into per-account queues.
func (r *RPC) pumpEvents(ctx context.Context) {
	defer close(r.eventsDone)
	for {
		var batch []wireEvent
		err := r.CallResult(ctx, &batch, "get_next_event_batch")
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, ErrClosed) {
				fmt.Fprintf(r.eventLog, "%s event loop stopped: %v\n", stamp(time.Now()), err)
			}
			return
		}
		now := time.Now()
		for _, w := range batch {
			e := Event{Account: w.ContextID, At: now, Raw: w.Event}
			if err := json.Unmarshal(w.Event, &e); err != nil {
				fmt.Fprintf(r.eventLog, "%s undecodable event %s: %v\n", stamp(now), w.Event, err)
				continue
			}
			if e.Msg != "" {
				r.net.scanLine(e.Msg)
			}
			if e.Kind != "Info" {
				fmt.Fprintf(r.eventLog, "%s acc%d %s\n", stamp(now), e.Account, w.Event)
			}
			r.queue(e.Account).push(e)
		}
	}
}

func stamp(t time.Time) string { return t.Format("15:04:05.000") }

// Drain drops every queued event of account acc.
func (r *RPC) Drain(acc uint32) {
	q := r.queue(acc)
	for {
		if _, ok, _ := q.pop(); !ok {
			return
		}
	}
}

// WaitEvent takes account acc's events in order until one of the given kind
// (any kind if kind is "") satisfies pred (nil accepts all), and returns it.
// Events it passes over are dropped. It gives up when ctx ends.
func (r *RPC) WaitEvent(ctx context.Context, acc uint32, kind string, pred func(Event) bool) (Event, error) {
	q := r.queue(acc)
	for {
		e, ok, more := q.pop()
		if ok {
			if (kind == "" || e.Kind == kind) && (pred == nil || pred(e)) {
				return e, nil
			}
			continue
		}
		select {
		case <-more:
		case <-r.eventsDone:
			return Event{}, fmt.Errorf("wait for %s event on account %d: %w", kind, acc, ErrClosed)
		case <-ctx.Done():
			return Event{}, fmt.Errorf("wait for %s event on account %d: %w", kind, acc, context.Cause(ctx))
		}
	}
}
