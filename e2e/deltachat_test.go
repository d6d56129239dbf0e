package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// account is one Delta Chat profile on the relay.
type account struct {
	name     string
	id       uint32
	addr     string
	password string
}

// TestDeltaChat drives the real Delta Chat core (deltachat-rpc-server)
// against a relay on loopback, the way the apps use it: accounts set up by
// hand and by dclogin: code and through /new, contacts made by vCard and by
// SecureJoin, and encrypted messages both ways.
func TestDeltaChat(t *testing.T) {
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	r := startRelay(t)
	dc := dctest.StartT(t)
	ctx := t.Context()

	var alice, bob, carol *account
	var aliceToBob, bobToAlice uint32 // chat ids on either side

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"manual settings", func(t *testing.T) {
			alice = configure(ctx, t, dc, "alice0001", "alice-long-password-1", func(ctx context.Context, acc uint32, addr, pw string) error {
				return dc.AddOrUpdateTransport(ctx, acc, r.Transport(addr, pw))
			})
			bob = configure(ctx, t, dc, "bobby0002", "bob-long-password-2", func(ctx context.Context, acc uint32, addr, pw string) error {
				return dc.AddOrUpdateTransport(ctx, acc, r.Transport(addr, pw))
			})
		}},
		{"dclogin code", func(t *testing.T) {
			needs(t, alice)
			// The password needs every kind of escaping a dclogin: query has.
			carol = configure(ctx, t, dc, "carol0003", "carol&p=1+2 %/?#x", func(ctx context.Context, acc uint32, addr, pw string) error {
				qr := dctest.DCLoginQR(r.Transport(addr, pw))
				if res, err := dc.CheckQR(ctx, acc, qr); err != nil || res["kind"] != "login" {
					return fmt.Errorf("check_qr(%s) = %v, %v; want kind login", qr, res, err)
				}
				return dc.AddTransportFromQR(ctx, acc, qr)
			})
			// The account was created at core's first login: if the code
			// garbled the password, only the garbled one would work now.
			if err := imapLogin(r, carol.addr, carol.password); err != nil {
				t.Fatalf("IMAP login as %s with the password in the dclogin: code: %v", carol.addr, err)
			}
			vcardChat(ctx, t, dc, carol, alice, "hello alice, carol here (dclogin)")
		}},
		{"vcard chat", func(t *testing.T) {
			needs(t, alice, bob)
			aliceToBob, bobToAlice = vcardChat(ctx, t, dc, alice, bob, "hello bob, alice here (vcard)")
		}},
		{"securejoin chat", func(t *testing.T) {
			needs(t, alice, bob)
			secureJoin(ctx, t, dc, alice, bob)
		}},
		{"encrypted round trips", func(t *testing.T) {
			needs(t, alice, bob)
			if aliceToBob == 0 {
				t.Skip("needs the chat from the vcard step")
			}
			roundTrips(ctx, t, dc, alice, aliceToBob, bob, bobToAlice, 5)
		}},
		{"round trip after hibernation", func(t *testing.T) {
			needs(t, alice, bob)
			if aliceToBob == 0 {
				t.Skip("needs the chat from the vcard step")
			}
			// Both clients idle long enough for the relay to park their
			// IDLE connections (10 s by default); a message must still
			// reach each at once.
			deadline := time.Now().Add(60 * time.Second)
			for r.metric(t, "chatrelay_imap_hibernated_connections") < 2 {
				if time.Now().After(deadline) {
					t.Fatalf("%v IMAP connections hibernated after 60 s, want at least 2", r.metric(t, "chatrelay_imap_hibernated_connections"))
				}
				time.Sleep(500 * time.Millisecond)
			}
			roundTrips(ctx, t, dc, alice, aliceToBob, bob, bobToAlice, 1)
		}},
		{"account from /new", func(t *testing.T) {
			needs(t, alice)
			email, password := newAccount(ctx, t, r)
			local, _, _ := strings.Cut(email, "@")
			dave := configure(ctx, t, dc, local, password, func(ctx context.Context, acc uint32, addr, pw string) error {
				if addr != email {
					return fmt.Errorf("address %q, /new said %q", addr, email)
				}
				return dc.AddOrUpdateTransport(ctx, acc, r.Transport(addr, pw))
			})
			vcardChat(ctx, t, dc, dave, alice, "hello alice, from a /new account")
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			t.Fatalf("%s failed; later steps depend on it", s.name)
		}
	}
	// The loopback-only check (in dctest.StartT) relies on reading core's
	// log; make sure it read the connections we know core made.
	targets := dc.ConnectionTargets()
	if alice != nil && !slices.Contains(targets, r.Host) {
		t.Errorf("core's log showed connections to %q, not to the relay at %s: dctest's log patterns are out of date", targets, r.Host)
	}
	t.Logf("core's connection targets: %q", targets)
}

// needs skips a step run alone (go test -run) that needs accounts made
// by earlier steps.
func needs(t *testing.T, accounts ...*account) {
	t.Helper()
	if slices.Contains(accounts, nil) {
		t.Skip("needs accounts from earlier steps: run the whole test")
	}
}

