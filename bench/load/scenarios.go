package load

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatrelay/chatrelay/internal/testmsg"
)

// Target is a mail server under test: implicit-TLS IMAP and submission on
// loopback, accounts User(i)@Domain with Pass(i).
type Target struct {
	IMAPS       string // host:port
	Submissions string // host:port
	Domain      string
	// Passwords, where set, are the accounts' own passwords (made by the
	// server, as chatrelay makes them for /new and invites); accounts
	// past its end use Password.
	Passwords []string
}

// Password is the benchmark accounts' password where the server does not
// make them (the peers, and chatrelay accounts created at first login).
const Password = "bench-password-0001"

// Pass is the password of benchmark account i.
func (t Target) Pass(i int) string {
	if i >= 0 && i < len(t.Passwords) {
		return t.Passwords[i]
	}
	return Password
}

// User is the address of benchmark account i: nine characters before the
// @, as chatrelay's default rules want.
func (t Target) User(i int) string { return fmt.Sprintf("b%08d@%s", i, t.Domain) }

// Message returns an encrypted-format message (PGP/MIME, as Delta Chat
// sends) from -> to of about size bytes.
func Message(from, to string, size int) []byte {
	pad := size * 3 / 4
	for range 8 {
		m := testmsg.Encrypted(from, to, pad)
		diff := size - len(m)
		if diff > -64 && diff < 64 || pad <= 0 {
			return m
		}
		pad = max(0, pad+diff*3/4)
	}
	return testmsg.Encrypted(from, to, pad)
}

// Summary is a sample of durations in milliseconds.
type Summary struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

// Summarize computes percentiles (nearest rank).
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(ds))+0.999999) - 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return Summary{N: len(ds), P50: ms(rank(0.5)), P90: ms(rank(0.9)), P99: ms(rank(0.99)), Max: ms(ds[len(ds)-1]), Mean: ms(sum / time.Duration(len(ds)))}
}

// LatencyResult is P1.
type LatencyResult struct {
	// FromEnd: end of DATA written -> EXISTS read in IDLE.
	FromEnd Summary `json:"end_of_data_to_exists"`
	// FromAccept: 250 read -> EXISTS read (negative values, where the
	// server notified before it answered, count as 0).
	FromAccept Summary `json:"accepted_to_exists"`
	// Submit: end of DATA -> 250.
	Submit   Summary `json:"end_of_data_to_250"`
	Failures int     `json:"failures"`
	// Marked and Unmarked split FromEnd by LatencyProbe.Mark.
	Marked   *Summary `json:"marked,omitempty"`
	Unmarked *Summary `json:"unmarked,omitempty"`
}

// dialIdle connects as user, selects INBOX and starts IDLE.
func dialIdle(ctx context.Context, t Target, i int) (*IMAPConn, error) {
	ic, err := DialIMAP(ctx, t.IMAPS, nil)
	if err != nil {
		return nil, err
	}
	if err = ic.Login(ctx, t.User(i), t.Pass(i)); err == nil {
		if err = ic.Select(ctx); err == nil {
			err = ic.Idle(ctx)
		}
	}
	if err != nil {
		ic.Close()
		return nil, err
	}
	return ic, nil
}

// Latency (P1) sends n messages one at a time from sender to rcpt with a
// random pause of up to maxGap before each, and times each from the end of
// DATA to the EXISTS the recipient's IDLE connection reads. Bounded by n
// and by ctx.
func Latency(ctx context.Context, t Target, sender, rcpt int, n int, maxGap time.Duration, size int) (LatencyResult, error) {
	p, err := OpenLatency(ctx, t, sender, rcpt)
	if err != nil {
		return LatencyResult{}, err
	}
	defer p.Close()
	return p.Run(ctx, n, maxGap, size)
}

// LatencyProbe is P1's pair of connections: the recipient in IDLE and the
// sender logged in to submission.
type LatencyProbe struct {
	// Mark, when set, is asked before each message whether to count it
	// among the marked (LatencyResult.Marked), to split the sample by
	// something the server did in the pause before it.
	Mark func() bool

	t      Target
	sender int
	rcpt   int
	ic     *IMAPConn
	sub    *Submitter
}

