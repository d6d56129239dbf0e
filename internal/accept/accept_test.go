package accept

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// script is a listener that answers Accept from a list of results.
type script struct {
	net.Listener
	errs []error
	conn net.Conn
}

func (s *script) Accept() (net.Conn, error) {
	if len(s.errs) == 0 {
		return nil, net.ErrClosed
	}
	err := s.errs[0]
	s.errs = s.errs[1:]
	if err != nil {
		return nil, err
	}
	return s.conn, nil
}

// emfile is what accept(2) says when the process is out of descriptors.
var emfile = &net.OpError{Op: "accept", Net: "tcp", Err: &osSyscallErr{syscall.EMFILE}}

type osSyscallErr struct{ errno syscall.Errno }

func (e *osSyscallErr) Error() string   { return e.errno.Error() }
func (e *osSyscallErr) Unwrap() error   { return e.errno }
func (e *osSyscallErr) Temporary() bool { return e.errno.Temporary() }

func TestTemporaryErrorsAreWaitedOut(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	ln := &script{errs: []error{emfile, emfile, emfile, nil, emfile, nil}, conn: c1}
	var pauses []time.Duration
	r := &Retry{OnPause: func(_ error, d time.Duration) { pauses = append(pauses, d) }}
	for i := range 2 {
		c, err := r.Accept(ln)
		if err != nil || c != c1 {
			t.Fatalf("accept %d: %v, %v", i, c, err)
		}
	}
	want := []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 5 * time.Millisecond}
	if len(pauses) != len(want) {
		t.Fatalf("pauses %v, want %v", pauses, want)
	}
	for i := range want {
		if pauses[i] != want[i] {
			t.Fatalf("pauses %v, want %v (doubling, reset after a success)", pauses, want)
		}
	}
}

func TestPermanentErrorIsReturned(t *testing.T) {
	boom := errors.New("boom")
	r := &Retry{}
	if _, err := r.Accept(&script{errs: []error{boom}}); !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	if _, err := r.Accept(&script{}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed listener: got %v", err)
	}
}

func TestDoneCutsThePauseShort(t *testing.T) {
	done := make(chan struct{})
	close(done)
	r := &Retry{Done: done, pause: time.Hour}
	// The pause would be an hour (capped to a second) without Done.
	_, err := r.Accept(&script{errs: []error{emfile, nil}})
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("got %v, want net.ErrClosed", err)
	}
}

func TestTemporary(t *testing.T) {
	if !Temporary(emfile) {
		t.Error("EMFILE is not temporary")
	}
	if Temporary(net.ErrClosed) || Temporary(errors.New("x")) {
		t.Error("closed listener or plain error taken as temporary")
	}
}
