package relay_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitHibernated(t *testing.T, r *relaytest.Relay, n int64) {
	t.Helper()
	waitFor(t, "hibernation", func() bool { return r.HibernatedIMAP() == n })
}

// A connection idling in IDLE hibernates (imapserver's connection and
// goroutine go, the session stays) and wakes up for deliveries, for
// another session's EXPUNGE and for DONE, with sequence numbers right,
// again and again; a client that goes away while hibernated leaves
// nothing behind.
func TestIMAPHibernation(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.IMAPHibernateAfter = 30 * time.Millisecond })
	const alice, bob = "alicealic@localhost", "bobbobbob@localhost"
	login(t, r, alice).Close()
	login(t, r, bob).Close()
	deliver := func(i int) {
		t.Helper()
		if err := submit(t, r, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, i)); err != nil {
			t.Fatal(err)
		}
	}
	deliver(0)
	deliver(1)
	waitHibernated(t, r, 0)

	exists := make(chan uint32, 16)
	expunged := make(chan uint32, 16)
	c := dialIMAP(t, r, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
		Expunge: func(seq uint32) { expunged <- seq },
	}})
	if err := c.Login(bob, password).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	expect := func(ch <-chan uint32, want uint32, what string) {
		t.Helper()
		select {
		case got := <-ch:
			if got != want {
				t.Fatalf("%s %d, want %d", what, got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s while hibernated", what)
		}
	}
	uids := func(want ...imap.UID) {
		t.Helper()
		msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true}).Collect()
		if err != nil || len(msgs) != len(want) {
			for _, m := range msgs {
				t.Logf("got seq %d uid %d", m.SeqNum, m.UID)
			}
			t.Fatalf("FETCH: %v %v", msgs, err)
		}
		for i, m := range msgs {
			if m.SeqNum != uint32(i+1) || m.UID != want[i] {
				t.Fatalf("FETCH %d: seq %d uid %d, want uid %d", i+1, m.SeqNum, m.UID, want[i])
			}
		}
		byUID, err := c.Fetch(imap.UIDSetNum(want...), &imap.FetchOptions{UID: true}).Collect()
		if err != nil || len(byUID) != len(want) {
			t.Fatalf("UID FETCH: %v %v", byUID, err)
		}
		if err := c.Noop().Wait(); err != nil {
			t.Fatal(err)
		}
	}

	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	waitHibernated(t, r, 1)
	// (a) A delivery wakes it.
	deliver(2)
	expect(exists, 3, "EXISTS")
	waitHibernated(t, r, 1)
	// (c) So does an EXPUNGE by another session.
	other := login(t, r, bob)
	if _, err := other.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	expungeSeq(t, other, 1)
	other.Close()
	expect(expunged, 1, "EXPUNGE")
	waitHibernated(t, r, 1)
	// (b) DONE, and the connection goes on.
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	waitHibernated(t, r, 0)
	uids(2, 3)

	// (e) Again and again.
	want := []imap.UID{2, 3}
	for i := 3; i < 8; i++ {
		idle, err := c.Idle()
		if err != nil {
			t.Fatal(err)
		}
		waitHibernated(t, r, 1)
		deliver(i)
		want = append(want, imap.UID(i+1))
		expect(exists, uint32(len(want)), "EXISTS")
		waitHibernated(t, r, 1)
		if err := idle.Close(); err != nil {
			t.Fatal(err)
		}
		if err := idle.Wait(); err != nil {
			t.Fatal(err)
		}
		uids(want...)
	}

	// (d) The client goes away while hibernated.
	before := runtime.NumGoroutine()
	idle, err = c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	waitHibernated(t, r, 1)
	c.Close()
	waitHibernated(t, r, 0)
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before-1 })
	// The session is gone from the mailbox: deliveries do not reach it.
	deliver(9)
	if r.HibernatedIMAP() != 0 {
		t.Fatal("closed connection woke up")
	}
}

// Deliveries that land while connections detach or resume: with a
// hibernation delay of a millisecond, several IDLE clients get messages
// at random moments, and every client sees every one (its last EXISTS is
// the total), then DONE and FETCH agree.
func TestIMAPHibernationRaces(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) {
		c.IMAPHibernateAfter = time.Millisecond
		c.SendRatePerMinute, c.SendRateBurst = 1e6, 1e6
	})
	const sender = "senderabc@localhost"
	rcpts := []string{"rcptaaaaa@localhost", "rcptbbbbb@localhost", "rcptccccc@localhost"}
	login(t, r, sender).Close()
	type watcher struct {
		c      *imapclient.Client
		idle   *imapclient.IdleCommand
		exists chan uint32
	}
	var ws []watcher
	for _, u := range rcpts {
		login(t, r, u).Close()
		exists := make(chan uint32, 64)
		c := dialIMAP(t, r, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					exists <- *d.NumMessages
				}
			},
		}})
		ws = append(ws, watcher{c, selectIdle(t, c, u), exists})
	}
	waitHibernated(t, r, int64(len(ws)))
	const n = 30
	for i := range n {
		// 0 to 3 ms apart: some land mid-detach or mid-resume.
		time.Sleep(time.Duration(i%4) * time.Millisecond)
		if err := submit(t, r, sender, password, sender, rcpts, testmsg.Encrypted(sender, rcpts[0], i)); err != nil {
			t.Fatal(err)
		}
	}
	for i, w := range ws {
		deadline := time.After(10 * time.Second)
		for last := uint32(0); last != n; {
			select {
			case last = <-w.exists:
				if last > n {
					t.Fatalf("client %d: EXISTS %d, only %d sent", i, last, n)
				}
			case <-deadline:
				t.Fatalf("client %d: last EXISTS %d, want %d", i, last, n)
			}
		}
		if err := w.idle.Close(); err != nil {
			t.Fatal(err)
		}
		if err := w.idle.Wait(); err != nil {
			t.Fatal(err)
		}
		msgs, err := w.c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true}).Collect()
		if err != nil || len(msgs) != n {
			t.Fatalf("client %d: FETCH 1:* gave %d messages (%v), want %d", i, len(msgs), err, n)
		}
		for j, m := range msgs {
			if m.SeqNum != uint32(j+1) || m.UID != imap.UID(j+1) {
				t.Fatalf("client %d: message %d has seq %d uid %d", i, j+1, m.SeqNum, m.UID)
			}
		}
	}
}
