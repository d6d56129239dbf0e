package relay_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// imapLoginFrom runs one LOGIN per entry of tries ("user pass") on one
// IMAP connection from ip, stopping at the first success, and returns
// the tagged replies.
func imapLoginFrom(t *testing.T, r *relaytest.Relay, ip string, tries ...string) []string {
	t.Helper()
	l := newLine(t, dialFrom(t, ip, r.AddrOf("imaps"), true))
	l.expect("* OK")
	var out []string
	for i, s := range tries {
		tag := fmt.Sprintf("g%d", i)
		l.send(tag + " LOGIN " + s + "\r\n")
		reply, _ := l.imapTagged(tag)
		out = append(out, reply)
		if strings.HasPrefix(reply, tag+" OK") {
			l.send("x LOGOUT\r\n")
			break
		}
	}
	l.c.Close()
	return out
}

func imapOK(reply string) bool { return strings.Contains(reply, " OK") }

// smtpAuthFrom runs AUTH PLAIN on submissions from ip and returns the reply.
func smtpAuthFrom(t *testing.T, r *relaytest.Relay, ip, user, pass string) string {
	t.Helper()
	l := smtpSession(t, r, "submissions", ip)
	l.send("AUTH PLAIN " + plainAuth(user, pass) + "\r\n")
	ans := l.smtpReply()
	l.c.Close()
	return ans
}

func TestOwnerNotLockedOutByGuesserOnOneAddress(t *testing.T) {
	r := hostileRelay(t, nil)
	delays := relay.RecordAuthDelaysForTest(r.Server)
	var wrong []string
	for i := range 12 {
		wrong = append(wrong, fmt.Sprintf("%s wrong-password-%d", hAlice, i))
	}
	for _, reply := range imapLoginFrom(t, r, "127.0.10.1", wrong...) {
		if imapOK(reply) {
			t.Fatal("wrong password accepted")
		}
	}
	// The guesser's address is throttled for this account, even with the
	// right password.
	if imapOK(imapLoginFrom(t, r, "127.0.10.1", hAlice+" "+password)[0]) {
		t.Fatal("right password accepted from the guessing address")
	}
	if ans := smtpAuthFrom(t, r, "127.0.10.1", hAlice, password); !strings.HasPrefix(ans, "535 ") {
		t.Fatalf("SMTP AUTH from the guessing address: %q", ans)
	}
	// The owner, on an address that never logged in before, is not.
	if reply := imapLoginFrom(t, r, "127.0.10.2", hAlice+" "+password)[0]; !imapOK(reply) {
		t.Fatalf("owner locked out over IMAP from another address: %q", reply)
	}
	if ans := smtpAuthFrom(t, r, "127.0.10.3", hAlice, password); !strings.HasPrefix(ans, "235 ") {
		t.Fatalf("owner locked out over SMTP from another address: %q", ans)
	}
	// One guessing address is not an attack from many: nobody was delayed.
	select {
	case d := <-delays:
		t.Fatalf("login delayed by %v after guesses from one address", d)
	default:
	}
	record(t, "lock-out: 12 wrong passwords for one account from one address", "imaps, submissions",
		"that address refused for that account (IMAP NO, SMTP 535); the owner from another address logs in over IMAP and SMTP")
}

