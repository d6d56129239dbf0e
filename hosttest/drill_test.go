package hosttest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// drillRules record, in a guest, every TCP or UDP packet that starts a
// conversation with anything but the drill's own link: any DNS query (even
// to loopback, where a resolver would be), and any other address. They are
// dropped and counted in "outside", their destinations kept in dst4/dst6.
const drillRules = `table inet drill {
	counter outside { }
	set dst4 { type ipv4_addr; flags dynamic; }
	set dst6 { type ipv6_addr; flags dynamic; }
	chain out {
		type filter hook output priority 0; policy accept;
		meta l4proto != { tcp, udp } accept
		ct state established,related accept
		th dport 53 goto record
		oif "lo" accept
		ip daddr %s accept
		goto record
	}
	chain record {
		meta nfproto ipv4 add @dst4 { ip daddr }
		meta nfproto ipv6 add @dst6 { ip6 daddr }
		counter name outside
		drop
	}
}
`

// isolate makes outbound attempts observable in g: a default route to an
// address on the bridge that nobody has (IPv4; IPv6 straight onto the
// link), so a connection to the outside leaves a packet for drillRules
// to count and drop, instead of failing before any packet exists.
func isolate(t *testing.T, g *Guest) {
	t.Helper()
	if err := g.WriteFile("/root/drill.nft", []byte(fmt.Sprintf(drillRules, g.Prefix)), 0o600); err != nil {
		t.Fatal(err)
	}
	nowhere := g.Prefix.Addr().As4()
	nowhere[3] = 254
	for _, c := range [][]string{
		{"nft", "-f", "/root/drill.nft"},
		{"ip", "route", "add", "default", "via", netip.AddrFrom4(nowhere).String(), "dev", "host0"},
		{"ip", "-6", "route", "add", "default", "dev", "host0"},
	} {
		guestRun(t, g, c...)
	}
	// The recorder must see what it is for: a datagram to a TEST-NET
	// address (dropped here, it never leaves) and a DNS lookup. UDP: one
	// packet each, no retransmissions to outlive the check.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g.Run(ctx, "timeout", "5", "bash", "-c", "echo x > /dev/udp/192.0.2.1/9")
	g.Run(ctx, "timeout", "5", "bash", "-c", "echo x > /dev/udp/127.0.0.1/53")
	n, dst := outsideAttempts(t, g)
	if n == "0" || !strings.Contains(dst, "192.0.2.1") {
		t.Fatalf("the outbound recorder in %s missed a test connection: %s packets, destinations %s", g.Name, n, dst)
	}
	guestRun(t, g, "nft", "reset", "counter", "inet", "drill", "outside")
	guestRun(t, g, "nft", "flush", "set", "inet", "drill", "dst4")
	guestRun(t, g, "nft", "flush", "set", "inet", "drill", "dst6")
	if n, _ := outsideAttempts(t, g); n != "0" {
		t.Fatalf("outbound recorder in %s not reset: %s packets", g.Name, n)
	}
}

var packetsRE = regexp.MustCompile(`packets (\d+)`)

// outsideAttempts is how many packets g tried to send outside, and where.
func outsideAttempts(t *testing.T, g *Guest) (string, string) {
	t.Helper()
	counter := guestRun(t, g, "nft", "list", "counter", "inet", "drill", "outside")
	m := packetsRE.FindStringSubmatch(counter)
	if m == nil {
		t.Fatalf("no packet count in %q", counter)
	}
	dst := guestRun(t, g, "nft", "list", "set", "inet", "drill", "dst4") + "\n" +
		guestRun(t, g, "nft", "list", "set", "inet", "drill", "dst6")
	return m[1], dst
}

// bridge makes a host bridge with addr on it, removed when t ends.
func bridge(t *testing.T, name string, addr netip.Addr, prefix netip.Prefix) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := output(ctx, "ip", "link", "add", name, "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := output(ctx, "ip", "link", "del", name); err != nil {
			t.Errorf("remove bridge: %v", err)
		}
	})
	for _, c := range [][]string{
		{"addr", "add", fmt.Sprintf("%s/%d", addr, prefix.Bits()), "dev", name},
		{"link", "set", name, "up"},
	} {
		if _, err := output(ctx, "ip", c...); err != nil {
			t.Fatal(err)
		}
	}
}

type dcAccount struct {
	id   uint32
	addr string
	name string
}

