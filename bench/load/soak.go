package load

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// SoakOptions say what the soak does: Idle accounts [0, Idle) each hold
// one connection in IDLE; Senders accounts after them submit Rate
// messages a second for Duration, message k to account k mod Idle, so
// that every message is announced to a client that sits in IDLE.
type SoakOptions struct {
	Idle, Senders int
	Rate          float64
	Duration      time.Duration
	Size          int
	// Parallel bounds connections being set up at once.
	Parallel int
	// Sample is called once a minute (and at start and end) for the
	// server's memory, in KiB.
	Sample func() (rssKiB, pssKiB int64)
}

// SoakMinute is one minute of the soak, by the time messages were sent.
type SoakMinute struct {
	Minute    int     `json:"minute"`
	Sent      int     `json:"sent"`
	Delivered int     `json:"delivered"`
	Latency   Summary `json:"end_of_data_to_exists"`
	RSSKiB    int64   `json:"server_rss_kib"`
	PSSKiB    int64   `json:"server_pss_kib"`
}

// SoakResult is the whole soak.
type SoakResult struct {
	Idle         int          `json:"idle_connections"`
	OpenSeconds  float64      `json:"open_seconds"`
	Sent         int          `json:"sent"`
	Delivered    int          `json:"delivered"`
	Missing      int          `json:"missing"`
	SendErrors   int          `json:"send_errors"`
	IdleDropped  int          `json:"idle_connections_dropped"`
	Late         int          `json:"sends_late"` // started over a second after their turn
	FirstErr     string       `json:"first_error,omitempty"`
	StartRSSKiB  int64        `json:"start_rss_kib"`
	EndRSSKiB    int64        `json:"end_rss_kib"`
	StartPSSKiB  int64        `json:"start_pss_kib"`
	EndPSSKiB    int64        `json:"end_pss_kib"`
	Latency      Summary      `json:"end_of_data_to_exists"`
	Minutes      []SoakMinute `json:"minutes"`
	RateAchieved float64      `json:"rate_achieved"`
}

// soakConn is one idle recipient: the EXISTS count it started from, and
// the last it has seen.
type soakConn struct {
	c    *IMAPConn
	base int
	seen int
}

