package turn_test

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	pion "github.com/pion/turn/v4"

	"github.com/chatrelay/chatrelay/relay/turn"
	"github.com/chatrelay/chatrelay/relay/turn/turntest"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

// start runs a TURN server on loopback; edit may change its options.
func start(t *testing.T, edit func(*turn.Options)) *turn.Server {
	t.Helper()
	opts := turn.Options{
		UDP: "127.0.0.1:0", TCP: "127.0.0.1:0",
		RelayIP: net.IPv4(127, 0, 0, 1), RelayBind: "127.0.0.1",
		MinPort: 20000, MaxPort: 60000,
		Secret: secret, MaxTTL: 120 * time.Hour, Realm: "localhost",
		AllowPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}
	if edit != nil {
		edit(&opts)
	}
	s, err := turn.Listen(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func creds(valid time.Duration) (string, string) {
	return turn.Credentials(secret, time.Now().Add(valid))
}

func TestUDPAndTCPShareOnePort(t *testing.T) {
	s := start(t, nil)
	u, c := s.UDPAddr().(*net.UDPAddr), s.TCPAddr().(*net.TCPAddr)
	if u.Port != c.Port || u.Port != s.Port() {
		t.Fatalf("udp %v tcp %v port %d: want one port", u, c, s.Port())
	}
}

// Two clients, over UDP and over TCP, allocate and exchange datagrams
// through their relay addresses both ways.
func TestTwoClientsRelayThroughTheServer(t *testing.T) {
	for _, transport := range []string{"udp", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			s := start(t, nil)
			user, pass := creds(time.Hour)
			a := turntest.Dial(t, transport, s.Port(), user, pass)
			b := turntest.Dial(t, "udp", s.Port(), user, pass)
			ra, rb := turntest.Allocate(t, a), turntest.Allocate(t, b)
			for _, r := range []net.Addr{ra.LocalAddr(), rb.LocalAddr()} {
				if r.(*net.UDPAddr).Port < 20000 || r.(*net.UDPAddr).Port > 60000 {
					t.Fatalf("relay address %v outside the range", r)
				}
			}
			turntest.Exchange(t, ra, rb)
			st := s.Stats()
			if st.Allocations != 2 || st.AllocationsTotal != 2 || st.BytesIn == 0 || st.BytesOut == 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestCredentialsRefused(t *testing.T) {
	s := start(t, nil)
	user, pass := creds(time.Hour)
	expUser, expPass := creds(-time.Minute)
	farUser, farPass := creds(200 * time.Hour)
	cases := []struct{ name, user, pass string }{
		{"forged password", user, strings.Repeat("A", len(pass))},
		{"other secret", user, func() string {
			_, p := turn.Credentials([]byte("another secret, not ours"), time.Now().Add(time.Hour))
			return p
		}()},
		{"expired", expUser, expPass},
		{"longer than handed out", farUser, farPass},
		{"not an expiry", "alice", pass},
		{"expiry with a user part", user + ":alice", pass},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := turntest.Dial(t, "udp", s.Port(), c.user, c.pass)
			_, err := cl.Allocate()
			turntest.WantCode(t, err, stun.CodeBadRequest)
			if got := s.Stats().RefusedAuth; got != uint64(i+1) {
				t.Errorf("refused auth %d, want %d", got, i+1)
			}
		})
	}
	if s.Stats().AllocationsTotal != 0 {
		t.Fatal("an allocation was made")
	}
}

// Without credentials there is no allocation, only a 401 challenge, and
// a binding request gets its answer (no amplification: one small answer
// per request).
func TestNoAllocationWithoutCredentials(t *testing.T) {
	s := start(t, nil)
	cl := turntest.Dial(t, "udp", s.Port(), "", "")
	mapped, err := cl.SendBindingRequest()
	if err != nil || !mapped.(*net.UDPAddr).IP.IsLoopback() {
		t.Fatalf("binding: %v %v", mapped, err)
	}
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		rawAttr{stun.AttrRequestedTransport, []byte{17, 0, 0, 0}}, stun.Fingerprint)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	res := &stun.Message{Raw: buf[:n]}
	if err := res.Decode(); err != nil {
		t.Fatal(err)
	}
	var code stun.ErrorCodeAttribute
	if err := code.GetFrom(res); err != nil || code.Code != stun.CodeUnauthorized {
		t.Fatalf("anonymous allocate: %v %v", res, err)
	}
	t.Logf("anonymous Allocate of %d bytes answered with %d bytes", len(req.Raw), n)
	if n > len(req.Raw)+100 {
		t.Errorf("answer of %d bytes to a request of %d", n, len(req.Raw))
	}
	if s.Stats().AllocationsTotal != 0 {
		t.Fatal("an allocation was made")
	}
}

type rawAttr struct {
	t stun.AttrType
	v []byte
}

func (r rawAttr) AddTo(m *stun.Message) error { m.Add(r.t, r.v); return nil }

// The default policy refuses loopback, private, link-local, multicast and
// shared peers; a permission is a request to the server only, so no
// datagram goes anywhere.
func TestPeerPolicyRefusesInternalAddresses(t *testing.T) {
	s := start(t, func(o *turn.Options) { o.AllowPeers = nil })
	user, pass := creds(time.Hour)
	cl := turntest.Dial(t, "udp", s.Port(), user, pass)
	turntest.Allocate(t, cl)
	for i, peer := range []string{"127.0.0.1", "127.1.2.3", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "224.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "fc00::1", "fe80::1", "::ffff:127.0.0.1"} {
		// pion's client reports an error response without its code.
		if err := cl.CreatePermission(&net.UDPAddr{IP: net.ParseIP(peer), Port: 9}); err == nil {
			t.Fatalf("%s: permitted", peer)
		}
		if got := s.Stats().RefusedPeer; got != uint64(i+1) {
			t.Fatalf("%s: refused %d, want %d", peer, got, i+1)
		}
	}
	// A public address is permitted (the permission only; nothing is sent).
	if err := cl.CreatePermission(&net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 9}); err != nil {
		t.Fatalf("public peer: %v", err)
	}
}

