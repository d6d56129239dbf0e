package relay_test

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/backup"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/relay/invite"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

// serveControl is the control socket a test relay serves from its start.
func serveControl(t *testing.T, r *relaytest.Relay) string {
	t.Helper()
	path := relay.ControlSocketPath(r.Dir)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the relay serves no control socket: %v", err)
	}
	return path
}

var messageIDRe = regexp.MustCompile(`(?i)message-id:\s*(<[^>]+>)`)

func messageID(msg []byte) string {
	m := messageIDRe.FindSubmatch(msg)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// sender submits encrypted messages from one account to another over one
// connection until stopped, remembering which got their 250, in order.
type sender struct {
	mu    sync.Mutex
	acked []string // Message-IDs
	err   error
	more  chan struct{} // a value after every 250
	stop  chan struct{}
	done  chan struct{}
}

func startSender(t *testing.T, r *relaytest.Relay, from, to string, max int) *sender {
	t.Helper()
	c, err := smtp.DialTLS(r.AddrOf("submissions"), relaytest.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", from, password)); err != nil {
		t.Fatal(err)
	}
	s := &sender{more: make(chan struct{}, max), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer c.Close()
		for i := range max {
			select {
			case <-s.stop:
				return
			default:
			}
			msg := testmsg.Encrypted(from, to, 200+i)
			if err := c.SendMail(from, []string{to}, bytes.NewReader(msg)); err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
			s.mu.Lock()
			s.acked = append(s.acked, messageID(msg))
			s.mu.Unlock()
			s.more <- struct{}{}
		}
	}()
	t.Cleanup(func() { s.halt() })
	return s
}

func (s *sender) ackedSoFar() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.acked...)
}

// waitFor blocks until n more messages have been acknowledged.
func (s *sender) waitFor(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for range n {
		select {
		case <-s.more:
		case <-s.done:
			t.Fatalf("sender stopped: %v", s.err)
		case <-deadline:
			t.Fatal("messages are not being accepted")
		}
	}
}

func (s *sender) halt() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func TestAdminBackupDuringDeliveryRestoresEveryAckedMessage(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.SendRatePerMinute, c.SendRateBurst = 1e6, 1e6 })
	const alice, bob = "alicealic@localhost", "bobbobbob@localhost"
	login(t, r, alice).Close()
	login(t, r, bob).Close()
	sock := serveControl(t, r)

	snd := startSender(t, r, alice, bob, 2000)
	snd.waitFor(t, 20)
	before := snd.ackedSoFar()

	dir := filepath.Join(t.TempDir(), "backup")
	var res control.BackupResult
	var steps int
	err := control.Call(context.Background(), sock, control.CmdBackup, control.BackupArgs{Dir: dir}, &res,
		func(control.Progress) { steps++ })
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	// Mail keeps flowing during and after the backup.
	snd.waitFor(t, 5)
	if err := snd.halt(); err != nil {
		t.Fatalf("sender: %v", err)
	}
	t.Logf("backup of %d messages (%d acked before it began, %d in all), %d progress reports", res.Messages, len(before), len(snd.ackedSoFar()), steps)
	if res.Messages < len(before) || res.Accounts != 2 || steps == 0 {
		t.Fatalf("backup result %+v, progress %d; want at least %d messages and 2 accounts", res, steps, len(before))
	}

	fresh := filepath.Join(t.TempDir(), "data")
	var said []string
	if err := backup.Restore(fresh, dir, func(f string, a ...any) { said = append(said, f) }); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if len(said) == 0 {
		t.Error("restore said nothing about what it did")
	}
	r2 := relaytest.StartConfig(t, relaytest.Config(fresh))
	c := login(t, r2, bob)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{
		UID: true, RFC822Size: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatalf("fetch from the restored relay: %v", err)
	}
	have := map[string]bool{}
	for _, m := range msgs {
		body := m.FindBodySection(&imap.FetchItemBodySection{Peek: true})
		if int64(len(body)) != m.RFC822Size || !bytes.Contains(body, []byte("-----BEGIN PGP MESSAGE-----")) {
			t.Fatalf("restored message UID %d: %d bytes of %d, or not the message", m.UID, len(body), m.RFC822Size)
		}
		have[messageID(body)] = true
	}
	for i, id := range before {
		if !have[id] {
			t.Fatalf("message %d (%s) got its 250 before the backup began but is not in the restored relay", i, id)
		}
	}
	if len(msgs) != res.Messages {
		t.Fatalf("restored relay has %d messages, the backup %d", len(msgs), res.Messages)
	}
	// The restored relay takes new mail.
	if err := submit(t, r2, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
		t.Fatalf("submit to the restored relay: %v", err)
	}
}