// Soak runs the soak. Every loop is bounded by its count and by ctx.
func Soak(ctx context.Context, t Target, o SoakOptions) (SoakResult, error) {
	res := SoakResult{Idle: o.Idle}
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		if res.FirstErr == "" {
			res.FirstErr = err.Error()
		}
		mu.Unlock()
	}

	// Open the idle connections.
	conns := make([]*soakConn, o.Idle)
	start := time.Now()
	sem := make(chan struct{}, max(1, o.Parallel))
	var wg sync.WaitGroup
	var openErr atomic.Value
	for i := range o.Idle {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		src := net.IPv4(127, 0, 1, byte(2+i/10000))
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := DialIMAP(ctx, t.IMAPS, src)
			if err == nil {
				if err = c.Login(ctx, t.User(i), t.Pass(i)); err == nil {
					if err = c.Select(ctx); err == nil {
						err = c.Idle(ctx)
					}
				}
				if err != nil {
					c.Close()
				}
			}
			if err != nil {
				openErr.CompareAndSwap(nil, fmt.Errorf("idle %d: %w", i, err))
				return
			}
			conns[i] = &soakConn{c: c, base: c.Exists(), seen: c.Exists()}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.c.Close()
			}
		}
	}()
	if err, _ := openErr.Load().(error); err != nil {
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.OpenSeconds = time.Since(start).Seconds()

	total := int(o.Rate * o.Duration.Seconds())
	sentAt := make([]atomic.Int64, total)    // unix nanos at end of DATA
	arrivedAt := make([]atomic.Int64, total) // unix nanos of its EXISTS
	var dropped atomic.Int64

	// One reader per idle connection: each EXISTS marks the messages it
	// announces (a recipient's j-th message is message j*Idle + r).
	readCtx, stopReaders := context.WithCancel(ctx)
	var readers sync.WaitGroup
	for r, sc := range conns {
		readers.Go(func() {
			for range math.MaxInt32 {
				line, err := sc.c.readLine()
				if err != nil {
					if readCtx.Err() == nil {
						dropped.Add(1)
						fail(fmt.Errorf("idle %d: %w", r, err))
					}
					return
				}
				f := strings.Fields(line)
				if len(f) != 3 || f[0] != "*" || !strings.EqualFold(f[2], "EXISTS") {
					continue
				}
				n, err := strconv.Atoi(f[1])
				if err != nil {
					continue
				}
				now := time.Now().UnixNano()
				for m := sc.seen + 1; m <= n; m++ {
					if k := (m-sc.base-1)*o.Idle + r; k >= 0 && k < total {
						arrivedAt[k].CompareAndSwap(0, now)
					}
				}
				sc.seen = max(sc.seen, n)
			}
		})
	}
	defer func() {
		stopReaders()
		for _, sc := range conns {
			if sc != nil {
				sc.c.conn.SetReadDeadline(time.Now())
			}
		}
		readers.Wait()
	}()

	// The senders.
	subs := make([]*Submitter, o.Senders)
	for i := range subs {
		a := o.Idle + i
		s, err := DialSubmit(ctx, t.Submissions, t.User(a), t.Pass(a))
		if err != nil {
			for _, s := range subs[:i] {
				s.Close()
			}
			return res, fmt.Errorf("sender %d: %w", i, err)
		}
		subs[i] = s
	}
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	msgs := make([][]byte, o.Senders)
	for i := range msgs {
		msgs[i] = Message(t.User(o.Idle+i), t.User(0), o.Size)
	}

	sample := func() (int64, int64) {
		if o.Sample == nil {
			return 0, 0
		}
		return o.Sample()
	}
	res.StartRSSKiB, res.StartPSSKiB = sample()
	minutes := int(math.Ceil(o.Duration.Minutes()))
	res.Minutes = make([]SoakMinute, minutes)
	var sendErrors, late atomic.Int64
	jobs := make(chan int, 4*o.Senders)
	begin := time.Now()
	due := func(k int) time.Time {
		return begin.Add(time.Duration(float64(k) / o.Rate * float64(time.Second)))
	}
	var senders sync.WaitGroup
	for i := range subs {
		senders.Go(func() {
			for k := range jobs {
				rcpt := k % o.Idle
				if time.Since(due(k)) > time.Second {
					late.Add(1)
				}
				s, err := subs[i].Send(t.User(rcpt), msgs[i])
				if err != nil {
					sendErrors.Add(1)
					fail(fmt.Errorf("send %d: %w", k, err))
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				sentAt[k].Store(s.End.UnixNano())
			}
		})
	}
	nextMinute := begin.Add(time.Minute)
	for k := 0; k < total && ctx.Err() == nil; k++ {
		if d := time.Until(due(k)); d > 0 {
			time.Sleep(d)
		}
		if time.Now().After(nextMinute) {
			m := int(time.Since(begin) / time.Minute)
			if m-1 < minutes {
				res.Minutes[m-1].RSSKiB, res.Minutes[m-1].PSSKiB = sample()
			}
			nextMinute = nextMinute.Add(time.Minute)
		}
		select {
		case jobs <- k:
		case <-ctx.Done():
		}
	}
	close(jobs)
	senders.Wait()
	sendSeconds := time.Since(begin).Seconds()

	// Stragglers: up to a minute for the last announcements.
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		missing := 0
		for k := range total {
			if sentAt[k].Load() != 0 && arrivedAt[k].Load() == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	res.EndRSSKiB, res.EndPSSKiB = sample()
	if minutes > 0 && res.Minutes[minutes-1].RSSKiB == 0 {
		res.Minutes[minutes-1].RSSKiB, res.Minutes[minutes-1].PSSKiB = res.EndRSSKiB, res.EndPSSKiB
	}

	var all []time.Duration
	per := make([][]time.Duration, minutes)
	for k := range total {
		s, a := sentAt[k].Load(), arrivedAt[k].Load()
		if s == 0 {
			continue
		}
		res.Sent++
		m := min(minutes-1, max(0, int(time.Duration(s-begin.UnixNano())/time.Minute)))
		res.Minutes[m].Sent++
		if a == 0 {
			res.Missing++
			continue
		}
		res.Delivered++
		res.Minutes[m].Delivered++
		d := time.Duration(max(0, a-s))
		all = append(all, d)
		per[m] = append(per[m], d)
	}
	for m := range res.Minutes {
		res.Minutes[m].Minute = m + 1
		res.Minutes[m].Latency = Summarize(per[m])
	}
	res.Latency = Summarize(all)
	res.SendErrors, res.Late, res.IdleDropped = int(sendErrors.Load()), int(late.Load()), int(dropped.Load())
	res.RateAchieved = float64(res.Sent) / sendSeconds
	return res, nil
}
