package relay_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// rawIMAP is a client that speaks IMAP by hand over TLS.
type rawIMAP struct {
	t  *testing.T
	c  *tls.Conn
	br *bufio.Reader
}

func dialRawIMAP(t *testing.T, r *relaytest.Relay) *rawIMAP {
	t.Helper()
	c, err := tls.Dial("tcp", r.AddrOf("imaps"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	x := &rawIMAP{t: t, c: c, br: bufio.NewReader(c)}
	x.expect("* OK")
	return x
}

func (x *rawIMAP) send(s string) {
	x.t.Helper()
	if err := x.trySend(s); err != nil {
		x.t.Fatal(err)
	}
}

func (x *rawIMAP) trySend(s string) error {
	x.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := io.WriteString(x.c, s)
	return err
}

// expect reads lines until one starts with prefix.
func (x *rawIMAP) expect(prefix string) string {
	x.t.Helper()
	l, err := x.tryExpect(prefix)
	if err != nil {
		x.t.Fatal(err)
	}
	return l
}

func (x *rawIMAP) tryExpect(prefix string) (string, error) {
	x.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for range 1000 {
		l, err := x.br.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("want %q: %v (got %q)", prefix, err, l)
		}
		if strings.HasPrefix(l, prefix) {
			return l, nil
		}
	}
	return "", fmt.Errorf("want %q: too many lines", prefix)
}

func (x *rawIMAP) idle(user string) {
	x.t.Helper()
	x.send("a LOGIN " + user + " " + password + "\r\n")
	x.expect("a OK")
	x.send("b SELECT INBOX\r\n")
	x.expect("b OK")
	x.send("c IDLE\r\n")
	x.expect("+ ")
}

// layerGoroutines counts goroutines serving IMAP connections: the layer's
// and imapserver's (the poller's and imapserver's accept loop are not).
func layerGoroutines() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "imapext.(*layer)") || strings.Contains(g, "imapext.(*Conn)") {
			n++
		}
	}
	return n
}

// A hibernated connection holds no goroutine: its socket waits in the
// poller. It comes back for DONE, for deliveries, for its idle timeout,
// and for a shutdown, which does not wait for it.
func TestIMAPAwayHoldsNoGoroutine(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) {
		c.IMAPHibernateAfter = 20 * time.Millisecond
		c.NewAccountsBurst = 100 // all from one address
	})
	const n = 12
	var users []string
	for i := range n {
		u := fmt.Sprintf("away%05d@localhost", i)
		login(t, r, u).Close()
		users = append(users, u)
	}
	waitFor(t, "logins to end", func() bool { return layerGoroutines() == 0 })
	var cs []*rawIMAP
	for _, u := range users {
		x := dialRawIMAP(t, r)
		x.idle(u)
		cs = append(cs, x)
	}
	waitHibernated(t, r, n)
	waitFor(t, "connections to go away", func() bool { return layerGoroutines() == 0 })

	// DONE brings one back, and it answers.
	cs[0].send("DONE\r\n")
	cs[0].expect("c OK")
	cs[0].send("d NOOP\r\n")
	cs[0].expect("d OK")

	// A delivery wakes another (the session, then the socket on DONE).
	if err := submit(t, r, users[1], password, users[1], []string{users[1]}, testmsg.Encrypted(users[1], users[1], 0)); err != nil {
		t.Fatal(err)
	}
	cs[1].expect("* 1 EXISTS")
	cs[1].send("DONE\r\n")
	cs[1].expect("c OK")

	// The idle timeout, kept while away: on a relay with every deadline
	// shortened, a connection hibernates, goes away and is told BYE.
	cfg := relaytest.Config(t.TempDir())
	cfg.IMAPHibernateAfter = 20 * time.Millisecond
	short := relaytest.StartWith(t, cfg, relay.Options{ClientTimeoutCap: 1500 * time.Millisecond})
	login(t, short, users[0]).Close()
	late := dialRawIMAP(t, short)
	late.idle(users[0])
	waitFor(t, "the connection to hibernate", func() bool { return short.HibernatedIMAP() == 1 })
	late.expect("* BYE")

	// Shutdown: every connection still away is closed, promptly.
	done := make(chan struct{})
	go func() { r.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown waits for connections away")
	}
	for _, x := range cs[2:] {
		x.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(x.br); err != nil {
			t.Fatalf("after shutdown: %v", err)
		}
	}
}

// Clients that end IDLE at any moment of the hibernation and going away:
// with a hibernation delay of a millisecond, DONE lands before, during
// and after the layer's goroutine leaves, and every IDLE ends with its OK.
func TestIMAPAwayRaces(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.IMAPHibernateAfter = time.Millisecond })
	const n, rounds = 4, 25
	errs := make(chan error, n)
	for i := range n {
		u := fmt.Sprintf("race%05d@localhost", i)
		login(t, r, u).Close()
		x := dialRawIMAP(t, r)
		go func() {
			errs <- func() error {
				steps := []string{"a LOGIN " + u + " " + password + "\r\n", "a OK", "b SELECT INBOX\r\n", "b OK"}
				for k := 0; k < len(steps); k += 2 {
					if err := x.trySend(steps[k]); err != nil {
						return err
					}
					if _, err := x.tryExpect(steps[k+1]); err != nil {
						return err
					}
				}
				for j := range rounds {
					if err := x.trySend(fmt.Sprintf("i%d IDLE\r\n", j)); err != nil {
						return err
					}
					if _, err := x.tryExpect("+ "); err != nil {
						return err
					}
					// 0 to 4 ms: before, while and after going away.
					time.Sleep(time.Duration((i+j)%5) * time.Millisecond)
					if err := x.trySend("DONE\r\n"); err != nil {
						return err
					}
					if _, err := x.tryExpect(fmt.Sprintf("i%d OK", j)); err != nil {
						return fmt.Errorf("round %d: %w", j, err)
					}
				}
				return nil
			}()
		}()
	}
	for range n {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("clients did not finish")
		}
	}
}
