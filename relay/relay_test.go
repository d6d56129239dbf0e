package relay_test

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

const password = "long-enough-password"

func dialIMAP(t *testing.T, r *relaytest.Relay, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = relaytest.ClientTLS()
	c, err := imapclient.DialTLS(r.AddrOf("imaps"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func login(t *testing.T, r *relaytest.Relay, user string) *imapclient.Client {
	t.Helper()
	c := dialIMAP(t, r, nil)
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	return c
}

func submit(t *testing.T, r *relaytest.Relay, user, pass, from string, to []string, msg []byte) error {
	t.Helper()
	c, err := smtp.DialTLS(r.AddrOf("submissions"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
		return err
	}
	return c.SendMail(from, to, bytes.NewReader(msg))
}

func smtpCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// selectWatching logs in, selects INBOX and reports every EXISTS count.
func selectWatching(t *testing.T, r *relaytest.Relay, user string) (*imapclient.Client, <-chan uint32) {
	t.Helper()
	exists := make(chan uint32, 16)
	c := dialIMAP(t, r, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
	}})
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	return c, exists
}

func TestFirstLoginCreatesAccount(t *testing.T) {
	r := relaytest.Start(t, nil)
	c := dialIMAP(t, r, nil)
	if err := c.Login("abcdefghi@localhost", password).Wait(); err != nil {
		t.Fatalf("first login: %v", err)
	}
	if ok, _ := r.Store().AccountExists("abcdefghi@localhost"); !ok {
		t.Fatal("account not created")
	}
	// The same name with another password is refused, and the stored
	// password still works afterwards.
	c2 := dialIMAP(t, r, nil)
	if err := c2.Login("abcdefghi@localhost", "another-password").Wait(); err == nil {
		t.Fatal("wrong password accepted")
	}
	c3 := dialIMAP(t, r, nil)
	if err := c3.Login("abcdefghi@localhost", password).Wait(); err != nil {
		t.Fatalf("stored password no longer works: %v", err)
	}
	// SMTP login creates accounts too.
	if err := submit(t, r, "smtpfirst@localhost", password, "smtpfirst@localhost", []string{"abcdefghi@localhost"},
		testmsg.Encrypted("smtpfirst@localhost", "abcdefghi@localhost", 0)); err != nil {
		t.Fatalf("first login by SMTP and send: %v", err)
	}
}

func TestFirstLoginRefusals(t *testing.T) {
	r := relaytest.Start(t, nil)
	cases := []struct{ name, user, pass string }{
		{"short name", "abcdefgh@localhost", password},
		{"long name", "abcdefghij@localhost", password},
		{"bad characters", "abcd+fghi@localhost", password},
		{"upper case is folded, bad chars stay", "abc!efghi@localhost", password},
		{"wrong domain", "abcdefghi@example.org", password},
		{"short password", "abcdefghi@localhost", "12345678"},
		{"no domain", "abcdefghi", password},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialIMAP(t, r, nil)
			if err := c.Login(tc.user, tc.pass).Wait(); err == nil {
				t.Fatal("login accepted")
			}
			if n, _ := r.Store().CountAccounts(); n != 0 {
				t.Fatalf("%d accounts exist after refusal", n)
			}
		})
	}
}

func TestConcurrentFirstLoginCreatesOnce(t *testing.T) {
	r := relaytest.Start(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := imapclient.DialTLS(r.AddrOf("imaps"), &imapclient.Options{TLSConfig: relaytest.ClientTLS()})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			errs <- c.Login("concurren@localhost", password).Wait()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("login: %v", err)
		}
	}
	if n, _ := r.Store().CountAccounts(); n != 1 {
		t.Fatalf("%d accounts, want 1", n)
	}
}

