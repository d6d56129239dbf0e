package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/internal/testmsg"
)

// The test binary doubles as the chatrelay binary: with CHATRELAY_EXEC set
// it runs main with the given arguments. Crash tests start it as a child
// process and SIGKILL it.
func TestMain(m *testing.M) {
	if os.Getenv("CHATRELAY_EXEC") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type child struct {
	cmd   *exec.Cmd
	addrs map[string]string
	log   *bytes.Buffer
}

// startChild runs `chatrelay serve --dev` on free loopback ports and waits
// until it prints its listeners.
func startChild(t *testing.T, dir string, ports map[string]string, extra ...string) *child {
	t.Helper()
	args := append([]string{"serve", "--dev", "--data", dir, "--log-level", "warn", "--listen-turn", "127.0.0.1:0"}, extra...)
	for name, addr := range ports {
		args = append(args, "--listen-"+name, addr)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	cmd.Stderr = &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, addrs: map[string]string{}, log: &logBuf}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && strings.Count(f[1], ":") == 1 {
				c.addrs[f[0]] = f[1]
			}
			if strings.HasPrefix(sc.Text(), "To add an account") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("relay did not start: %s", logBuf.String())
	}
	return c
}

func freeAddrs(t *testing.T, names ...string) map[string]string {
	out := map[string]string{}
	for _, n := range names {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out[n] = ln.Addr().String()
		ln.Close()
	}
	return out
}

// A message acknowledged with 250 is on disk: SIGKILL right after the 250,
// restart, and it is there.
func TestMessageSurvivesSIGKILLAfter250(t *testing.T) {
	dir := t.TempDir()
	ports := freeAddrs(t, "imaps", "imap", "submissions", "submission", "smtp", "https")
	c := startChild(t, dir, ports)
	tlsConf := &tls.Config{InsecureSkipVerify: true}
	const alice, pass = "alicealic@localhost", "long-enough-password"

	const n = 5
	sc, err := smtp.DialTLS(c.addrs["submissions"], tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Auth(sasl.NewPlainClient("", alice, pass)); err != nil {
		t.Fatal(err)
	}
	var sent [][]byte
	for i := range n {
		msg := testmsg.Encrypted(alice, alice, i*1000)
		if err := sc.SendMail(alice, []string{alice}, bytes.NewReader(msg)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		sent = append(sent, msg)
	}
	// SIGKILL straight after the last 250: no shutdown, no flush.
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.cmd.Wait()
	sc.Close()

	if _, err := os.Stat(filepath.Join(dir, "index.db")); err != nil {
		t.Fatal(err)
	}
	c2 := startChild(t, dir, ports)
	ic, err := imapclient.DialTLS(c2.addrs["imaps"], &imapclient.Options{TLSConfig: tlsConf})
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login(alice, pass).Wait(); err != nil {
		t.Fatalf("login after restart: %v", err)
	}
	if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := ic.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != n {
		t.Fatalf("%d messages after SIGKILL and restart, want %d", len(msgs), n)
	}
	for i, m := range msgs {
		body := m.FindBodySection(&imap.FetchItemBodySection{Peek: true})
		want := sent[i][bytes.Index(sent[i], []byte("\r\n\r\n")):]
		if !bytes.HasSuffix(body, want) {
			t.Fatalf("message %d differs after restart", i)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
		t.Fatalf("tmp not swept: %d files", len(entries))
	}
}

func TestVersion(t *testing.T) {
	cmd := exec.Command(os.Args[0], "version")
	cmd.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "chatrelay ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

// Mail for a relay that is down waits in the queue through a SIGKILL of
// the sender's relay and arrives once both run again. Two IP-mode dev
// relays on 127.0.0.4 and 127.0.0.5 use the dev ports, as real peers do.
func TestQueuedMailSurvivesSIGKILLAndArrives(t *testing.T) {
	const ipA, ipB = "127.0.0.4", "127.0.0.5"
	for _, ip := range []string{ipA, ipB} {
		for _, port := range []string{"1993", "1465", "1025", "1443", "1143", "1587"} {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, port))
			if err != nil {
				t.Skipf("dev port %s:%s is taken: %v", ip, port, err)
			}
			ln.Close()
		}
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	relayB := func() *child { return startChild(t, dirB, nil, "--ip", ipB, "--listen-metrics", ipB+":0") }
	relayA := func() *child { return startChild(t, dirA, nil, "--ip", ipA, "--listen-metrics", ipA+":0") }
	tlsConf := &tls.Config{InsecureSkipVerify: true}
	const pass = "long-enough-password"
	alice, bob := "alicealic@["+ipA+"]", "bobbobbob@["+ipB+"]"

	// Bob's account exists on B; then B goes away.
	b := relayB()
	ic, err := imapclient.DialTLS(b.addrs["imaps"], &imapclient.Options{TLSConfig: tlsConf})
	if err != nil {
		t.Fatal(err)
	}
	if err := ic.Login(bob, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	ic.Close()
	b.cmd.Process.Signal(syscall.SIGTERM)
	b.cmd.Wait()

	a := relayA()
	sc, err := smtp.DialTLS(a.addrs["submissions"], tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Auth(sasl.NewPlainClient("", alice, pass)); err != nil {
		t.Fatal(err)
	}
	msg := testmsg.Encrypted(alice, bob, 100)
	if err := sc.SendMail(alice, []string{bob}, bytes.NewReader(msg)); err != nil {
		t.Fatalf("submit to a peer that is down: %v", err)
	}
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.cmd.Wait()
	sc.Close()

	relayA()
	b = relayB()
	// Skip the back-off: the admin command a person would use.
	retry := exec.Command(os.Args[0], "queue", "retry", "--all", "--data", dirA)
	retry.Env = append(os.Environ(), "CHATRELAY_EXEC=1")
	if out, err := retry.CombinedOutput(); err != nil {
		t.Fatalf("queue retry: %v %s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ic, err := imapclient.DialTLS(b.addrs["imaps"], &imapclient.Options{TLSConfig: tlsConf})
		if err != nil {
			t.Fatal(err)
		}
		if err := ic.Login(bob, pass).Wait(); err != nil {
			t.Fatal(err)
		}
		st, err := ic.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
		ic.Close()
		if err != nil {
			t.Fatal(err)
		}
		if *st.NumMessages == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob has %d messages; relay A log:\n%s", *st.NumMessages, a.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
