package router

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/internal/rungroup"
	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
	"github.com/chatrelay/chatrelay/relay/push"
	"github.com/chatrelay/chatrelay/relay/queue"
)

// fixture is a router over a real store, outbound queue and push queue
// (none of them run: the test reads what they hold).
type fixture struct {
	rt    *Router
	store *mailbox.Store
	queue *queue.Queue
	push  *push.Notifier
	alice *mailbox.Account
}

const alice = "alicealic@a.test"

func newFixture(t *testing.T, quota int64) *fixture {
	t.Helper()
	dir := t.TempDir()
	store, err := mailbox.Open(dir, mailbox.Options{QuotaBytes: quota})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	q, err := queue.Open(queue.Options{
		DB: store.DB(), Dir: filepath.Join(dir, "queue"),
		Deliver: func(context.Context, string, string, []string, func() (io.ReadCloser, error)) []queue.Result {
			return nil
		},
		Bounce: func(*queue.Item, []queue.Rcpt) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := push.Open(push.Options{DB: store.DB(), DropToken: func(string, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.CreateAccount(alice, "long-enough-password", mailbox.Generated); err != nil {
		t.Fatal(err)
	}
	acc, err := store.Lookup(alice)
	if err != nil {
		t.Fatal(err)
	}
	bg := rungroup.New()
	t.Cleanup(func() { bg.Stop() })
	rt := New(Options{Store: store, Queue: q, Push: p, Quota: quota, Lifecycle: mailbox.DefaultLifecycle(), Background: bg.Go})
	return &fixture{rt: rt, store: store, queue: q, push: p, alice: acc}
}

func pass(r io.Reader, w io.Writer) *policy.Reply {
	if _, err := io.Copy(w, r); err != nil {
		return policy.ErrWriteFailed
	}
	return nil
}

func (f *fixture) queued(t *testing.T) []queue.Item {
	t.Helper()
	items, err := f.queue.List()
	if err != nil {
		t.Fatal(err)
	}
	return items
}

func (f *fixture) used(t *testing.T) int64 {
	t.Helper()
	used, _, err := f.store.Quota(alice)
	if err != nil {
		t.Fatal(err)
	}
	return used
}

func TestRouteDeliversLocalAndQueuesRemote(t *testing.T) {
	f := newFixture(t, 0)
	if err := f.store.AddPushToken(alice, "phone"); err != nil {
		t.Fatal(err)
	}
	msg := "From: x\r\n\r\nhello\r\n"
	err := f.rt.Route(strings.NewReader(msg), Envelope{
		From: "bobbobbob@b.test", Local: []*mailbox.Account{f.alice}, Remote: []string{"carol@c.test"},
		MailboxFull: policy.ErrMailboxFull,
	}, pass)
	if err != nil {
		t.Fatal(err)
	}
	items := f.queued(t)
	if len(items) != 1 || len(items[0].Rcpts) != 1 || items[0].Rcpts[0].Addr != "carol@c.test" || items[0].Size != int64(len(msg)) {
		t.Fatalf("queued %+v, want the message for carol", items)
	}
	if got := f.used(t); got != int64(len(msg)) {
		t.Fatalf("alice holds %d bytes, want %d", got, len(msg))
	}
	if n := f.push.Pending(); n != 1 {
		t.Fatalf("%d push notifications queued, want 1", n)
	}
}

// A user's own copy wakes no phone.
func TestRouteOwnCopyWakesNobody(t *testing.T) {
	f := newFixture(t, 0)
	f.store.AddPushToken(alice, "phone")
	err := f.rt.Route(strings.NewReader("x\r\n"), Envelope{From: alice, Local: []*mailbox.Account{f.alice}}, pass)
	if err != nil {
		t.Fatal(err)
	}
	if n := f.push.Pending(); n != 0 {
		t.Fatalf("%d push notifications for the sender's own copy", n)
	}
}

// A local recipient without room refuses the whole message before
// anything is queued for remote recipients.
func TestRouteFullMailboxSendsNothingAnywhere(t *testing.T) {
	f := newFixture(t, 1000)
	for _, full := range []*policy.Reply{policy.ErrMailboxFull, policy.ErrMailboxFullTemp} {
		err := f.rt.Route(bytes.NewReader(bytes.Repeat([]byte("x"), 2000)), Envelope{
			From: alice, Local: []*mailbox.Account{f.alice}, Remote: []string{"carol@c.test"},
			MailboxFull: full,
		}, pass)
		if !errors.Is(err, full) {
			t.Fatalf("got %v, want %v", err, full)
		}
	}
	if items := f.queued(t); len(items) != 0 {
		t.Fatalf("%d messages queued for remote recipients after a full mailbox", len(items))
	}
	if got := f.used(t); got != 0 {
		t.Fatalf("alice holds %d bytes", got)
	}
}

func TestRouteRefusalAndReadErrorStoreNothing(t *testing.T) {
	f := newFixture(t, 0)
	env := Envelope{From: alice, Local: []*mailbox.Account{f.alice}, Remote: []string{"carol@c.test"}}
	refuse := func(r io.Reader, w io.Writer) *policy.Reply { return policy.ErrEncryptionNeeded }
	if err := f.rt.Route(strings.NewReader("x"), env, refuse); !errors.Is(err, policy.ErrEncryptionNeeded) {
		t.Fatalf("refusal: got %v", err)
	}
	cut := errors.New("connection lost")
	if err := f.rt.Route(io.MultiReader(strings.NewReader("x"), errReader{cut}), env, pass); !errors.Is(err, cut) {
		t.Fatalf("read error: got %v, want it passed on", err)
	}
	if items := f.queued(t); len(items) != 0 {
		t.Fatalf("%d queued after refusals", len(items))
	}
	if got := f.used(t); got != 0 {
		t.Fatalf("alice holds %d bytes after refusals", got)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
