package relay_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/chatrelay/chatrelay/acme"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/control"
	"github.com/chatrelay/chatrelay/relay/relaytest"
	"github.com/chatrelay/chatrelay/relay/turn"
	"github.com/chatrelay/chatrelay/relay/turn/turntest"
)

// turnEntry is METADATA /shared/vendor/deltachat/turn as a client reads
// it over IMAP: host, port, user name, password.
type turnEntry struct {
	host       string
	port       int
	user, pass string
}

func readTURN(t *testing.T, r *relaytest.Relay, user string) turnEntry {
	t.Helper()
	c := login(t, r, user)
	defer c.Close()
	data, err := c.GetMetadata("", []string{"/shared/vendor/deltachat/turn"}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	v := data.Entries["/shared/vendor/deltachat/turn"]
	if v == nil {
		t.Fatal("no TURN entry in METADATA")
	}
	parts := strings.Split(string(*v), ":")
	if len(parts) != 4 {
		t.Fatalf("turn entry %q", *v)
	}
	port, err := strconv.Atoi(parts[1])
	if err != nil {
		t.Fatalf("turn entry %q", *v)
	}
	return turnEntry{parts[0], port, parts[2], parts[3]}
}

// The built-in TURN server, with the credentials a client reads over IMAP:
// two clients (over UDP, and over TCP to the server) allocate and exchange
// datagrams through their relay addresses; status and metrics count it.
func TestTURNBuiltInWithMetadataCredentials(t *testing.T) {
	r := relaytest.Start(t, nil)
	e := readTURN(t, r, "alicealic@localhost")
	if e.host != "127.0.0.1" || e.port != r.TURN().Port() {
		t.Fatalf("entry names %s:%d, server is on %v", e.host, e.port, r.TURN().UDPAddr())
	}
	// user = expiry in 5 days; password = base64 HMAC-SHA1 under the
	// secret in the data directory.
	exp, _ := strconv.ParseInt(e.user, 10, 64)
	if d := time.Until(time.Unix(exp, 0)); d < 119*time.Hour || d > 121*time.Hour {
		t.Errorf("credentials valid for %v, want 5 days", d)
	}
	secret, err := os.ReadFile(filepath.Join(r.Dir, turn.SecretFile))
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha1.New, []byte(strings.TrimSpace(string(secret))))
	mac.Write([]byte(e.user))
	if e.pass != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
		t.Error("password is not HMAC-SHA1(secret, user)")
	}

	for _, transport := range []string{"udp", "tcp"} {
		a := turntest.Dial(t, transport, e.port, e.user, e.pass)
		b := turntest.Dial(t, "udp", e.port, e.user, e.pass)
		turntest.Exchange(t, turntest.Allocate(t, a), turntest.Allocate(t, b))
	}

	var st control.Status
	if err := control.Call(context.Background(), relay.ControlSocketPath(r.Dir), control.CmdStatus, nil, &st, nil); err != nil {
		t.Fatal(err)
	}
	ts := st.TURN
	if ts == nil || ts.Announced != net.JoinHostPort("127.0.0.1", strconv.Itoa(e.port)) || ts.Allocations != 4 || ts.AllocationsTotal != 4 || ts.BytesIn == 0 || ts.BytesOut == 0 {
		t.Fatalf("status turn %+v", ts)
	}
	page := scrape(t, r)
	for _, want := range []string{`chatrelay_turn_allocations 4`, `chatrelay_turn_allocations_total 4`, `chatrelay_turn_relayed_bytes_total{direction="in"}`, `chatrelay_turn_refusals_total{reason="auth"} 0`} {
		if metricLine(page, want) == "" {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// Credentials from METADATA stop working when they expire, and a forged
// password never works.
func TestTURNRefusesExpiredAndForgedCredentials(t *testing.T) {
	r := relaytest.Start(t, nil)
	e := readTURN(t, r, "alicealic@localhost")
	forged := []byte(e.pass)
	forged[0] ^= 1
	_, err := turntest.Dial(t, "udp", e.port, e.user, string(forged)).Allocate()
	turntest.WantCode(t, err, stun.CodeBadRequest)

	r.Clock.Advance(5*24*time.Hour + time.Minute)
	_, err = turntest.Dial(t, "tcp", e.port, e.user, e.pass).Allocate()
	turntest.WantCode(t, err, stun.CodeBadRequest)
	if st := r.TURN().Stats(); st.RefusedAuth != 2 || st.AllocationsTotal != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Fresh credentials, read again, work.
	e = readTURN(t, r, "alicealic@localhost")
	turntest.Allocate(t, turntest.Dial(t, "udp", e.port, e.user, e.pass))
}

// With the default peer policy (no allowed prefixes, as in production),
// an allocation gets no permission for loopback or private peers, and a
// datagram sent to a loopback listener through it never arrives.
func TestTURNDefaultPolicyRefusesLoopbackAndPrivatePeers(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) { c.TURN.AllowPeers = nil })
	e := readTURN(t, r, "alicealic@localhost")
	cl := turntest.Dial(t, "udp", e.port, e.user, e.pass)
	alloc := turntest.Allocate(t, cl)
	target, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	for _, peer := range []net.Addr{target.LocalAddr(), &net.UDPAddr{IP: net.ParseIP("10.0.0.1"), Port: 53}, &net.UDPAddr{IP: net.ParseIP("192.168.0.1"), Port: 53}} {
		if err := cl.CreatePermission(peer); err == nil {
			t.Errorf("permission for %v granted", peer)
		}
	}
	if _, err := alloc.WriteTo([]byte("let me in"), target.LocalAddr()); err == nil {
		t.Error("datagram to a loopback peer accepted by the client")
	}
	target.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, from, err := target.ReadFrom(make([]byte, 64)); err == nil {
		t.Fatalf("loopback peer got %d bytes from %v", n, from)
	}
	if st := r.TURN().Stats(); st.RefusedPeer < 3 {
		t.Fatalf("stats %+v", st)
	}
}

