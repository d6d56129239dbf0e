package relay

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// noCloseHook wraps a connection and shows its socket, but cannot say when
// it is closed: a hibernated connection beneath it could not go away.
type noCloseHook struct{ net.Conn }

func (noCloseHook) SyscallConn() (syscall.RawConn, error) { return nil, errors.ErrUnsupported }
func (noCloseHook) ClampDeadline(t time.Time) time.Time   { return t }

type noCloseHookListener struct{ net.Listener }

func (noCloseHookListener) sampleConn() net.Conn { return noCloseHook{} }

// Start refuses an IMAP listener whose connections beneath TLS lack what
// the IMAP layer needs to let a hibernated connection's goroutine go, or
// that does not say what its connections are; the relay's own listener
// passes.
func TestIMAPListenerWrappersAreChecked(t *testing.T) {
	ll := &limitListener{}
	if err := checkIMAPConns("imaps", ll); err != nil {
		t.Fatalf("the limit listener: %v", err)
	}
	err := checkIMAPConns("imaps", noCloseHookListener{ll})
	if err == nil || !strings.Contains(err.Error(), "noCloseHook") || !strings.Contains(err.Error(), "OnClose") {
		t.Fatalf("a wrapper without OnClose: %v", err)
	}
	err = checkIMAPConns("imap", struct{ net.Listener }{ll})
	if err == nil || !strings.Contains(err.Error(), "imap listener") {
		t.Fatalf("a wrapper that hides its connections: %v", err)
	}
}
