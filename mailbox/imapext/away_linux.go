package imapext

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// The poller: one epoll instance for the connections away, woken in one
// goroutine that only starts their comeBack. Registrations are one-shot;
// a socket stays in the instance (disarmed) until closed, so a connection
// that goes away again re-arms it.
var poller struct {
	once  sync.Once
	epfd  int
	err   error
	mu    sync.Mutex
	next  uint64
	waits map[uint64]*layer
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
		poller.waits = make(map[uint64]*layer)
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

// pollAdd arms the poller for l's socket (l.awayState.rc) until its
// deadline. Once it returns nil, the connection comes back by pollFire.
func pollAdd(l *layer) error {
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
	poller.waits[token] = l
	poller.mu.Unlock()
	l.mu.Lock()
	l.awayState.token = token
	l.awayState.wakeTimer = time.AfterFunc(time.Until(l.awayState.deadline), func() { pollFire(token) })
	l.mu.Unlock()

	ev := syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd:     int32(uint32(token)),
		Pad:    int32(uint32(token >> 32)),
	}
	var cerr error
	err := l.awayState.rc.Control(func(fd uintptr) {
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
	// Armed, or fired meanwhile (a close, the deadline): either way the
	// connection comes back by pollFire.
	return nil
}

// pollTake takes the connection of token out of the poller, once: nil if
// it was taken already.
func pollTake(token uint64) *layer {
	poller.mu.Lock()
	l := poller.waits[token]
	delete(poller.waits, token)
	poller.mu.Unlock()
	if l == nil {
		return nil
	}
	l.mu.Lock()
	if l.awayState.wakeTimer != nil {
		l.awayState.wakeTimer.Stop()
		l.awayState.wakeTimer = nil
	}
	l.awayState.token = 0
	l.mu.Unlock()
	return l
}

// pollFire brings the connection of token back, once.
func pollFire(token uint64) {
	if l := pollTake(token); l != nil {
		go l.comeBack()
	}
}