func TestAdminBackupAndRestoreRefuseMistakes(t *testing.T) {
	r := relaytest.Start(t, nil)
	const bob = "bobbobbob@localhost"
	login(t, r, bob).Close()
	if err := submit(t, r, bob, password, bob, []string{bob}, testmsg.Encrypted(bob, bob, 0)); err != nil {
		t.Fatal(err)
	}
	sock := serveControl(t, r)
	takeBackup := func(dir string) error {
		return control.Call(context.Background(), sock, control.CmdBackup, control.BackupArgs{Dir: dir}, nil, nil)
	}
	notEmpty := t.TempDir()
	os.WriteFile(filepath.Join(notEmpty, "x"), nil, 0o600)
	for name, dir := range map[string]string{
		"relative":       "backup",
		"not empty":      notEmpty,
		"inside data":    filepath.Join(r.Dir, "backup"),
		"the data dir":   r.Dir,
		"inside msgs":    filepath.Join(r.Dir, "msgs", "b"),
		"trailing slash": r.Dir + "/",
	} {
		if err := takeBackup(dir); !control.IsCode(err, control.CodeBadRequest) {
			t.Errorf("backup into %s (%s): %v, want a bad request", name, dir, err)
		}
	}

	good := filepath.Join(t.TempDir(), "b")
	if err := takeBackup(good); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Verify(good); err != nil {
		t.Fatalf("fresh backup does not verify: %v", err)
	}
	// The running relay's store is locked.
	if err := backup.Restore(r.Dir, good, nil); err == nil || !strings.Contains(err.Error(), "stop the relay") {
		t.Fatalf("restore over a running relay: %v", err)
	}

	clone := func(t *testing.T) string {
		dst := filepath.Join(t.TempDir(), "clone")
		if err := os.CopyFS(dst, os.DirFS(good)); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	cases := []struct {
		name  string
		spoil func(dir string)
		want  string
	}{
		{"no manifest", func(d string) { os.Remove(filepath.Join(d, "manifest.json")) }, "not a chatrelay backup"},
		{"index changed", func(d string) {
			f, _ := os.OpenFile(filepath.Join(d, "index.db"), os.O_RDWR, 0)
			f.WriteAt([]byte{0xff}, 5000)
			f.Close()
		}, "does not match the manifest"},
		{"message missing", func(d string) {
			files, _ := filepath.Glob(filepath.Join(d, "msgs", "*", "*"))
			for _, f := range files {
				os.Remove(f)
			}
		}, "missing msgs/"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := clone(t)
			tc.spoil(dir)
			target := t.TempDir()
			err := backup.Restore(target, dir, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore: %v, want %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(target); len(entries) != 0 {
				t.Fatalf("a refused restore changed the data dir: %v", entries)
			}
		})
	}

	// Restoring over a stopped relay's store replaces it: the account
	// made after the backup is gone, the one before it is back.
	login(t, r, "lateracco@localhost").Close()
	r.Stop()
	if err := backup.Restore(r.Dir, good, nil); err != nil {
		t.Fatalf("restore over a stopped relay: %v", err)
	}
	r2 := relaytest.StartConfig(t, r.Cfg)
	if ok, _ := r2.Store().AccountExists("lateracco@localhost"); ok {
		t.Error("account made after the backup survived the restore")
	}
	c := login(t, r2, bob)
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 1 {
		t.Fatalf("bob after restore: %v messages, %v", st.NumMessages, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(r.Dir, ".restore-*")); len(leftovers) != 0 {
		t.Errorf("restore left %v", leftovers)
	}
}

func TestAdminStatusOverControlSocket(t *testing.T) {
	r := relaytest.Start(t, nil)
	login(t, r, "bobbobbob@localhost").Close()
	sock := serveControl(t, r)
	var st control.Status
	if err := control.Call(context.Background(), sock, control.CmdStatus, nil, &st, nil); err != nil {
		t.Fatal(err)
	}
	if st.Accounts != 1 || st.MailDomain != "localhost" || st.Queue == nil || st.Queue.Depth != 0 {
		t.Errorf("status %+v", st)
	}
	if st.Listeners["imaps"] != r.AddrOf("imaps") || !st.Certificate.SelfSigned || st.Certificate.Mode != "selfsigned" {
		t.Errorf("listeners %v, certificate %+v", st.Listeners, st.Certificate)
	}
	if st.DiskFree <= 0 || !strings.HasPrefix(st.NewURL, "https://127.0.0.1:") {
		t.Errorf("disk %d, new url %q", st.DiskFree, st.NewURL)
	}
	invites, err := invite.Open(r.Store().DB(), r.Clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	// A second relay cannot take the socket of a live one.
	if _, err := r.ServeControl(sock, relay.AdminOptions{Invites: invites}); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("second control server on a live socket: %v", err)
	}
	// The invite store is the relay's own, never a second one made
	// behind its back.
	other := filepath.Join(t.TempDir(), "control.sock")
	if _, err := r.ServeControl(other, relay.AdminOptions{Queue: r.Queue()}); err == nil || !strings.Contains(err.Error(), "no invite store") {
		t.Errorf("control server without an invite store: %v", err)
	}
	if _, err := os.Stat(other); err == nil {
		t.Error("a refused control server left its socket")
	}
}

// An invite link made over the control socket creates accounts through
// /new?token= as often as it says, then no more.
func TestAdminInviteLinkCreatesAccounts(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.Registration = "invite" })
	serveControl(t, r)
	var inv control.Invite
	err := control.Call(context.Background(), relay.ControlSocketPath(r.Dir), control.CmdInviteCreate,
		control.InviteArgs{Uses: 1, TTL: control.Duration(time.Hour)}, &inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A self-signed relay hands out its web page, whose button makes a
	// dclogin: code; core would refuse DCACCOUNT: here.
	base := "https://" + r.AddrOf("https")
	if want := base + "/?token=" + inv.Token; inv.URL != want || !inv.SelfSigned || inv.Registration != "invite" {
		t.Fatalf("invite %+v, want URL %q", inv, want)
	}
	newURL := base + "/new?token=" + inv.Token
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: relaytest.ClientTLS()}}
	post := func(u string) int {
		resp, err := client.Post(u, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(strings.Replace(newURL, inv.Token, "aaaaaaaaaaaaaaaaaaaaaaaaaa", 1)); code != http.StatusForbidden {
		t.Fatalf("bad token: HTTP %d", code)
	}
	if code := post(newURL); code != http.StatusOK {
		t.Fatalf("first use: HTTP %d", code)
	}
	if code := post(newURL); code != http.StatusForbidden {
		t.Fatalf("second use of a one-use invite: HTTP %d", code)
	}
	if n, _ := r.Store().CountAccounts(); n != 1 {
		t.Fatalf("%d accounts, want 1", n)
	}
}
