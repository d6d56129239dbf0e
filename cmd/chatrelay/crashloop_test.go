package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	bolt "go.etcd.io/bbolt"

	"github.com/chatrelay/chatrelay/internal/testmsg"
)

// TestCrashLoop is layer 6's kill -9 test: a relay in IP mode takes
// submission (local and remote recipients), inbound SMTP and IMAP load at
// once, is SIGKILLed at a random moment and restarted, cycle after cycle.
// After each crash: the index passes bbolt's consistency check; after each
// restart every message answered 250 is in its recipients' INBOX exactly
// once (by Message-ID), or in the outbound queue for a remote recipient
// whose relay is down; no message is there twice; no message file or spool
// file exists that the index does not name, and tmp/ is empty.
//
// `make test` runs a few cycles; `make crashtest` runs
// CHATRELAY_CRASH_CYCLES (200) of them.
func TestCrashLoop(t *testing.T) {
	cycles := 3
	if testing.Short() {
		cycles = 1
	}
	if s := os.Getenv("CHATRELAY_CRASH_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			t.Fatalf("CHATRELAY_CRASH_CYCLES=%q", s)
		}
		cycles = n
	}
	budget := 25 * time.Minute
	if d, ok := t.Deadline(); ok {
		budget = min(budget, time.Until(d)-30*time.Second)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CHATRELAY_CRASH_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (CHATRELAY_CRASH_SEED to repeat), %d cycles", seed, cycles)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	// Three loopback addresses of our own: the relay, a peer that sends to
	// it on port 25, and a remote relay that is down.
	net16 := fmt.Sprintf("127.%d.%d", 100+os.Getpid()%100, rng.IntN(250)+1)
	relayIP, peerIP, downIP := net16+".1", net16+".2", net16+".3"
	domain := "[" + relayIP + "]"
	users := []string{"crashusr1@" + domain, "crashusr2@" + domain, "crashusr3@" + domain, "crashusr4@" + domain}
	peer := "peersendr@[" + peerIP + "]"
	remote := "farawayus@[" + downIP + "]"

	dir := t.TempDir()
	ports := freeAddrsOn(t, relayIP, "imaps", "submissions", "smtp", "imap", "submission", "https")
	start := func() *child {
		return startRelayProc(t, dir, ports, "--ip", relayIP, "--listen-metrics", "")
	}
	c := start()
	tlsConf := &tls.Config{InsecureSkipVerify: true}
	// Accounts exist before inbound mail is sent to them.
	for _, u := range users {
		ic, err := imapclient.DialTLS(c.addrs["imaps"], &imapclient.Options{TLSConfig: tlsConf})
		if err != nil {
			t.Fatal(err)
		}
		if err := ic.Login(u, crashPassword).Wait(); err != nil {
			t.Fatalf("create %s: %v", u, err)
		}
		ic.Close()
	}

	// One encrypted message per sender, with a placeholder Message-ID.
	templates := map[string][]byte{}
	for _, from := range append([]string{peer}, users...) {
		templates[from] = testmsg.Encrypted(from, users[0], 200)
	}
	l := &ledger{acked: map[string]want{}, tried: map[string]bool{}}
	began := time.Now()
	done := 0
	for cycle := range cycles {
		if time.Since(began) > budget {
			t.Logf("time budget used up after %d cycles", cycle)
			break
		}
		load := &crashLoad{
			c: c, tls: tlsConf, users: users, peer: peer, peerIP: peerIP, remote: remote,
			templates: templates, ledger: l, cycle: cycle, stop: make(chan struct{}),
		}
		load.run(rng.Uint64())
		// Kill at a random moment, once the load is under way.
		time.Sleep(time.Duration(50+rng.IntN(450)) * time.Millisecond)
		c.cmd.Process.Signal(syscall.SIGKILL)
		c.cmd.Wait()
		close(load.stop)
		load.wg.Wait()

		checkIndex(t, filepath.Join(dir, "index.db"))
		c = start()
		verifyAfterCrash(t, c, dir, tlsConf, users, l)
		done++
		if done%25 == 0 {
			acked, _ := l.counts()
			t.Logf("%d cycles, %d messages acknowledged so far, %v", done, acked, time.Since(began).Round(time.Second))
		}
	}
	acked, remoteAcked := l.counts()
	t.Logf("%d cycles: %d messages acknowledged (%d to the down remote relay), all present once after every restart", done, acked, remoteAcked)
	if done == 0 || acked == 0 {
		t.Fatal("no cycle completed with acknowledged mail: the test checked nothing")
	}
}

const crashPassword = "crash-test-password"

// want is where an acknowledged message must be found.
type want struct {
	local  []string // recipients' INBOX
	remote bool     // the outbound queue
}

// ledger records, across cycles, what the relay acknowledged and what was
// merely attempted (sent, then the relay died before answering).
type ledger struct {
	mu    sync.Mutex
	acked map[string]want
	tried map[string]bool
}

