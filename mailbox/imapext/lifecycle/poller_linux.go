package lifecycle

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// The poller: one epoll instance for the connections away, woken in one
// goroutine that only starts their comeBack. One serves the whole process,
// as the runtime's own network poller does. Registrations are one-shot; a
// socket stays in the instance (disarmed) until closed, so a connection
// that goes away again re-arms it, and a stale event finds no token.
var poller struct {
	once  sync.Once
	epfd  int
	err   error
	mu    sync.Mutex
	next  uint64
	waits map[uint64]*Machine
}

const awaySupported = canWaitReadable

func pollStart() error {
	poller.once.Do(func() {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			poller.err = fmt.Errorf("epoll_create1: %w", err)
			return
		}
		poller.epfd = fd
		poller.waits = make(map[uint64]*Machine)
		go pollRun(fd)
	})
	return poller.err
}

func pollRun(epfd int) {
	var evs [64]syscall.EpollEvent
	for {
		n, err := syscall.EpollWait(epfd, evs[:], -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			// Cannot happen with a valid instance; connections away would
			// hang, so bring them all back.
			poller.mu.Lock()
			tokens := make([]uint64, 0, len(poller.waits))
			for t := range poller.waits {
				tokens = append(tokens, t)
			}
			poller.err = fmt.Errorf("epoll_wait: %w", err)
			poller.mu.Unlock()
			for _, t := range tokens {
				pollFire(t)
			}
			return
		}
		for _, ev := range evs[:n] {
			pollFire(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32)
		}
	}
}

// pollAdd arms the poller for m's socket (m.rc) until m.until. Once it
// returns nil, the connection comes back by pollFire (or recall).
func pollAdd(m *Machine) error {
	if err := pollStart(); err != nil {
		return err
	}
	poller.mu.Lock()
	if poller.err != nil {
		poller.mu.Unlock()
		return poller.err
	}
	poller.next++
	token := poller.next
	poller.waits[token] = m
	poller.mu.Unlock()
	m.mu.Lock()
	if m.state != Away {
		// Woken meanwhile (Wake found no token to recall).
		m.mu.Unlock()
		pollRemove(token)
		go m.owner.ServeAgain()
		return nil
	}
	m.token = token
	m.wake = time.AfterFunc(time.Until(m.until), func() { pollFire(token) })
	m.mu.Unlock()

	ev := syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd:     int32(uint32(token)),
		Pad:    int32(uint32(token >> 32)),
	}
	var cerr error
	err := m.rc.Control(func(fd uintptr) {
		cerr = syscall.EpollCtl(poller.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		if errors.Is(cerr, syscall.EEXIST) {
			cerr = syscall.EpollCtl(poller.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		}
	})
	if err == nil {
		err = cerr
	}
	if err != nil && pollTake(token) != nil {
		return err
	}
	// Armed, or fired meanwhile (a close, the deadline, a wake): either
	// way the connection comes back.
	return nil
}

// pollRemove takes token out of the poller and reports whether it was
// there; only one caller gets true.
func pollRemove(token uint64) bool {
	poller.mu.Lock()
	defer poller.mu.Unlock()
	if _, ok := poller.waits[token]; !ok {
		return false
	}
	delete(poller.waits, token)
	return true
}

// pollTake takes the connection of token out of the poller, once: nil if
// it was taken already.
func pollTake(token uint64) *Machine {
	poller.mu.Lock()
	m := poller.waits[token]
	delete(poller.waits, token)
	poller.mu.Unlock()
	if m == nil {
		return nil
	}
	m.mu.Lock()
	m.stopPollTimer()
	m.mu.Unlock()
	return m
}

// stopPollTimer forgets the poller's registration; the caller holds the
// lock.
func (m *Machine) stopPollTimer() {
	if m.wake != nil {
		m.wake.Stop()
		m.wake = nil
	}
	m.token = 0
}

// pollFire brings the connection of token back, once.
func pollFire(token uint64) {
	if m := pollTake(token); m != nil {
		go m.comeBack()
	}
}