// TestNoOutsideWorld is the drill of SPEC section 12: two relays on a
// private bridge with no route anywhere else, no DNS, no CA and no push
// proxy; Delta Chat cores on the host make an account on each, join by
// Secure-Join across the relays, chat both ways and send a file. Neither
// guest may try to reach anything outside the bridge, and neither may core.
func TestNoOutsideWorld(t *testing.T) {
	e := needHost(t)
	bin, err := dctest.Binary()
	if err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	third := (e.subnetBase + 100) % 250
	prefix := netip.MustParsePrefix(fmt.Sprintf("10.214.%d.0/24", third))
	hostAddr := netip.MustParseAddr(fmt.Sprintf("10.214.%d.1", third))
	br := fmt.Sprintf("crb%05d", os.Getpid()%100000)
	bridge(t, br, hostAddr, prefix)

	var guests [2]*Guest
	for i, n := range []string{"d1", "d2"} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		name := fmt.Sprintf("cr%05d%s", os.Getpid()%100000, n)
		g, err := NewGuest(ctx, e.image, filepath.Join(e.work, name), name,
			netip.MustParseAddr(fmt.Sprintf("10.214.%d.%d", third, 2+i)), hostAddr, prefix)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		g.Bridge = br
		t.Cleanup(func() {
			if err := g.Destroy(); err != nil {
				t.Errorf("stop guest %s: %v", name, err)
			}
		})
		err = g.Boot(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		isolate(t, g)
		if err := g.CopyIn(e.bin, guestBinary, 0o755); err != nil {
			t.Fatal(err)
		}
		guests[i] = g
	}
	// Whatever happens below, nothing may have left the bridge.
	defer t.Run("nothing-reached-outside", func(t *testing.T) {
		for _, g := range guests {
			n, dst := outsideAttempts(t, g)
			if n != "0" {
				t.Errorf("guest %s (%s) tried to reach outside the bridge %s times:\n%s", g.Name, g.Addr, n, dst)
			}
		}
	})

	for i, g := range guests {
		t.Run(fmt.Sprintf("install-ip/relay%d", i+1), func(t *testing.T) {
			out, err := relayCmd(t, g, "", "install", "--ip", g.Addr.String(), "--yes")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "chatrelay is running") {
				t.Error("install does not say the relay runs")
			}
			mustActive(t, g)
			// The bridge is a private network, which the courier refuses
			// unless the operator lists it (docs/CONFIG.md): as relays of
			// one organisation's or one country's private network would.
			allowFederationOver(t, g, prefix.String())
			relaxLoadGuard(t, g, g.Addr.String())
		})
	}
	if t.Failed() {
		return
	}

	dcDir := filepath.Join(e.work, "deltachat")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dc, err := dctest.Start(ctx, bin, dcDir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		dc.Close()
		for _, target := range dc.ConnectionTargets() {
			a, err := netip.ParseAddr(strings.Trim(target, "[]"))
			if err != nil || !prefix.Contains(a) && !a.IsLoopback() {
				t.Errorf("Delta Chat core tried to reach %q, outside the bridge %s", target, prefix)
			}
		}
		if t.Failed() {
			t.Logf("core's log:\n%s", dc.LogTail(80))
		}
	}()

	var accs [2]*dcAccount
	for i, g := range guests {
		ok := t.Run(fmt.Sprintf("account-by-dclogin/relay%d", i+1), func(t *testing.T) {
			a, err := newAccount(g.Addr.String())
			if err != nil {
				t.Fatal(err)
			}
			id, err := dc.AddAccount(ctx)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("user%d", i+1)
			dc.SetConfig(ctx, id, "displayname", name)
			actx, acancel := context.WithTimeout(ctx, 90*time.Second)
			defer acancel()
			if err := dc.AddTransportFromQR(actx, id, a.DCLogin_URL); err != nil {
				t.Fatalf("configure %s from its dclogin code: %v", a.Email, err)
			}
			if got, err := dc.GetConfig(actx, id, "configured_addr"); err != nil || got != a.Email {
				t.Fatalf("configured_addr = %q, %v; want %q", got, err, a.Email)
			}
			if _, err := dc.WaitEvent(actx, id, "ImapInboxIdle", nil); err != nil {
				t.Fatalf("%s: core's inbox loop never went into IDLE: %v", a.Email, err)
			}
			accs[i] = &dcAccount{id: id, addr: a.Email, name: name}
		})
		if !ok {
			return
		}
	}
	a, b := accs[0], accs[1]

	var aChat, bChat uint32
	if !t.Run("securejoin-across-relays", func(t *testing.T) {
		sctx, scancel := context.WithTimeout(ctx, 2*time.Minute)
		defer scancel()
		qr, err := dc.GetSecureJoinQR(sctx, a.id, 0)
		if err != nil {
			t.Fatal(err)
		}
		dc.Drain(a.id)
		dc.Drain(b.id)
		if bChat, err = dc.SecureJoin(sctx, b.id, qr); err != nil {
			t.Fatal(err)
		}
		done := func(e dctest.Event) bool { return e.Progress == 0 || e.Progress == 1000 }
		je, err := dc.WaitEvent(sctx, b.id, "SecurejoinJoinerProgress", done)
		if err != nil {
			t.Fatalf("joiner %s: %v", b.addr, err)
		}
		ie, err := dc.WaitEvent(sctx, a.id, "SecurejoinInviterProgress", done)
		if err != nil {
			t.Fatalf("inviter %s: %v", a.addr, err)
		}
		if je.Progress != 1000 || ie.Progress != 1000 {
			t.Fatalf("securejoin: joiner progress %d, inviter progress %d; want 1000", je.Progress, ie.Progress)
		}
		if c, err := dc.BasicChatInfo(sctx, b.id, bChat); err != nil || !c.IsEncrypted {
			t.Fatalf("joiner's chat: %+v, %v; want encrypted", c, err)
		}
	}) {
		return
	}
	if !t.Run("chat-both-ways", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Minute)
		defer ccancel()
		m := drillExchange(cctx, t, dc, b, bChat, a, "hello across the bridge")
		aChat = m.ChatID
		if r := drillExchange(cctx, t, dc, a, aChat, b, "hello back"); r.ChatID != bChat {
			t.Errorf("reply arrived in chat %d, want %d", r.ChatID, bChat)
		}
	}) {
		return
	}
	t.Run("send-a-file", func(t *testing.T) {
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Minute)
		defer fcancel()
		data := make([]byte, 100<<10)
		rand.Read(data)
		src := filepath.Join(e.work, "drill.bin")
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		const text = "a file across the bridge"
		if err := dc.CallResult(fctx, nil, "misc_send_msg", a.id, aChat, text, src, "drill.bin", nil, nil); err != nil {
			t.Fatal(err)
		}
		m, _, err := dc.WaitIncoming(fctx, b.id, text)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			File     string `json:"file"`
			FileName string `json:"fileName"`
		}
		if err := dc.CallResult(fctx, &got, "get_message", b.id, m.ID); err != nil {
			t.Fatal(err)
		}
		rcv, err := os.ReadFile(got.File)
		if err != nil {
			t.Fatalf("received file: %v", err)
		}
		if sha256.Sum256(rcv) != sha256.Sum256(data) || got.FileName != "drill.bin" || !m.ShowPadlock {
			t.Errorf("received %q (%d bytes, padlock %v), not the %d bytes sent", got.FileName, len(rcv), m.ShowPadlock, len(data))
		}
	})
	t.Run("call-ice-servers-from-local-relay", func(t *testing.T) {
		// Each core's ICE servers for a call are its own relay's TURN
		// (METADATA turn), not the public servers core falls back to.
		for i, acc := range []*dcAccount{a, b} {
			want := "turn:" + net.JoinHostPort(guests[i].Addr.String(), "3478")
			var servers []dctest.IceServer
			var raw string
			deadline := time.Now().Add(time.Minute)
			for {
				ictx, icancel := context.WithTimeout(ctx, 30*time.Second)
				var err error
				servers, raw, err = dc.IceServers(ictx, acc.id)
				icancel()
				if err != nil {
					t.Fatal(err)
				}
				if len(servers) == 1 && len(servers[0].URLs) > 0 && servers[0].URLs[0] == want || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if len(servers) != 1 || len(servers[0].URLs) == 0 || servers[0].URLs[0] != want {
				t.Fatalf("%s: ice_servers %s, want only %s", acc.addr, raw, want)
			}
			exp, err := strconv.ParseInt(servers[0].Username, 10, 64)
			if err != nil || time.Until(time.Unix(exp, 0)) < 4*24*time.Hour {
				t.Errorf("%s: TURN user name %q is not an expiry days ahead", acc.addr, servers[0].Username)
			}
		}
	})
	t.Run("webxdc-realtime-limit-stated", func(t *testing.T) {
		// Core 2.62's iroh trusts only compiled-in public roots: an
		// IP-only relay serves /relay but must not announce it (that
		// would only break realtime), and status says why.
		for _, g := range guests {
			st, err := relayCmd(t, g, "", "status")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(st, "iroh relay:   built-in, not announced") || !strings.Contains(st, "cannot serve webxdc realtime") {
				t.Errorf("%s: status does not say that its iroh relay is not announced and why:\n%s", g.Name, st)
			}
		}
	})
}