func (l *ledger) try(id string) {
	l.mu.Lock()
	l.tried[id] = true
	l.mu.Unlock()
}

func (l *ledger) ack(id string, w want) {
	l.mu.Lock()
	l.acked[id] = w
	l.mu.Unlock()
}

func (l *ledger) counts() (acked, remote int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, w := range l.acked {
		if w.remote {
			remote++
		}
	}
	return len(l.acked), remote
}

type crashLoad struct {
	c                    *child
	tls                  *tls.Config
	users                []string
	peer, peerIP, remote string
	templates            map[string][]byte
	ledger               *ledger
	cycle                int
	stop                 chan struct{}
	wg                   sync.WaitGroup
	seqMu                sync.Mutex
	seq                  int
}

var msgIDRe = regexp.MustCompile(`(?m)^Message-ID: <[^>]*>\r$`)

func (ld *crashLoad) nextID(kind string) string {
	ld.seqMu.Lock()
	defer ld.seqMu.Unlock()
	ld.seq++
	return fmt.Sprintf("c%d-%s-%d@crash.test", ld.cycle, kind, ld.seq)
}

func (ld *crashLoad) message(from, id string) []byte {
	return msgIDRe.ReplaceAll(ld.templates[from], []byte("Message-ID: <"+id+">\r"))
}

func (ld *crashLoad) done() bool {
	select {
	case <-ld.stop:
		return true
	default:
		return false
	}
}

// run starts the workers; each ends when its connection dies with the
// relay, or at stop, and sends at most a bounded number of messages.
func (ld *crashLoad) run(seed uint64) {
	for i, u := range ld.users {
		ld.wg.Add(1)
		go func() { defer ld.wg.Done(); ld.submitter(u, seed+uint64(i)) }()
	}
	ld.wg.Add(1)
	go func() { defer ld.wg.Done(); ld.inbound() }()
	for _, u := range ld.users[:2] {
		ld.wg.Add(1)
		go func() { defer ld.wg.Done(); ld.reader(u) }()
	}
}

// submitter sends to local users, the down remote relay, or both. The
// per-sender rate (burst 10) resets with each restart.
func (ld *crashLoad) submitter(from string, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	sc, err := smtp.DialTLS(ld.c.addrs["submissions"], ld.tls)
	if err != nil {
		return
	}
	defer sc.Close()
	if err := sc.Auth(sasl.NewPlainClient("", from, crashPassword)); err != nil {
		return
	}
	for range 10 {
		if ld.done() {
			return
		}
		var w want
		var rcpts []string
		switch rng.IntN(4) {
		case 0:
			w.remote = true
			rcpts = []string{ld.remote}
		case 1:
			w.remote = true
			w.local = []string{ld.users[rng.IntN(len(ld.users))]}
			rcpts = append([]string{ld.remote}, w.local...)
		default:
			a, b := ld.users[rng.IntN(len(ld.users))], ld.users[rng.IntN(len(ld.users))]
			w.local = []string{a}
			if b != a {
				w.local = append(w.local, b)
			}
			rcpts = w.local
		}
		id := ld.nextID("sub")
		ld.ledger.try(id)
		if err := sc.SendMail(from, rcpts, bytes.NewReader(ld.message(from, id))); err != nil {
			return
		}
		ld.ledger.ack(id, w)
	}
}

// inbound delivers from the peer's address literal, connecting from that
// address as the relay requires.
func (ld *crashLoad) inbound() {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ld.peerIP)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", ld.c.addrs["smtp"])
	if err != nil {
		return
	}
	sc := smtp.NewClient(conn)
	defer sc.Close()
	if err := sc.Hello("peer.test"); err != nil {
		return
	}
	for i := range 40 {
		if ld.done() {
			return
		}
		to := ld.users[i%len(ld.users)]
		id := ld.nextID("in")
		ld.ledger.try(id)
		if err := sc.SendMail(ld.peer, []string{to}, bytes.NewReader(ld.message(ld.peer, id))); err != nil {
			return
		}
		ld.ledger.ack(id, want{local: []string{to}})
	}
}

// reader keeps an IMAP session busy: fetches, flag changes, NOOPs.
func (ld *crashLoad) reader(user string) {
	ic, err := imapclient.DialTLS(ld.c.addrs["imaps"], &imapclient.Options{TLSConfig: ld.tls})
	if err != nil {
		return
	}
	defer ic.Close()
	if ic.Login(user, crashPassword).Wait() != nil {
		return
	}
	if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
		return
	}
	all := imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}
	for i := range 200 {
		if ld.done() {
			return
		}
		var err error
		switch i % 3 {
		case 0:
			_, err = ic.Fetch(all, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true}).Collect()
		case 1:
			err = ic.Store(all, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close()
		default:
			err = ic.Noop().Wait()
		}
		if err != nil {
			return
		}
	}
}

