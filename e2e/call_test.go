package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"

	"github.com/chatrelay/chatrelay/internal/dctest"
)

// TestDeltaChatCallThroughTURN places a call between two Delta Chat
// accounts on the relay, the way the apps do: core's ice_servers names
// exactly the relay's own TURN server with credentials under the relay's
// secret; the caller's offer goes out with place_outgoing_call, the callee
// accepts with accept_incoming_call, each side's SDP arrives unchanged on
// the other; two WebRTC peers (pion/webrtc, standing in for the apps' web
// views) use the ICE servers core gave them, forced to relay candidates
// only, and open a data channel that carries data both ways through the
// relay's TURN server.
func TestDeltaChatCallThroughTURN(t *testing.T) {
	if _, err := dctest.Binary(); err != nil {
		t.Skipf("%s (%v)", dctest.SkipMessage, err)
	}
	r := startRelay(t)
	dc := dctest.StartT(t)
	ctx := t.Context()
	setup := func(ctx context.Context, acc uint32, addr, pw string) error {
		return dc.AddOrUpdateTransport(ctx, acc, r.Transport(addr, pw))
	}
	alice := configure(ctx, t, dc, "alice0001", "alice-long-password-1", setup)
	bob := configure(ctx, t, dc, "bobby0002", "bob-long-password-2", setup)
	aliceChat, _ := vcardChat(ctx, t, dc, alice, bob, "hello bob, a call follows")

	secret, err := os.ReadFile(filepath.Join(r.dir, "data", "turn.secret"))
	if err != nil {
		t.Fatal(err)
	}
	servers := map[uint32][]webrtc.ICEServer{}
	for _, a := range []*account{alice, bob} {
		got, raw, err := dc.IceServers(ctx, a.id)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("ice_servers of %s: %s", a.addr, raw)
		servers[a.id] = checkIceServers(t, got, r, strings.TrimSpace(string(secret)))
	}

	callCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	caller := newRelayOnlyPeer(t, servers[alice.id])
	callee := newRelayOnlyPeer(t, servers[bob.id])
	opened := make(chan *webrtc.DataChannel, 2)
	received := make(chan string, 4)
	watch := func(d *webrtc.DataChannel) {
		d.OnOpen(func() { opened <- d })
		d.OnMessage(func(m webrtc.DataChannelMessage) { received <- string(m.Data) })
	}
	dcA, err := caller.CreateDataChannel("call", nil)
	if err != nil {
		t.Fatal(err)
	}
	watch(dcA)
	callee.OnDataChannel(watch)

	offer := localSDP(t, caller, func() (webrtc.SessionDescription, error) { return caller.CreateOffer(nil) })
	dc.Drain(bob.id)
	callMsg, err := dc.PlaceOutgoingCall(callCtx, alice.id, aliceChat, offer, false)
	if err != nil {
		t.Fatal(err)
	}
	in, err := dc.WaitEvent(callCtx, bob.id, "IncomingCall", nil)
	if err != nil {
		t.Fatalf("bob: %v", err)
	}
	incoming, err := in.Call()
	if err != nil || incoming.PlaceCallInfo != offer {
		t.Fatalf("bob's IncomingCall %s: the offer did not arrive unchanged (%v)", in.Raw, err)
	}
	if err := callee.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		t.Fatal(err)
	}
	answer := localSDP(t, callee, func() (webrtc.SessionDescription, error) { return callee.CreateAnswer(nil) })
	if err := dc.AcceptIncomingCall(callCtx, bob.id, incoming.MsgID, answer); err != nil {
		t.Fatal(err)
	}
	acc, err := dc.WaitEvent(callCtx, alice.id, "OutgoingCallAccepted", nil)
	if err != nil {
		t.Fatalf("alice: %v", err)
	}
	accepted, err := acc.Call()
	if err != nil || accepted.AcceptCallInfo != answer || accepted.MsgID != callMsg {
		t.Fatalf("alice's OutgoingCallAccepted %s: not the answer to call %d (%v)", acc.Raw, callMsg, err)
	}
	if err := caller.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatal(err)
	}

	channels := map[string]*webrtc.DataChannel{}
	for len(channels) < 2 {
		select {
		case d := <-opened:
			if d == dcA {
				channels["caller"] = d
			} else {
				channels["callee"] = d
			}
		case <-callCtx.Done():
			t.Fatalf("data channel not open on both sides (caller ICE %s, callee ICE %s)", caller.ICEConnectionState(), callee.ICEConnectionState())
		}
	}
	for _, m := range []struct{ from, text string }{{"caller", "hello from alice over TURN"}, {"callee", "hello from bob over TURN"}} {
		if err := channels[m.from].SendText(m.text); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-received:
			if got != m.text {
				t.Fatalf("got %q, want %q", got, m.text)
			}
		case <-callCtx.Done():
			t.Fatalf("%q never arrived", m.text)
		}
	}
	// Both ends of the pair in use are relay candidates on the relay's
	// TURN server, and the relay counts the allocations and the traffic.
	for name, pc := range map[string]*webrtc.PeerConnection{"caller": caller, "callee": callee} {
		pair, err := pc.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
		if err != nil || pair == nil {
			t.Fatalf("%s: no selected candidate pair: %v", name, err)
		}
		for _, c := range []*webrtc.ICECandidate{pair.Local, pair.Remote} {
			if c.Typ != webrtc.ICECandidateTypeRelay || c.Address != r.Host || c.Port < 49152 || c.Port > 49251 {
				t.Errorf("%s: candidate %s, want a relay candidate on %s in the dev relay range", name, c, r.Host)
			}
		}
	}
	if n := r.metric(t, "chatrelay_turn_allocations_total"); n < 2 {
		t.Errorf("the relay made %v TURN allocations, want at least 2", n)
	}
	if n := r.metric(t, "chatrelay_turn_relayed_bytes_total", `direction="out"`); n == 0 {
		t.Error("the relay relayed no bytes")
	}
	if err := dc.EndCall(callCtx, alice.id, callMsg); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.WaitEvent(callCtx, bob.id, "CallEnded", nil); err != nil {
		t.Errorf("bob: %v", err)
	}
}