// An external TURN server turns the built-in one off.
func TestTURNExternalTurnsBuiltInOff(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) {
		c.TURN.Server, c.TURN.Secret = "turn.example.org:3478", "shared-secret-of-the-external"
	})
	if r.TURN() != nil {
		t.Fatal("built-in TURN runs beside an external one")
	}
	if e := readTURN(t, r, "alicealic@localhost"); e.host != "turn.example.org" || e.port != 3478 {
		t.Fatalf("entry %+v", e)
	}
	if _, err := os.Stat(filepath.Join(r.Dir, turn.SecretFile)); err == nil {
		t.Error("a built-in secret was made")
	}
}

// A TURN port another process holds stops the relay with an error that
// names it and says what to change (dev mode's fixed 3478 may be taken).
func TestTURNPortTakenIsAClearError(t *testing.T) {
	held, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	cfg := relaytest.Config(t.TempDir())
	cfg.TURN.ListenUDP, cfg.TURN.ListenTCP = held.LocalAddr().String(), held.LocalAddr().String()
	certs, err := acme.New(acme.Config{Mode: acme.ModeSelfSigned, Domain: cfg.Domain, DataDir: cfg.DataDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer certs.Close()
	srv, err := relay.New(cfg, certs, relay.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	err = srv.Start()
	if err == nil {
		t.Fatal("started with the TURN port taken")
	}
	for _, want := range []string{"listen turn (udp) on " + held.LocalAddr().String(), "address already in use", "--listen-turn"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// Nothing else is left listening.
	for _, name := range []string{"imaps", "https"} {
		if a := srv.Addr(name); a != nil {
			if c, err := net.DialTimeout("tcp", a.String(), time.Second); err == nil {
				c.Close()
				t.Errorf("%s still accepts on %v", name, a)
			}
		}
	}
}