func TestOwnerNotLockedOutByGuessesFromManyAddresses(t *testing.T) {
	r := hostileRelay(t, nil)
	delays := relay.RecordAuthDelaysForTest(r.Server)
	// The owner's device has logged in from this address before.
	if !imapOK(imapLoginFrom(t, r, "127.0.11.250", hAlice+" "+password)[0]) {
		t.Fatal("owner's first login failed")
	}
	// A botnet: 30 addresses, 2 wrong passwords each.
	for i := range 30 {
		ip := fmt.Sprintf("127.0.11.%d", i+1)
		for _, reply := range imapLoginFrom(t, r, ip, hAlice+" wrong-a", hAlice+" wrong-b") {
			if imapOK(reply) {
				t.Fatal("wrong password accepted")
			}
		}
	}
	// Guesses from new addresses are slowed now.
	select {
	case <-delays:
	default:
		t.Fatal("60 failures from 30 addresses: no attempt was delayed")
	}
	for len(delays) > 0 {
		<-delays
	}
	// The owner's known address: at once, no delay.
	if reply := imapLoginFrom(t, r, "127.0.11.250", hAlice+" "+password)[0]; !imapOK(reply) {
		t.Fatalf("owner locked out on a known address: %q", reply)
	}
	if len(delays) != 0 {
		t.Fatalf("owner's known address delayed by %v", <-delays)
	}
	// A new device on a new address: delayed, but the right password works.
	if ans := smtpAuthFrom(t, r, "127.0.11.251", hAlice, password); !strings.HasPrefix(ans, "235 ") {
		t.Fatalf("owner locked out from a new address: %q", ans)
	}
	if len(delays) == 0 {
		t.Fatal("new address during the attack was not delayed")
	}
	record(t, "lock-out: 60 wrong passwords for one account from 30 addresses", "imaps, submissions",
		"new addresses delayed before the check; the owner logs in at once from a known address and, delayed, from a new one")
}

// httpFrom is an HTTPS client whose connections come from ip.
func httpFrom(ip string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: relaytest.ClientTLS(),
		DialContext:     func(ctx context.Context, n, a string) (net.Conn, error) { return d.DialContext(ctx, n, a) },
	}}
}

func postNew(t *testing.T, r *relaytest.Relay, ip string) int {
	t.Helper()
	c := httpFrom(ip)
	defer c.CloseIdleConnections()
	resp, err := c.Post("https://"+r.AddrOf("https")+"/new", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestFirstLoginCreationRateLimitedPerAddress(t *testing.T) {
	r := hostileRelay(t, nil)
	before, _ := r.Store().CountAccounts()
	name := func(prefix string, i int) string { return fmt.Sprintf("%s%04d@localhost", prefix, i) }
	// From one address, new names over IMAP and SMTP: the burst, then no
	// more.
	created := 0
	for i := range 20 {
		var ok bool
		if i%2 == 0 {
			ok = imapOK(imapLoginFrom(t, r, "127.0.12.1", name("flooa", i)+" "+password)[0])
		} else {
			ok = strings.HasPrefix(smtpAuthFrom(t, r, "127.0.12.1", name("floob", i), password), "235 ")
		}
		if ok {
			created++
		}
	}
	if created == 0 || created > 5 {
		t.Fatalf("%d accounts created at first login from one address, want 1..5", created)
	}
	now, _ := r.Store().CountAccounts()
	if now-before != created {
		t.Fatalf("%d accounts in the store, %d logins succeeded", now-before, created)
	}
	// /new shares the budget: it is spent for this address.
	if code := postNew(t, r, "127.0.12.1"); code != http.StatusTooManyRequests {
		t.Fatalf("/new after first-login creations: %d, want 429", code)
	}
	// And the other way round: /new spends what first login may use.
	for i := 0; i < 20 && postNew(t, r, "127.0.12.2") == http.StatusOK; i++ {
	}
	if reply := imapLoginFrom(t, r, "127.0.12.2", name("aftrn", 1)+" "+password)[0]; imapOK(reply) {
		t.Fatal("first-login creation allowed after /new spent the budget")
	}
	// Another address still gets its account.
	if reply := imapLoginFrom(t, r, "127.0.12.3", name("other", 1)+" "+password)[0]; !imapOK(reply) {
		t.Fatalf("first login from another address: %q", reply)
	}
	// Existing accounts log in from the limited address as before.
	if !imapOK(imapLoginFrom(t, r, "127.0.12.1", hBob+" "+password)[0]) {
		t.Fatal("existing account refused on a creation-limited address")
	}
	record(t, "account flood: 20 first logins with new names from one address", "imaps, submissions",
		fmt.Sprintf("%d created, then refused (IMAP NO, SMTP 454); /new from that address 429; other addresses unaffected", created))
}