// OpenLatency connects P1's recipient (in IDLE) and sender.
func OpenLatency(ctx context.Context, t Target, sender, rcpt int) (*LatencyProbe, error) {
	ic, err := dialIdle(ctx, t, rcpt)
	if err != nil {
		return nil, err
	}
	sub, err := DialSubmit(ctx, t.Submissions, t.User(sender), t.Pass(sender))
	if err != nil {
		ic.Close()
		return nil, err
	}
	return &LatencyProbe{t: t, sender: sender, rcpt: rcpt, ic: ic, sub: sub}, nil
}

// Close drops both connections.
func (p *LatencyProbe) Close() {
	if p.ic != nil {
		p.ic.Close()
	}
	p.sub.Close()
}

// Run sends up to n messages, until ctx ends, and times them.
func (p *LatencyProbe) Run(ctx context.Context, n int, maxGap time.Duration, size int) (res LatencyResult, err error) {
	t, rcpt := p.t, p.rcpt
	msg := Message(t.User(p.sender), t.User(rcpt), size)
	var fromEnd, fromAccept, submit, marked, unmarked []time.Duration
	defer func() {
		res.FromEnd, res.FromAccept, res.Submit = Summarize(fromEnd), Summarize(fromAccept), Summarize(submit)
		if p.Mark != nil {
			m, u := Summarize(marked), Summarize(unmarked)
			res.Marked, res.Unmarked = &m, &u
		}
	}()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if maxGap > 0 {
			time.Sleep(time.Duration(rand.Int64N(int64(maxGap))))
		}
		mark := p.Mark != nil && p.Mark()
		before := p.ic.Exists()
		sent, serr := p.sub.Send(t.User(rcpt), msg)
		if serr != nil {
			return res, fmt.Errorf("message %d: %w", i, serr)
		}
		at, werr := p.ic.WaitExists(before, 15*time.Second)
		if werr != nil {
			res.Failures++
			if res.Failures > 5 {
				return res, fmt.Errorf("message %d: no EXISTS: %w", i, werr)
			}
			// Start a fresh IDLE and go on.
			p.ic.Close()
			if p.ic, err = dialIdle(ctx, t, rcpt); err != nil {
				return res, err
			}
			continue
		}
		fromEnd = append(fromEnd, at.Sub(sent.End))
		if mark {
			marked = append(marked, at.Sub(sent.End))
		} else {
			unmarked = append(unmarked, at.Sub(sent.End))
		}
		fromAccept = append(fromAccept, max(0, at.Sub(sent.Accepted)))
		submit = append(submit, sent.Accepted.Sub(sent.End))
	}
	return res, nil
}

// ThroughputResult is P3's client side.
type ThroughputResult struct {
	Clients  int     `json:"clients"`
	Accepted int64   `json:"accepted"`
	Failed   int64   `json:"failed"`
	Seconds  float64 `json:"seconds"`
	PerSec   float64 `json:"messages_per_second"`
	Bytes    int     `json:"message_bytes"`
	Submit   Summary `json:"end_of_data_to_250"`
	FirstErr string  `json:"first_error,omitempty"`
}