// allowFederationOver lets the guest's courier deliver to network, in its
// installed config; relaxLoadGuard restarts the relay after it.
func allowFederationOver(t *testing.T, g *Guest, network string) {
	t.Helper()
	const path = "/etc/chatrelay/chatrelay.toml"
	guestRun(t, g, "sed", "-i", `s|^# allow_private_targets = .*|allow_private_targets = ["`+network+`"]|`, path)
	if !strings.Contains(guestRun(t, g, "cat", path), "\nallow_private_targets = [\""+network+"\"]\n") {
		t.Fatal("allow_private_targets not set in the config")
	}
}

// drillExchange sends text and waits for it, end-to-end encrypted, on the
// other side.
func drillExchange(ctx context.Context, t *testing.T, dc *dctest.RPC, from *dcAccount, chat uint32, to *dcAccount, text string) dctest.Message {
	t.Helper()
	if _, err := dc.SendText(ctx, from.id, chat, text); err != nil {
		t.Fatalf("%s sends %q: %v", from.addr, text, err)
	}
	m, _, err := dc.WaitIncoming(ctx, to.id, text)
	if err != nil {
		t.Fatalf("%s -> %s: %v", from.addr, to.addr, err)
	}
	if !m.ShowPadlock {
		t.Errorf("%s -> %s: %q arrived without padlock", from.addr, to.addr, text)
	}
	return m
}