// checkIndex opens the index of a killed relay read-only and runs bbolt's
// consistency check.
func checkIndex(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open index after SIGKILL: %v", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("index inconsistent after SIGKILL: %v", err)
	}
}

var headerIDRe = regexp.MustCompile(`(?i)Message-ID:\s*<([^>]*)>`)

// verifyAfterCrash checks the restarted relay against the ledger.
func verifyAfterCrash(t *testing.T, c *child, dir string, tlsConf *tls.Config, users []string, l *ledger) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	found := map[string]map[string]int{} // id -> user -> copies
	total := 0
	for _, u := range users {
		ic, err := imapclient.DialTLS(c.addrs["imaps"], &imapclient.Options{TLSConfig: tlsConf})
		if err != nil {
			t.Fatal(err)
		}
		if err := ic.Login(u, crashPassword).Wait(); err != nil {
			t.Fatalf("login %s after restart: %v", u, err)
		}
		if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		section := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Message-ID"}, Peek: true}
		msgs, err := ic.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		ic.Close()
		total += len(msgs)
		for _, m := range msgs {
			sm := headerIDRe.FindSubmatch(m.FindBodySection(section))
			if sm == nil {
				t.Fatalf("%s: a message without Message-ID", u)
			}
			id := string(sm[1])
			if found[id] == nil {
				found[id] = map[string]int{}
			}
			found[id][u]++
		}
	}
	for id, byUser := range found {
		if !l.tried[id] {
			t.Errorf("message %s present but never sent", id)
		}
		for u, n := range byUser {
			if n != 1 {
				t.Errorf("message %s in %s's INBOX %d times", id, u, n)
			}
		}
	}
	queued := queuedIDs(t, c, dir)
	for id, n := range queued {
		if n != 1 {
			t.Errorf("message %s queued %d times", id, n)
		}
	}
	for id, w := range l.acked {
		for _, u := range w.local {
			if found[id][u] != 1 {
				t.Errorf("acknowledged message %s: %d copies in %s's INBOX, want 1", id, found[id][u], u)
			}
		}
		if w.remote && queued[id] != 1 {
			t.Errorf("acknowledged message %s for the down remote relay is not queued", id)
		}
	}
	// Every message file is one INBOX message; nothing waits in tmp/.
	files := 0
	filepath.WalkDir(filepath.Join(dir, "msgs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files++
		}
		return nil
	})
	if files != total {
		t.Errorf("%d message files for %d messages: orphans after restart", files, total)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ holds %d files after restart", len(tmp))
	}
	if t.Failed() {
		t.FailNow()
	}
}

// queuedIDs lists the outbound queue through `chatrelay queue list` (the
// control socket of the running relay) and reads each item's Message-ID
// from its spool file. Spool files the list does not name are orphans.
func queuedIDs(t *testing.T, c *child, dir string) map[string]int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "queue", "list", "--data", dir)
	cmd.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("queue list: %v\n%s", err, out)
	}
	listed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && len(f[0]) == 28 && f[0] != "ID" {
			listed[f[0]] = true
		}
	}
	ids := map[string]int{}
	for id := range listed {
		data, err := os.ReadFile(filepath.Join(dir, "queue", id))
		if err != nil {
			t.Fatalf("queued item %s has no spool file: %v", id, err)
		}
		sm := headerIDRe.FindSubmatch(data)
		if sm == nil {
			t.Fatalf("queued item %s has no Message-ID", id)
		}
		ids[string(sm[1])]++
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "queue"))
	for _, e := range entries {
		if !listed[e.Name()] {
			t.Errorf("spool file %s is not in the queue", e.Name())
		}
	}
	return ids
}

// startRelayProc runs `chatrelay serve --dev` with extra flags on the given
// listener addresses and waits until it prints its listeners.
func startRelayProc(t *testing.T, dir string, ports map[string]string, extra ...string) *child {
	t.Helper()
	args := []string{"serve", "--dev", "--data", dir, "--log-level", "warn", "--listen-turn", "127.0.0.1:0"}
	for name, addr := range ports {
		args = append(args, "--listen-"+name, addr)
	}
	args = append(args, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	cmd.Stderr = &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, addrs: map[string]string{}}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan map[string]string, 1)
	go func() {
		addrs := map[string]string{}
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && strings.Count(f[1], ":") == 1 {
				addrs[f[0]] = f[1]
			}
			if strings.HasPrefix(sc.Text(), "To add an account") {
				ready <- addrs
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case c.addrs = <-ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("relay did not start: %s", logBuf.String())
	}
	return c
}

// syncBuffer is a bytes.Buffer safe for the child's writes and our reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func freeAddrsOn(t *testing.T, ip string, names ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range names {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = ln.Addr().String()
		ln.Close()
	}
	return out
}