// Throughput (P3) runs clients concurrent authenticated submission
// connections, client i sending as account senders+i to account rcpts+i,
// for the given duration or until total messages were sent (0: no count
// limit), and counts accepted messages. The connections are made before
// the clock starts.
func Throughput(ctx context.Context, t Target, clients, senders, rcpts int, d time.Duration, total int64, size int) (ThroughputResult, error) {
	res := ThroughputResult{Clients: clients}
	subs := make([]*Submitter, clients)
	msgs := make([][]byte, clients)
	for i := range clients {
		s, err := DialSubmit(ctx, t.Submissions, t.User(senders+i), t.Pass(senders+i))
		if err != nil {
			for _, s := range subs[:i] {
				s.Close()
			}
			return res, err
		}
		subs[i] = s
		msgs[i] = Message(t.User(senders+i), t.User(rcpts+i), size)
	}
	res.Bytes = len(msgs[0])
	var accepted, failed, taken atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	start := time.Now()
	stop := start.Add(d)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			defer subs[i].Close()
			var mine []time.Duration
			for n := 0; n < 10_000_000 && time.Now().Before(stop) && ctx.Err() == nil; n++ {
				if total > 0 && taken.Add(1) > total {
					break
				}
				sent, err := subs[i].Send(t.User(rcpts+i), msgs[i])
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				accepted.Add(1)
				mine = append(mine, sent.Accepted.Sub(sent.End))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	el := time.Since(start)
	res.Accepted, res.Failed, res.Seconds = accepted.Load(), failed.Load(), el.Seconds()
	res.PerSec = float64(res.Accepted) / el.Seconds()
	res.Submit = Summarize(lat)
	if firstErr != nil {
		res.FirstErr = firstErr.Error()
	}
	return res, nil
}

// Idlers is a set of open IDLE connections.
type Idlers struct {
	mu    sync.Mutex
	conns []*IMAPConn
}

// Len is how many connections are open.
func (s *Idlers) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close closes every connection.
func (s *Idlers) Close() {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// StormResult is what opening many connections at once took.
type StormResult struct {
	Wanted   int `json:"wanted"`
	LoggedIn int `json:"logged_in"`
	Idling   int `json:"idling"`
	Failed   int `json:"failed"`
	// LoginSeconds is from the first connect until the last login
	// succeeded.
	LoginSeconds float64 `json:"login_seconds"`
	// IdleSeconds is until the last connection was in IDLE.
	IdleSeconds float64 `json:"idle_seconds"`
	Login       Summary `json:"connect_to_login_ok"`
	FirstErr    string  `json:"first_error,omitempty"`
	TimedOut    bool    `json:"timed_out,omitempty"`
	// MemoryLow: stopped because the machine ran low on memory.
	MemoryLow bool `json:"memory_low,omitempty"`
	// Resumed counts TLS handshakes that resumed a session.
	Resumed int `json:"tls_resumed"`
}

// OpenOptions says how to open many connections.
type OpenOptions struct {
	// Count connections, as accounts First+(i mod Accounts).
	Count, First, Accounts int
	// Parallel bounds connections being set up at once.
	Parallel int
	// Idle: also SELECT INBOX and IDLE, and keep the connection.
	Idle bool
	// Compress: turn on COMPRESS=DEFLATE after login, as Delta Chat does.
	Compress bool
	// Sessions, when set, resume TLS sessions per account (and keep the
	// new tickets), as a real client does after a network outage.
	Sessions Sessions
	// SourceIPs spreads connections over these loopback source addresses
	// (PerSource each) so that ephemeral ports do not run out.
	PerSource int
	// SourceBase is the index of the first source IP: 127.0.0.(2+index).
	SourceBase int
	// Timeout bounds the whole operation.
	Timeout time.Duration
	// MaxFail > 0 stops starting connections once more than MaxFail
	// failed.
	MaxFail int
	// MinFreeKiB > 0 stops starting connections while the machine has
	// less memory available (MemAvailable) than this.
	MinFreeKiB int64
}

// MemAvailableKiB is the kernel's estimate of memory available for new
// work (MemAvailable in /proc/meminfo); 0 if unknown.
func MemAvailableKiB() int64 {
	data, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// Open opens connections as opts say and adds the idle ones to s. It stops
// starting new ones after MaxFail failures or when the timeout passes.
func (s *Idlers) Open(ctx context.Context, t Target, o OpenOptions) StormResult {
	res := StormResult{Wanted: o.Count}
	if o.Timeout <= 0 {
		o.Timeout = time.Hour
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var loggedIn, idling, failed, resumed atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var lastLogin, lastIdle time.Time
	var firstErr error
	sem := make(chan struct{}, max(1, o.Parallel))
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < o.Count; i++ {
		if ctx.Err() != nil || (o.MaxFail > 0 && failed.Load() > int64(o.MaxFail)) {
			break
		}
		if o.MinFreeKiB > 0 && i%100 == 0 {
			if free := MemAvailableKiB(); free > 0 && free < o.MinFreeKiB {
				res.MemoryLow = true
				break
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		var src net.IP
		if o.PerSource > 0 {
			k := o.SourceBase + i/o.PerSource
			src = net.IPv4(127, 0, byte(k/250), byte(2+k%250))
		}
		acct := o.First + i%max(1, o.Accounts)
		user, pass := t.User(acct), t.Pass(acct)
		wg.Go(func() {
			err := func() error {
				defer func() { <-sem }()
				t0 := time.Now()
				c, err := DialIMAPSession(ctx, t.IMAPS, src, o.Sessions.cache(acct))
				if err != nil {
					return err
				}
				if c.Resumed() {
					resumed.Add(1)
				}
				if err := c.Login(ctx, user, pass); err != nil {
					c.Close()
					return err
				}
				now := time.Now()
				loggedIn.Add(1)
				mu.Lock()
				lat = append(lat, now.Sub(t0))
				if now.After(lastLogin) {
					lastLogin = now
				}
				mu.Unlock()
				if !o.Idle {
					c.Close()
					return nil
				}
				if o.Compress {
					if err := c.Compress(ctx); err != nil {
						c.Close()
						return err
					}
				}
				if err := c.Select(ctx); err != nil {
					c.Close()
					return err
				}
				if err := c.Idle(ctx); err != nil {
					c.Close()
					return err
				}
				now = time.Now()
				idling.Add(1)
				mu.Lock()
				s.mu.Lock()
				s.conns = append(s.conns, c)
				s.mu.Unlock()
				if now.After(lastIdle) {
					lastIdle = now
				}
				mu.Unlock()
				return nil
			}()
			if err != nil {
				failed.Add(1)
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.LoggedIn, res.Idling, res.Failed = int(loggedIn.Load()), int(idling.Load()), int(failed.Load())
	res.Resumed = int(resumed.Load())
	if !lastLogin.IsZero() {
		res.LoginSeconds = lastLogin.Sub(start).Seconds()
	}
	if !lastIdle.IsZero() {
		res.IdleSeconds = lastIdle.Sub(start).Seconds()
	}
	res.Login = Summarize(lat)
	res.TimedOut = errors.Is(ctx.Err(), context.DeadlineExceeded)
	if firstErr != nil {
		res.FirstErr = firstErr.Error()
	}
	return res
}

// Prepare logs every account in [first, first+n) in once (creating it on
// servers that create accounts at first login) and logs out, parallel
// connections at a time. A failed login is tried again up to three times,
// one at a time (maddy's SQLite refuses some concurrent account
// creations).
//
// With sessions, each account keeps the TLS tickets the server gave it.
func Prepare(ctx context.Context, t Target, first, n, parallel int, timeout time.Duration, sessions Sessions) StormResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := StormResult{Wanted: n}
	start := time.Now()
	login := func(i int) error {
		c, err := DialIMAPSession(ctx, t.IMAPS, nil, sessions.cache(i))
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Login(ctx, t.User(i), t.Pass(i)); err != nil {
			return err
		}
		c.Cmd(ctx, "LOGOUT")
		return nil
	}
	var mu sync.Mutex
	var retry []int
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(1, parallel) {
		wg.Go(func() {
			for i := range next {
				if err := login(i); err != nil {
					mu.Lock()
					retry = append(retry, i)
					mu.Unlock()
				}
			}
		})
	}
	for i := first; i < first+n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, i := range retry {
		var err error
		for try := range 3 {
			if err = login(i); err == nil {
				break
			}
			time.Sleep(time.Duration(try+1) * 100 * time.Millisecond)
		}
		if err != nil {
			res.Failed++
			if res.FirstErr == "" {
				res.FirstErr = err.Error()
			}
		}
	}
	res.LoggedIn = n - res.Failed
	res.LoginSeconds = time.Since(start).Seconds()
	res.TimedOut = ctx.Err() != nil
	return res
}
