package relay_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

func TestPushOnDeliveryFromSomeoneElse(t *testing.T) {
	posts := make(chan string, 16)
	status := make(chan int, 16)
	proxy := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		posts <- string(b)
		code := http.StatusOK
		select {
		case code = <-status:
		default:
		}
		w.WriteHeader(code)
	}))
	defer proxy.Close()
	cfg := relaytest.Config(t.TempDir())
	cfg.NotifyURL = proxy.URL + "/notify"
	r := relaytest.StartWith(t, cfg, relay.Options{PushClient: proxy.Client()})

	const alice, bob = "alicealic@localhost", "bobbobbob@localhost"
	login(t, r, alice).Close()
	c := login(t, r, bob)
	tok := []byte("phone-token-1")
	if err := c.SetMetadata("INBOX", map[string]*[]byte{"/private/devicetoken": &tok}).Wait(); err != nil {
		t.Fatal(err)
	}
	wait := func() string {
		select {
		case p := <-posts:
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("no push notification")
			return ""
		}
	}
	// Bob's own copy wakes nobody; alice's message does.
	if err := submit(t, r, bob, password, bob, []string{bob}, testmsg.Encrypted(bob, bob, 0)); err != nil {
		t.Fatal(err)
	}
	if err := submit(t, r, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 0)); err != nil {
		t.Fatal(err)
	}
	if got := wait(); got != "phone-token-1" {
		t.Fatalf("push body %q, want the token", got)
	}
	select {
	case p := <-posts:
		t.Fatalf("extra push %q (own message?)", p)
	case <-time.After(300 * time.Millisecond):
	}
	// 410: the token is dropped.
	status <- http.StatusGone
	if err := submit(t, r, alice, password, alice, []string{bob}, testmsg.Encrypted(alice, bob, 1)); err != nil {
		t.Fatal(err)
	}
	wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tokens, _ := r.Store().PushTokens(bob)
		if len(tokens) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token kept after 410: %v", tokens)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