func TestAllocationCapPerClient(t *testing.T) {
	s := start(t, func(o *turn.Options) { o.MaxAllocationsPerClient = 2 })
	user, pass := creds(time.Hour)
	for range 2 {
		turntest.Allocate(t, turntest.Dial(t, "udp", s.Port(), user, pass))
	}
	_, err := turntest.Dial(t, "udp", s.Port(), user, pass).Allocate()
	turntest.WantCode(t, err, stun.CodeAllocQuotaReached)
	if st := s.Stats(); st.Allocations != 2 || st.RefusedQuota != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// The total cap refuses past it, and a client leaving (its TCP
// connection closed) frees its allocation for the next.
func TestAllocationCapInTotal(t *testing.T) {
	s := start(t, func(o *turn.Options) { o.MaxAllocations = 1 })
	user, pass := creds(time.Hour)
	tcp, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	first, err := pion.NewClient(&pion.ClientConfig{STUNServerAddr: s.TCPAddr().String(), TURNServerAddr: s.TCPAddr().String(), Conn: pion.NewSTUNConn(tcp), Username: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	first.Listen()
	turntest.Allocate(t, first)
	_, err = turntest.Dial(t, "udp", s.Port(), user, pass).Allocate()
	turntest.WantCode(t, err, stun.CodeAllocQuotaReached)

	first.Close()
	tcp.Close()
	deadline := time.Now().Add(60 * time.Second)
	for s.Stats().Allocations != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("allocation of a closed TCP connection still counted: %+v", s.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	turntest.Allocate(t, turntest.Dial(t, "udp", s.Port(), user, pass))
}

// Past the bandwidth cap datagrams are dropped: at 1 byte per second only
// the burst (16 full datagrams) gets through, whatever the machine's speed.
func TestBandwidthCapDropsDatagrams(t *testing.T) {
	s := start(t, func(o *turn.Options) { o.BandwidthPerClient = 1 })
	user, pass := creds(time.Hour)
	a := turntest.Dial(t, "udp", s.Port(), user, pass)
	ra := turntest.Allocate(t, a)
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	msg := bytes.Repeat([]byte("x"), 1000)
	const sent = 200
	// Each datagram is sent until the server has handled it (relayed or
	// dropped it): UDP on a busy machine loses some on the way in.
	handled := func() uint64 { st := s.Stats(); return st.BytesOut/uint64(len(msg)) + st.DroppedPackets }
	for i := range uint64(sent) {
		for try := 0; handled() <= i; try++ {
			if try == 30 {
				t.Fatalf("datagram %d never reached the server: %+v", i, s.Stats())
			}
			if _, err := ra.WriteTo(msg, peer.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(2 * time.Second)
			for handled() <= i && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
	st := s.Stats()
	if relayed := st.BytesOut / uint64(len(msg)); relayed > 26 || st.DroppedPackets < sent-26 {
		t.Fatalf("relayed %d of %d datagrams (dropped %d) at 1 byte/s", relayed, sent, st.DroppedPackets)
	}
}

func TestTCPConnectionCapPerClient(t *testing.T) {
	s := start(t, func(o *turn.Options) { o.TCPConnsPerClient = 1 })
	first, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	user, pass := creds(time.Hour)
	// The first connection holds the one slot once the server took it:
	// wait for the refusal count rather than racing the accept.
	deadline := time.Now().Add(60 * time.Second)
	for s.Stats().RefusedQuota == 0 {
		cl := turntest.Dial(t, "tcp", s.Port(), user, pass)
		if _, err := cl.Allocate(); err == nil {
			t.Fatal("second TCP connection allocated")
		}
		if time.Now().After(deadline) {
			t.Fatal("second connection not refused")
		}
	}
}

func TestSecretMadeOnceWithMode0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), turn.SecretFile)
	s1, err := turn.LoadOrCreateSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file %v %v", fi.Mode(), err)
	}
	s2, err := turn.LoadOrCreateSecret(path)
	if err != nil || !bytes.Equal(s1, s2) || len(s1) < 32 {
		t.Fatalf("secret %q then %q (%v)", s1, s2, err)
	}
	other, _ := turn.LoadOrCreateSecret(filepath.Join(t.TempDir(), turn.SecretFile))
	if bytes.Equal(s1, other) {
		t.Fatal("two relays got the same secret")
	}
	os.WriteFile(path, []byte("short\n"), 0o600)
	if _, err := turn.LoadOrCreateSecret(path); err == nil {
		t.Fatal("short secret accepted")
	}
}

func TestPortTakenIsAClearError(t *testing.T) {
	s := start(t, nil)
	_, err := turn.Listen(turn.Options{
		UDP: s.UDPAddr().String(), RelayIP: net.IPv4(127, 0, 0, 1),
		MinPort: 20000, MaxPort: 20100, Secret: secret,
	})
	if err == nil || !strings.Contains(err.Error(), "listen turn (udp) on "+s.UDPAddr().String()) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("err %v", err)
	}
}
