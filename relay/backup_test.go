package relay_test

import (
	"bytes"
	"context"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/backup"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/relay/queue"
	"github.com/chatrelay/chatrelay/relay/relaytest"
	"github.com/chatrelay/chatrelay/relay/turn"
)

// keyFiles reads every regular file of a data directory outside the store
// (index, message files, spool, scratch): the keys, certificates and the
// like a backup must bring back byte for byte.
func keyFiles(t *testing.T, dataDir string) map[string][]byte {
	t.Helper()
	skip := append([]string{mailbox.IndexFile, mailbox.MessagesDir, queue.SpoolDir}, mailbox.Scratch()...)
	out := map[string][]byte{}
	err := filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dataDir, p)
		if slices.Contains(skip, rel) || strings.HasPrefix(rel, ".restore-") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		out[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A backup restored into an empty data directory gives back every piece:
// accounts log in with the same passwords (chosen ones, and a generated
// one that needs the password key), their messages byte for byte, the
// queued message for a peer that is down, the invites, and every key file
// (password key, DKIM, TLS, TURN secret, proxy keys), which the restored
// relay then uses.
func TestBackupRestoreRoundTripsEveryPiece(t *testing.T) {
	p := newPeers(t, "", "")
	p.cfgA.Proxy.Listen = "127.0.0.2:0"
	a := relaytest.StartConfig(t, p.cfgA)
	const alice, carol = "alicealic@[127.0.0.2]", "carolcaro@[127.0.0.2]"
	const bob = "bobbobbob@[127.0.0.3]" // on a peer that is down
	login(t, a, alice).Close()
	login(t, a, carol).Close()
	sock := serveControl(t, a)
	call := func(sock, cmd string, args, res any) {
		t.Helper()
		if err := control.Call(context.Background(), sock, cmd, args, res, nil); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	const gen = "generated@[127.0.0.2]"
	var added control.PasswordResult
	call(sock, control.CmdAccountAdd, control.PasswordArgs{Addr: gen}, &added)
	if !added.Generated || added.Password == "" {
		t.Fatalf("account add: %+v, want a generated password", added)
	}
	for i := range 3 {
		if err := submit(t, a, alice, password, alice, []string{carol}, testmsg.Encrypted(alice, carol, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := submit(t, a, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 9)); err != nil {
		t.Fatal(err)
	}
	waitQueued(t, a, 1)
	carolsMail := waitMessages(t, a, carol, 3, 10*time.Second)
	var inv control.Invite
	call(sock, control.CmdInviteCreate, control.InviteArgs{Uses: 5, TTL: control.Duration(24 * time.Hour)}, &inv)
	var accounts []control.Account
	call(sock, control.CmdAccountList, nil, &accounts)
	var queued []control.QueueItem
	call(sock, control.CmdQueueList, nil, &queued)
	var proxy control.Proxy
	call(sock, control.CmdProxyShow, nil, &proxy)
	keys := keyFiles(t, a.Dir)
	for _, name := range []string{mailbox.PasswordKeyFile, turn.SecretFile, relay.ProxyKeysFile} {
		if len(keys[name]) == 0 {
			t.Fatalf("the relay has no %s to back up (has %v)", name, slices.Sorted(maps.Keys(keys)))
		}
	}

	dir := filepath.Join(t.TempDir(), "backup")
	var res control.BackupResult
	call(sock, control.CmdBackup, control.BackupArgs{Dir: dir}, &res)
	if res.Accounts != 3 || res.Messages != 3 || res.QueueItems != 1 || res.OtherFiles != len(keys) {
		t.Fatalf("backup %+v; want 3 accounts, 3 messages, 1 queued, %d other files", res, len(keys))
	}
	a.Stop()

	cfg := p.cfgA
	cfg.DataDir = filepath.Join(t.TempDir(), "restored")
	if err := backup.Restore(cfg.DataDir, dir, nil); err != nil {
		t.Fatalf("restore: %v", err)
	}
	got := keyFiles(t, cfg.DataDir)
	for name, b := range keys {
		if !bytes.Equal(got[name], b) {
			t.Errorf("%s: restored %d bytes, differs from the %d backed up", name, len(got[name]), len(b))
		}
	}
	if len(got) != len(keys) {
		t.Errorf("restored other files %v, backed up %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(keys)))
	}

	r := relaytest.StartConfig(t, cfg)
	sock2 := serveControl(t, r)
	var accounts2 []control.Account
	call(sock2, control.CmdAccountList, nil, &accounts2)
	if !slices.EqualFunc(accounts, accounts2, func(x, y control.Account) bool { return x.Addr == y.Addr && x.Created.Equal(y.Created) }) {
		t.Fatalf("accounts after restore %+v, before %+v", accounts2, accounts)
	}
	// The restored accounts take their own passwords and no other (a
	// missing account would be made by the first login).
	for user, pass := range map[string]string{alice: password, carol: password, gen: added.Password} {
		c := dialIMAP(t, r, nil)
		if err := c.Login(user, pass+"x").Wait(); err == nil {
			t.Errorf("%s logs in with a wrong password after restore", user)
		}
		c.Close()
		c = dialIMAP(t, r, &imapclient.Options{})
		if err := c.Login(user, pass).Wait(); err != nil {
			t.Errorf("%s cannot log in with its password after restore: %v", user, err)
		}
		c.Close()
	}
	restoredMail := waitMessages(t, r, carol, 3, 10*time.Second)
	for i := range carolsMail {
		if !bytes.Equal(restoredMail[i], carolsMail[i]) {
			t.Errorf("carol's message %d differs after restore", i)
		}
	}
	var queued2 []control.QueueItem
	call(sock2, control.CmdQueueList, nil, &queued2)
	if len(queued2) != 1 || queued2[0].ID != queued[0].ID || !slices.Equal(queued2[0].Rcpts, []string{bob}) || queued2[0].Size != queued[0].Size {
		t.Fatalf("queue after restore %+v, before %+v", queued2, queued)
	}
	var invites []control.Invite
	call(sock2, control.CmdInviteList, nil, &invites)
	if len(invites) != 1 || invites[0].Token != inv.Token || invites[0].Uses != 5 {
		t.Fatalf("invites after restore %+v, want the token made before the backup", invites)
	}
	var proxy2 control.Proxy
	call(sock2, control.CmdProxyShow, nil, &proxy2)
	// The URL's user part is the key; the port is the kernel's choice.
	key, _, _ := strings.Cut(proxy.URL, "@")
	if key2, _, _ := strings.Cut(proxy2.URL, "@"); key2 != key || key == "" {
		t.Fatalf("proxy URL after restore %q, before %q: the key changed", proxy2.URL, proxy.URL)
	}
}