func TestSubmissionReachesIdleAndFetchReturnsExactBytes(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice, bob = "alicealic@localhost", "bobbobbob@localhost"
	login(t, r, alice).Close()

	c, exists := selectWatching(t, r, bob)
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	msg := testmsg.Encrypted(alice, bob, 1000)
	start := time.Now()
	if err := submit(t, r, alice, password, alice, []string{bob}, msg); err != nil {
		t.Fatalf("submit: %v", err)
	}
	select {
	case n := <-exists:
		if n != 1 {
			t.Fatalf("EXISTS %d, want 1", n)
		}
		t.Logf("IDLE heard of the message %v after the 250", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("no EXISTS during IDLE")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}

	// Delta Chat asks for a UID range past the last UID.
	msgs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{
		UID: true, RFC822Size: true,
		BodySection: []*imap.FetchItemBodySection{{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"From", "Subject"}, Peek: true}},
	}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("header fetch: %v, %d messages", err, len(msgs))
	}
	uid := msgs[0].UID
	body, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(body) != 1 {
		t.Fatalf("body fetch: %v", err)
	}
	got := body[0].FindBodySection(&imap.FetchItemBodySection{Peek: true})
	// Submission rewrites the header for privacy, the body stays exact.
	wantBody := msg[bytes.Index(msg, []byte("\r\n\r\n")):]
	if !bytes.HasSuffix(got, wantBody) {
		t.Fatalf("stored body differs from the submitted one")
	}
	if int64(len(got)) != msgs[0].RFC822Size {
		t.Fatalf("RFC822.SIZE %d, body %d bytes", msgs[0].RFC822Size, len(got))
	}
	if !strings.Contains(string(got), "Subject: [...]") {
		t.Fatalf("subject not replaced:\n%s", got[:200])
	}

	// Delete and expunge, as Delta Chat does.
	if err := c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	expunged, err := c.Expunge().Collect()
	if err != nil || len(expunged) != 1 {
		t.Fatalf("expunge: %v %v", expunged, err)
	}
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 0 {
		t.Fatalf("after expunge: %v", err)
	}
	if used, _, _ := r.Store().Quota(bob); used != 0 {
		t.Fatalf("quota still counts %d bytes after expunge", used)
	}
}