// configure adds an account for name@localhost, sets it up with setup
// (bounded by ctx) and checks core calls it configured.
func configure(ctx context.Context, t *testing.T, dc *dctest.RPC, name, password string, setup func(ctx context.Context, acc uint32, addr, pw string) error) *account {
	t.Helper()
	return configureAt(ctx, t, dc, name, "localhost", password, setup)
}

// configureAt is configure for the address name@domain.
func configureAt(ctx context.Context, t *testing.T, dc *dctest.RPC, name, domain, password string, setup func(ctx context.Context, acc uint32, addr, pw string) error) *account {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	a := &account{name: name, addr: name + "@" + domain, password: password}
	var err error
	if a.id, err = dc.AddAccount(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dc.SetConfig(ctx, a.id, "displayname", name); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := setup(ctx, a.id, a.addr, password); err != nil {
		t.Fatalf("configure %s: %v", a.addr, err)
	}
	took := time.Since(start)
	if ok, err := dc.IsConfigured(ctx, a.id); err != nil || !ok {
		t.Fatalf("configure %s: is_configured = %v, %v", a.addr, ok, err)
	}
	if got, err := dc.GetConfig(ctx, a.id, "configured_addr"); err != nil || got != a.addr {
		t.Errorf("configured_addr = %q, %v; want %q", got, err, a.addr)
	}
	// Core skips whatever is in INBOX when its inbox loop first selects
	// it (a new account starts with no history), so a message that
	// arrives between configuring and that SELECT is never shown. Wait
	// until the loop has selected INBOX, fetched, and gone into IDLE.
	idleStart := time.Now()
	if _, err := dc.WaitEvent(ctx, a.id, "ImapInboxIdle", nil); err != nil {
		t.Fatalf("%s: core's inbox loop never went into IDLE: %v", a.addr, err)
	}
	t.Logf("TIME configure %s: %v (then IDLE on INBOX after %v)", a.addr, took.Round(time.Millisecond), time.Since(idleStart).Round(time.Millisecond))
	return a
}

// vcardChat has from import to's vCard and write first; to gets the
// message encrypted, accepts the chat and replies. It returns the chat ids
// on both sides.
func vcardChat(ctx context.Context, t *testing.T, dc *dctest.RPC, from, to *account, text string) (fromChat, toChat uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	vcard, err := dc.MakeVcard(ctx, to.id, dctest.SelfContactID)
	if err != nil {
		t.Fatal(err)
	}
	contacts, err := dc.ImportVcardContents(ctx, from.id, vcard)
	if err != nil || len(contacts) != 1 {
		t.Fatalf("import %s's vCard into %s: %v, %v", to.addr, from.addr, contacts, err)
	}
	if fromChat, err = dc.CreateChatByContactID(ctx, from.id, contacts[0]); err != nil {
		t.Fatal(err)
	}
	if c, err := dc.BasicChatInfo(ctx, from.id, fromChat); err != nil || !c.IsEncrypted {
		t.Fatalf("%s's chat with %s: %+v, %v; want an encrypted chat", from.addr, to.addr, c, err)
	}
	m := exchange(ctx, t, dc, from, fromChat, to, text)
	toChat = m.ChatID
	if err := dc.AcceptChat(ctx, to.id, toChat); err != nil {
		t.Fatal(err)
	}
	exchange(ctx, t, dc, to, toChat, from, "re: "+text)
	return fromChat, toChat
}

// exchange sends text from one account and checks the other gets exactly
// that text, end-to-end encrypted. It returns the received message.
func exchange(ctx context.Context, t *testing.T, dc *dctest.RPC, from *account, chat uint32, to *account, text string) dctest.Message {
	t.Helper()
	sent := time.Now()
	if _, err := dc.SendText(ctx, from.id, chat, text); err != nil {
		t.Fatalf("%s sends %q: %v", from.addr, text, err)
	}
	m, at, err := dc.WaitIncoming(ctx, to.id, text)
	if err != nil {
		t.Fatalf("%s -> %s: %v", from.addr, to.addr, err)
	}
	if !m.ShowPadlock {
		t.Errorf("%s -> %s: %q arrived without padlock (not end-to-end encrypted): %+v", from.addr, to.addr, text, m)
	}
	t.Logf("TIME %s -> %s: %v", from.name, to.name, at.Sub(sent).Round(time.Millisecond))
	return m
}

// secureJoin has joiner scan inviter's setup-contact QR code and waits for
// both sides to finish the handshake, which runs over the relay. Then each
// writes once in the new chat; it returns the chat ids on both sides.
func secureJoin(ctx context.Context, t *testing.T, dc *dctest.RPC, inviter, joiner *account) (inviterChat, joinerChat uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	qr, err := dc.GetSecureJoinQR(ctx, inviter.id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := dc.CheckQR(ctx, joiner.id, qr); err != nil || res["kind"] != "askVerifyContact" {
		t.Fatalf("check_qr(%.60s...) = %v, %v; want kind askVerifyContact", qr, res, err)
	}
	dc.Drain(inviter.id)
	dc.Drain(joiner.id)
	start := time.Now()
	chat, err := dc.SecureJoin(ctx, joiner.id, qr)
	if err != nil {
		t.Fatal(err)
	}
	done := func(e dctest.Event) bool { return e.Progress == 0 || e.Progress == 1000 }
	je, err := dc.WaitEvent(ctx, joiner.id, "SecurejoinJoinerProgress", done)
	if err != nil {
		t.Fatalf("joiner %s: %v", joiner.addr, err)
	}
	ie, err := dc.WaitEvent(ctx, inviter.id, "SecurejoinInviterProgress", done)
	if err != nil {
		t.Fatalf("inviter %s: %v", inviter.addr, err)
	}
	if je.Progress != 1000 || ie.Progress != 1000 {
		t.Fatalf("securejoin failed: joiner progress %d, inviter progress %d", je.Progress, ie.Progress)
	}
	t.Logf("TIME securejoin handshake: %v", time.Since(start).Round(time.Millisecond))
	if c, err := dc.BasicChatInfo(ctx, joiner.id, chat); err != nil || !c.IsEncrypted {
		t.Errorf("joiner's chat after securejoin: %+v, %v; want an encrypted chat", c, err)
	}
	m := exchange(ctx, t, dc, joiner, chat, inviter, "hello after securejoin")
	if r := exchange(ctx, t, dc, inviter, m.ChatID, joiner, "re: hello after securejoin"); r.ChatID != chat {
		t.Errorf("the inviter's reply arrived in chat %d, want the securejoin chat %d", r.ChatID, chat)
	}
	return m.ChatID, chat
}

// roundTrips sends n messages a->b, each answered b->a, checking text and
// padlock, and logs the round-trip times. Core sends at most about one
// message a second (its SMTP rate limit), which dominates the round trip,
// so it also logs the relay's part: from the sender's SmtpMessageSent event
// to the recipient's IncomingMsg.
func roundTrips(ctx context.Context, t *testing.T, dc *dctest.RPC, a *account, aChat uint32, b *account, bChat uint32, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	leg := func(from *account, fromChat uint32, to *account, toChat uint32, text string) (arrived, delivery time.Duration) {
		t.Helper()
		dc.Drain(from.id)
		start := time.Now()
		if _, err := dc.SendText(ctx, from.id, fromChat, text); err != nil {
			t.Fatal(err)
		}
		sent, err := dc.WaitEvent(ctx, from.id, "SmtpMessageSent", nil)
		if err != nil {
			t.Fatalf("%s sending %q: %v", from.addr, text, err)
		}
		m, at, err := dc.WaitIncoming(ctx, to.id, text)
		if err != nil {
			t.Fatalf("%s -> %s: %v", from.addr, to.addr, err)
		}
		if !m.ShowPadlock || m.ChatID != toChat {
			t.Errorf("%s got %+v; want %q with padlock in chat %d", to.addr, m, text, toChat)
		}
		return at.Sub(start), at.Sub(sent.At)
	}
	var rtts, deliveries []time.Duration
	for i := range n {
		ping, d1 := leg(a, aChat, b, bChat, "ping "+strconv.Itoa(i)+" "+strings.Repeat("·", i))
		pong, d2 := leg(b, bChat, a, aChat, "pong "+strconv.Itoa(i))
		rtts = append(rtts, ping+pong)
		deliveries = append(deliveries, d1, d2)
	}
	t.Logf("TIME round trip %s->%s->%s (n=%d): %s", a.name, b.name, a.name, len(rtts), stats(rtts))
	t.Logf("TIME relay delivery, SmtpMessageSent to IncomingMsg (n=%d): %s", len(deliveries), stats(deliveries))
}

func stats(ds []time.Duration) string {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("min %v, p50 %v, max %v", r(ds[0]), r(ds[len(ds)/2]), r(ds[len(ds)-1]))
}

// newAccount asks the relay for an account the way a DCACCOUNT: code makes
// core do it: an empty POST to /new, answered with JSON credentials.
func newAccount(ctx context.Context, t *testing.T, r *relay) (email, password string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	defer client.CloseIdleConnections()
	url := fmt.Sprintf("https://%s:%d/new", r.Host, r.HTTPS)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(nil))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s: %s", url, resp.Status, body)
	}
	var creds struct {
		Email    string `json:"email"`
		Password string `json:"password"`
		Reason   string `json:"reason"`
	}
	if err := json.Unmarshal(body, &creds); err != nil {
		t.Fatalf("POST %s: %v in %q", url, err, body)
	}
	if !regexp.MustCompile(`^[a-z0-9]{9}@localhost$`).MatchString(creds.Email) || len(creds.Password) < 9 {
		t.Fatalf("POST %s = %s; want email of 9 [a-z0-9] @localhost and a password of 9 or more", url, body)
	}
	t.Logf("/new made %s", creds.Email)
	return creds.Email, creds.Password
}
