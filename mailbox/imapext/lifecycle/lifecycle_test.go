package lifecycle

import (
	"sync"
	"testing"
)

// fakeOwner records what the machine asks of the layer.
type fakeOwner struct {
	quiet, retry bool
	resumes      []uint64
	served       chan struct{}
}

func (o *fakeOwner) Quiet() (bool, bool)          { return o.quiet, o.retry }
func (o *fakeOwner) Resume(gen uint64, _ Session) { o.resumes = append(o.resumes, gen) }
func (o *fakeOwner) Signal()                      {}
func (o *fakeOwner) ServeAgain()                  { o.served <- struct{}{} }

type session struct{ closed bool }

func (s *session) Close() error { s.closed = true; return nil }

func newMachine() (*Machine, *fakeOwner, *Counter) {
	var mu sync.Mutex
	o := &fakeOwner{quiet: true, served: make(chan struct{}, 4)}
	c := &Counter{}
	m := &Machine{}
	m.Init(&mu, o, Config{Counter: c}, nil)
	return m, o, c
}

// A connection hibernates, is woken, resumes with its session and is
// counted as hibernated exactly while it is.
func TestHibernateWakeResume(t *testing.T) {
	m, o, c := newMachine()
	m.to(Detaching) // the timer fired
	s := &session{}
	if !m.Keep(0, s) {
		t.Fatal("session not kept while detaching")
	}
	if m.Current(0) {
		t.Fatal("a detaching connection is still current")
	}
	if !m.Detached(0) || m.State() != Hibernated || c.Load() != 1 {
		t.Fatalf("after the detach: state %v, counted %d", m.State(), c.Load())
	}
	if m.Take(1) != nil {
		t.Fatal("session taken before the resume")
	}
	m.Wake()
	if m.State() != Resuming || c.Load() != 0 || len(o.resumes) != 1 || o.resumes[0] != 1 {
		t.Fatalf("after Wake: state %v, counted %d, resumes %v", m.State(), c.Load(), o.resumes)
	}
	if !m.Detached(0) {
		t.Fatal("a close of the old generation touches the client")
	}
	if m.Take(1) != Session(s) || m.Take(1) != nil {
		t.Fatal("the resumed connection does not get the session once")
	}
	m.Resumed(true)
	if m.State() != Active || !m.Current(1) {
		t.Fatalf("after the replay: %v", m.State())
	}
}

// A wake during the detach resumes as soon as the detach completes, and
// the connection is never counted.
func TestWakeWhileDetaching(t *testing.T) {
	m, o, c := newMachine()
	m.to(Detaching)
	m.Wake()
	m.Keep(0, &session{})
	m.Detached(0)
	if m.State() != Resuming || len(o.resumes) != 1 || c.Load() != 0 {
		t.Fatalf("state %v, resumes %v, counted %d", m.State(), o.resumes, c.Load())
	}
}

// A session that does not keep itself ends with imapserver's close, and
// the layer's end closes a session kept while hibernated.
func TestEndClosesKeptSession(t *testing.T) {
	m, _, _ := newMachine()
	m.to(Detaching)
	if m.Detached(0) || m.State() != Active {
		t.Fatalf("not kept: detached, state %v", m.State())
	}
	if m.Close() || m.State() != Closed || !m.Close() {
		t.Fatal("Close does not report the second close")
	}

	m, _, c := newMachine()
	m.to(Detaching)
	s := &session{}
	m.Keep(0, s)
	m.Detached(0)
	if got := m.End(); got != Session(s) || c.Load() != 0 || m.State() != Ended {
		t.Fatalf("End gave %v, counted %d, state %v", got, c.Load(), m.State())
	}

	// The client left while the connection resumed: the replay's end
	// changes nothing, and nobody gets the session closed by End.
	m, _, _ = newMachine()
	m.to(Detaching)
	m.Keep(0, &session{})
	m.Detached(0)
	m.Wake()
	m.End()
	m.Resumed(false)
	if m.State() != Ended || m.Take(1) != nil {
		t.Fatalf("after the end: %v", m.State())
	}
}

// The table is the package documentation's, and an impossible transition
// is a bug that panics in tests.
func TestImpossibleTransitionPanics(t *testing.T) {
	for _, c := range []struct {
		from, to State
		ok       bool
	}{
		{Active, Detaching, true},
		{Hibernated, Leaving, true},
		{Away, Resuming, true},
		{Active, Away, false},
		{Away, Ended, false},
		{Leaving, Ended, false},
		{Ended, Active, false},
		{Closed, Active, false},
	} {
		if got := Allowed(c.from, c.to); got != c.ok {
			t.Errorf("Allowed(%v, %v) = %v", c.from, c.to, got)
		}
	}
	m, _, _ := newMachine()
	defer func() {
		if recover() == nil {
			t.Fatal("Active -> Away did not panic")
		}
	}()
	m.to(Away)
}