func TestAuthRefusedBeforeTLS(t *testing.T) {
	r := relaytest.Start(t, nil)
	c, err := imapclient.DialInsecure(r.AddrOf("imap"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !caps.Has(imap.CapLoginDisabled) || !caps.Has(imap.CapStartTLS) {
		t.Fatalf("plain IMAP caps %v lack LOGINDISABLED/STARTTLS", caps)
	}
	if err := c.Login("abcdefghi@localhost", password).Wait(); err == nil {
		t.Fatal("LOGIN accepted without TLS")
	}
	if n, _ := r.Store().CountAccounts(); n != 0 {
		t.Fatal("account created over cleartext")
	}
	// After STARTTLS, login works.
	c2, err := imapclient.DialStartTLS(r.AddrOf("imap"), &imapclient.Options{TLSConfig: relaytest.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Login("abcdefghi@localhost", password).Wait(); err != nil {
		t.Fatalf("login after STARTTLS: %v", err)
	}

	sc, err := smtp.Dial(r.AddrOf("submission"))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := sc.Extension("AUTH"); ok {
		t.Fatal("AUTH offered before STARTTLS")
	}
	if err := sc.Auth(sasl.NewPlainClient("", "abcdefghi@localhost", password)); err == nil {
		t.Fatal("AUTH accepted before STARTTLS")
	}
	if err := sc.Mail("abcdefghi@localhost", nil); err == nil {
		t.Fatal("MAIL accepted without AUTH")
	}
	sc2, err := smtp.DialStartTLS(r.AddrOf("submission"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer sc2.Close()
	if err := sc2.Auth(sasl.NewPlainClient("", "abcdefghi@localhost", password)); err != nil {
		t.Fatalf("AUTH after STARTTLS: %v", err)
	}
}

func TestSubmissionEnvelopeAndPolicy(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice, bob = "alicealic@localhost", "bobbobbob@localhost"
	login(t, r, bob).Close()
	cases := []struct {
		name string
		from string
		to   []string
		msg  []byte
		code int
	}{
		{"envelope sender is not the login", bob, []string{bob}, testmsg.Encrypted(bob, bob, 0), 553},
		{"From header is not the envelope sender", alice, []string{bob}, testmsg.Encrypted(bob, bob, 0), 500},
		{"cleartext", alice, []string{bob}, testmsg.Cleartext(alice, bob), 523},
		{"unknown local recipient", alice, []string{"nobodyhere@localhost"}, testmsg.Encrypted(alice, "nobodyhere@localhost", 0), 550},
		{"encrypted", alice, []string{bob}, testmsg.Encrypted(alice, bob, 0), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := submit(t, r, alice, password, tc.from, tc.to, tc.msg)
			if got := smtpCode(err); got != tc.code {
				t.Fatalf("got %d (%v), want %d", got, err, tc.code)
			}
		})
	}
	c := login(t, r, bob)
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 1 {
		t.Fatalf("bob has %v messages, want only the encrypted one (%v)", st.NumMessages, err)
	}
}

func TestSubmissionRateLimit(t *testing.T) {
	r := relaytest.Start(t, nil)
	r.Clock.Freeze()
	const alice = "alicealic@localhost"
	login(t, r, alice).Close()
	send := func(i int) int {
		return smtpCode(submit(t, r, alice, password, alice, []string{alice}, testmsg.Encrypted(alice, alice, i)))
	}
	// SPEC default: burst 10, then 60 a minute.
	for i := range 10 {
		if c := send(i); c != 0 {
			t.Fatalf("message %d of the burst: code %d", i+1, c)
		}
	}
	if c := send(10); c != 450 {
		t.Fatalf("message past the burst: code %d, want 450", c)
	}
	r.Clock.Advance(time.Second)
	if c := send(11); c != 0 {
		t.Fatalf("after one second: code %d, want a refilled token", c)
	}
	if c := send(12); c != 450 {
		t.Fatalf("second message in that second: code %d, want 450", c)
	}
	r.Clock.Advance(time.Minute)
	for i := range 10 {
		if c := send(13 + i); c != 0 {
			t.Fatalf("after a minute, message %d: code %d", i+1, c)
		}
	}
}

func TestInboundOnlyForLocalRecipients(t *testing.T) {
	r := relaytest.Start(t, nil)
	login(t, r, "bobbobbob@localhost").Close()
	c, err := smtp.DialStartTLS(r.AddrOf("smtp"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("someone@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("victim@example.net", nil); smtpCode(err) != 550 {
		t.Fatalf("relay to a foreign domain: %v, want 550", err)
	}
	if err := c.Rcpt("nobodyhere@localhost", nil); smtpCode(err) != 550 {
		t.Fatalf("unknown local recipient: %v, want 550", err)
	}
	if err := c.Rcpt("bobbobbob@localhost", nil); err != nil {
		t.Fatalf("local recipient: %v", err)
	}
	if n, _ := r.Store().CountAccounts(); n != 1 {
		t.Fatal("inbound created an account")
	}
}

func TestStarvedMachineRefusesNewAccountsTemporarily(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.MinFreeDisk = 1 << 62 })
	c := dialIMAP(t, r, nil)
	err := c.Login("abcdefghi@localhost", password).Wait()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeUnavailable {
		t.Fatalf("IMAP login on a starved machine: %v, want NO [UNAVAILABLE]", err)
	}
	if err := submit(t, r, "abcdefghi@localhost", password, "", nil, nil); smtpCode(err) != 454 {
		t.Fatalf("SMTP AUTH on a starved machine: %v, want 454", err)
	}
	if n, _ := r.Store().CountAccounts(); n != 0 {
		t.Fatal("account created on a starved machine")
	}
}

// A message that arrives between a client's last command and its IDLE is
// announced as soon as IDLE starts, not held until the next delivery.
func TestIdleAnnouncesMailQueuedBeforeIdle(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice, bob = "alicealic@localhost", "bobbobbob@localhost"
	login(t, r, alice).Close()
	c, exists := selectWatching(t, r, bob)
	if err := submit(t, r, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	select {
	case n := <-exists:
		if n != 1 {
			t.Fatalf("EXISTS %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("message delivered before IDLE was not announced")
	}
}

// IDLE is answered by the imapext layer: a session in IDLE hears of an
// EXPUNGE and a flag change by another session of the same account, and
// after DONE the connection goes on with ordinary commands.
func TestIdleSeesOtherSessionAndGoesOn(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice = "alicealic@localhost"
	login(t, r, alice).Close()
	for i := 0; i < 2; i++ {
		if err := submit(t, r, alice, password, alice, []string{alice}, testmsg.Encrypted(alice, alice, i)); err != nil {
			t.Fatal(err)
		}
	}
	expunged := make(chan uint32, 4)
	flagged := make(chan uint32, 4)
	c := dialIMAP(t, r, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) { expunged <- seq },
		Fetch: func(msg *imapclient.FetchMessageData) {
			flagged <- msg.SeqNum
			for msg.Next() != nil {
			}
		},
	}})
	idle := selectIdle(t, c, alice)
	other := login(t, r, alice)
	if _, err := other.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := other.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case seq := <-flagged:
		if seq != 2 {
			t.Fatalf("FETCH %d", seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("IDLE session not told of the flag change")
	}
	expungeSeq(t, other, 1)
	select {
	case seq := <-expunged:
		if seq != 1 {
			t.Fatalf("EXPUNGE %d", seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("IDLE session not told of the expunge")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true, Flags: true}).Collect()
	if err != nil || len(msgs) != 1 || len(msgs[0].Flags) != 1 || msgs[0].Flags[0] != imap.FlagSeen {
		t.Fatalf("FETCH after IDLE: %+v %v", msgs, err)
	}
}

// Expiry removes old messages like an EXPUNGE: an IDLE session hears of it.
func TestExpiryIsSeenByIMAPSessions(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice = "alicealic@localhost"
	login(t, r, alice).Close()
	if err := submit(t, r, alice, password, alice, []string{alice}, testmsg.Encrypted(alice, alice, 0)); err != nil {
		t.Fatal(err)
	}
	expunged := make(chan uint32, 4)
	c := dialIMAP(t, r, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) { expunged <- seq },
	}})
	idle := selectIdle(t, c, alice)
	defer idle.Close()
	r.Clock.Advance(21 * 24 * time.Hour)
	// Advancing 21 days makes the login stale by less than the 90-day
	// account rule, so only the message goes.
	st, err := r.Store().Expire(r.Cfg.Lifecycle())
	if err != nil || st.Messages != 1 || st.Accounts != 0 {
		t.Fatalf("expire: %+v %v", st, err)
	}
	select {
	case seq := <-expunged:
		if seq != 1 {
			t.Fatalf("EXPUNGE %d", seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("IDLE session not told of the expired message")
	}
}

// A message that arrives slowly but steadily is taken even when the whole
// DATA takes longer than one read timeout.
func TestSlowButSteadyDATA(t *testing.T) {
	r := relaytest.StartWith(t, relaytest.Config(t.TempDir()), relay.Options{ClientTimeoutCap: 600 * time.Millisecond})
	const alice = "alicealic@localhost"
	login(t, r, alice).Close()
	conn, err := tls.Dial("tcp", r.AddrOf("submissions"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := textproto.NewConn(conn)
	expect := func(code int) {
		t.Helper()
		if _, _, err := tc.ReadResponse(code); err != nil {
			t.Fatal(err)
		}
	}
	expect(220)
	auth := base64.StdEncoding.EncodeToString([]byte("\x00" + alice + "\x00" + password))
	for _, step := range []struct {
		cmd  string
		code int
	}{{"EHLO client.test", 250}, {"AUTH PLAIN " + auth, 235}, {"MAIL FROM:<" + alice + ">", 250}, {"RCPT TO:<" + alice + ">", 250}, {"DATA", 354}} {
		tc.PrintfLine("%s", step.cmd)
		expect(step.code)
	}
	msg := testmsg.Encrypted(alice, alice, 4000)
	chunk := 900
	start := time.Now()
	for i := 0; i < len(msg); i += chunk {
		conn.Write(msg[i:min(i+chunk, len(msg))]) // unbuffered: each chunk goes now
		time.Sleep(150 * time.Millisecond)        // the slow link
	}
	conn.Write([]byte(".\r\n"))
	if _, _, err := tc.ReadResponse(250); err != nil {
		t.Fatalf("slow DATA refused after %v: %v", time.Since(start), err)
	}
	if time.Since(start) < time.Second {
		t.Fatal("the transfer was not slower than the read timeout")
	}
}

func appendMsg(c *imapclient.Client, mbox string, msg []byte) (*imap.AppendData, error) {
	cmd := c.Append(mbox, int64(len(msg)), nil)
	cmd.Write(msg)
	cmd.Close()
	return cmd.Wait()
}

// APPEND is held to the encrypted-only policy too, and stores exactly
// what the client sent; COPY and MOVE keep the bytes and report UIDs.
func TestAppendCopyMove(t *testing.T) {
	r := relaytest.Start(t, nil)
	const alice = "alicealic@localhost"
	c := login(t, r, alice)
	if _, err := appendMsg(c, "INBOX", testmsg.Cleartext(alice, alice)); err == nil {
		t.Fatal("cleartext APPEND accepted")
	}
	enc := testmsg.Encrypted(alice, alice, 500)
	ad, err := appendMsg(c, "INBOX", enc)
	if err != nil {
		t.Fatalf("encrypted APPEND: %v", err)
	}
	if ad.UID != 1 || ad.UIDValidity == 0 {
		t.Fatalf("APPENDUID %+v", ad)
	}
	if err := c.Create("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	list, err := c.List("", "*", nil).Collect()
	if err != nil || len(list) != 2 {
		t.Fatalf("LIST: %v %v", list, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	cd, err := c.Copy(imap.UIDSetNum(1), "Archive").Wait()
	if err != nil || cd.DestUIDs.String() != "1" {
		t.Fatalf("COPY: %+v %v", cd, err)
	}
	md, err := c.Move(imap.UIDSetNum(1), "Archive").Wait()
	if err != nil || md.DestUIDs.String() != "2" {
		t.Fatalf("MOVE: %+v %v", md, err)
	}
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 0 {
		t.Fatalf("INBOX after MOVE: %v %v", st, err)
	}
	if _, err := c.Select("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(msgs) != 2 {
		t.Fatalf("Archive: %d messages, %v", len(msgs), err)
	}
	for _, m := range msgs {
		if !bytes.Equal(m.FindBodySection(&imap.FetchItemBodySection{Peek: true}), enc) {
			t.Fatalf("UID %d differs from what was appended", m.UID)
		}
	}
	if used, _, _ := r.Store().Quota(alice); used != 2*int64(len(enc)) {
		t.Fatalf("quota counts %d bytes, want two copies of %d", used, len(enc))
	}
}

// A delivery that takes an account past 75 % of its quota trims its oldest
// messages (older than 24 h) down to 70 %.
func TestDeliveryPastQuotaMarkTrims(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.QuotaBytes = 64 << 10 })
	const alice = "alicealic@localhost"
	login(t, r, alice).Close()
	send := func(pad int) {
		t.Helper()
		if err := submit(t, r, alice, password, alice, []string{alice}, testmsg.Encrypted(alice, alice, pad)); err != nil {
			t.Fatal(err)
		}
	}
	for range 4 {
		send(8 << 10)
	}
	used, _, _ := r.Store().Quota(alice)
	if used > 48<<10 {
		t.Fatalf("setup: %d bytes used, already past the mark", used)
	}
	r.Clock.Advance(25 * time.Hour)
	// The trim runs in the background and may be over before the quota is
	// read: less than before the send means it ran.
	for {
		before := used
		send(8 << 10)
		used, _, _ = r.Store().Quota(alice)
		if used > 64<<10 {
			t.Fatal("quota passed without a trim")
		}
		if used > 48<<10 || used < before {
			break
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		used, _, _ = r.Store().Quota(alice)
		if used <= 45875 { // 70 % of 64 KiB
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d bytes used after passing 75 %%", used)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// selectIdle logs c in as user, selects INBOX and starts IDLE.
func selectIdle(t *testing.T, c *imapclient.Client, user string) *imapclient.IdleCommand {
	t.Helper()
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	return idle
}

// expungeSeq removes message seq of the selected mailbox through c.
func expungeSeq(t *testing.T, c *imapclient.Client, seq uint32) {
	t.Helper()
	if err := c.Store(imap.SeqSetNum(seq), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
}

// A message file shorter than its index entry (disk trouble) gets the
// FETCH a NO, and the connection goes on: the literal that announces the
// size is never started.
func TestFetchOfShortFileIsRefused(t *testing.T) {
	r := relaytest.Start(t, nil)
	const u = "shortfile@localhost"
	login(t, r, u).Close()
	if err := submit(t, r, u, password, u, []string{u}, testmsg.Encrypted(u, u, 0)); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(r.Dir, "msgs", "*", "*"))
	if len(files) != 1 {
		t.Fatalf("message files: %v", files)
	}
	if err := os.Truncate(files[0], 10); err != nil {
		t.Fatal(err)
	}
	x := dialRawIMAP(t, r)
	x.send("a LOGIN " + u + " " + password + "\r\n")
	x.expect("a OK")
	x.send("b SELECT INBOX\r\n")
	x.expect("b OK")
	x.send("c FETCH 1 (UID RFC822.SIZE)\r\n")
	x.expect("c OK")
	x.send("d FETCH 1 BODY.PEEK[]\r\n")
	if l := x.expect("d "); !strings.HasPrefix(l, "d NO") {
		t.Fatalf("FETCH of a short file: %q", l)
	}
	x.send("e NOOP\r\n")
	x.expect("e OK")
}

// A message a local recipient has no room for is refused with 552 as a
// whole: its remote recipients get nothing either, so that the sender's
// retry does not send them a second copy.
func TestMailboxFullQueuesNothingRemote(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.QuotaBytes = 16 << 10 })
	const alice, remote = "alicealic@localhost", "bobbobbob@elsewhere.test"
	login(t, r, alice).Close()
	msg := testmsg.Encrypted(alice, remote, 32<<10)
	for attempt := range 2 {
		err := submit(t, r, alice, password, alice, []string{remote, alice}, msg)
		if got := smtpCode(err); got != 552 {
			t.Fatalf("attempt %d: got %d (%v), want 552", attempt, got, err)
		}
		items, err := r.Queue().List()
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 0 {
			t.Fatalf("attempt %d: %d messages queued for remote recipients after a 552", attempt, len(items))
		}
	}
	if used, _, _ := r.Store().Quota(alice); used != 0 {
		t.Fatalf("alice's mailbox holds %d bytes after a 552", used)
	}
}