// checkIceServers checks that core names only the relay's TURN server,
// with REST credentials under the relay's secret, and returns the servers
// for WebRTC.
func checkIceServers(t *testing.T, got []dctest.IceServer, r *relay, secret string) []webrtc.ICEServer {
	t.Helper()
	want := "turn:" + net.JoinHostPort(r.Host, strconv.Itoa(r.TURN))
	if len(got) == 0 {
		t.Fatal("ice_servers is empty")
	}
	var out []webrtc.ICEServer
	for _, s := range got {
		for _, u := range s.URLs {
			base, _, _ := strings.Cut(u, "?")
			if base != want {
				t.Errorf("ice_servers names %q, want only %s (UDP or TCP)", u, want)
			}
		}
		exp, err := strconv.ParseInt(s.Username, 10, 64)
		if err != nil || time.Until(time.Unix(exp, 0)) < 100*time.Hour {
			t.Errorf("user name %q is not an expiry days away", s.Username)
		}
		mac := hmac.New(sha1.New, []byte(secret))
		mac.Write([]byte(s.Username))
		if s.Credential != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
			t.Errorf("credential of %q does not verify under the relay's secret", s.Username)
		}
		out = append(out, webrtc.ICEServer{URLs: s.URLs, Username: s.Username, Credential: s.Credential})
	}
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// newRelayOnlyPeer is a WebRTC peer that uses only relay candidates from
// servers, on loopback, and never multicasts (no mDNS).
func newRelayOnlyPeer(t *testing.T, servers []webrtc.ICEServer) *webrtc.PeerConnection {
	t.Helper()
	var se webrtc.SettingEngine
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeTCP4})
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	// The relay candidates are on loopback too (a dev relay).
	se.SetIncludeLoopbackCandidate(true)
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{ICEServers: servers, ICETransportPolicy: webrtc.ICETransportPolicyRelay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// localSDP makes an offer or answer, sets it and returns it with every
// candidate in it (no trickle: the SDP travels in one chat message). It
// checks the candidates are relay candidates only.
func localSDP(t *testing.T, pc *webrtc.PeerConnection, make func() (webrtc.SessionDescription, error)) string {
	t.Helper()
	var desc webrtc.SessionDescription
	var err error
	if desc, err = make(); err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(desc); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gathered:
	case <-time.After(2 * time.Minute):
		t.Fatal("ICE gathering did not complete")
	}
	sdp := pc.LocalDescription().SDP
	n := 0
	for _, l := range strings.Split(sdp, "\n") {
		if strings.HasPrefix(l, "a=candidate:") {
			n++
			if !strings.Contains(l, " typ relay") {
				t.Errorf("not a relay candidate: %s", l)
			}
		}
	}
	if n == 0 {
		t.Fatalf("no candidates gathered from the relay's TURN server:\n%s", sdp)
	}
	return sdp
}
