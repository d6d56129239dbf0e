// Package router is the one path a message takes once a protocol has
// accepted its envelope. Submission (465, 587, 443 by ALPN), inbound port
// 25 and /mxdeliv all hand their messages to Route, which
//
//  1. reads the message through a policy check into the store (refusals
//     and read errors discard it),
//  2. checks that every local recipient has room (a full mailbox refuses
//     the whole message, so nothing goes anywhere and a retry duplicates
//     nothing),
//  3. queues the copy for remote recipients (relay/queue: spool file and
//     index entry durable before it returns),
//  4. delivers the local copies (mailbox: file, directories and index
//     durable; live mailbox views and IDLE hear of it),
//  5. queues push notifications for recipients other than the sender,
//  6. trims mailboxes the delivery took past the quota's high mark, in
//     the background.
//
// Route returns nil only when every copy is durable; then the caller says
// 250. A refusal is a *policy.Reply; other errors are the caller's to
// turn into a temporary failure.
package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
	"github.com/chatrelay/chatrelay/relay/metrics"
	"github.com/chatrelay/chatrelay/relay/push"
	"github.com/chatrelay/chatrelay/relay/queue"
)

// Options are what a Router needs; all but Queue (no remote delivery)
// and Metrics are required.
type Options struct {
	Store *mailbox.Store
	Queue *queue.Queue
	Push  *push.Notifier
	// Metrics counts deliveries and refusals; nil counts nothing.
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// Quota is the bytes an account may hold (0: no quota); Lifecycle's
	// QuotaHigh is the mark past which a delivery trims the mailbox.
	Quota     int64
	Lifecycle mailbox.Lifecycle
	// Background runs a quota trim; it returns false when its owner has
	// stopped and runs nothing then.
	Background func(name string, task func(context.Context) error) bool
}

// Router takes accepted messages to their recipients. It is safe for
// concurrent use.
type Router struct {
	opts     Options
	trimming sync.Map // addr -> true while a quota trim runs
}

// New returns a Router.
func New(opts Options) *Router {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Router{opts: opts}
}

// Envelope is who a message goes to and how refusals read.
type Envelope struct {
	// From is the envelope sender ("" for none): a user's own copies
	// wake nobody's phone.
	From string
	// Local are this relay's accounts, Remote the addresses elsewhere.
	Local  []*mailbox.Account
	Remote []string
	// MailboxFull answers when a local recipient has no room: final for
	// a client (552), temporary for another server, which keeps the
	// message and tries again (452).
	MailboxFull *policy.Reply
	// Path labels the delivery in the metrics ("local" for submission,
	// "in" for other servers).
	Path string
}

// Route reads the message from r through check and takes it to every
// recipient of env. It returns nil only when every copy is durable; on any
// other result no recipient has the message.
func (rt *Router) Route(r io.Reader, env Envelope, check func(io.Reader, io.Writer) *policy.Reply) error {
	start := time.Now()
	in, err := rt.filter(r, check)
	if err != nil {
		return err
	}
	// A no-op once Deliver has consumed it.
	defer in.Abort()
	if err := rt.checkQuota(in, env.Local, env.MailboxFull); err != nil {
		return err
	}
	if len(env.Remote) > 0 {
		if rt.opts.Queue == nil {
			return policy.ErrTempFailure
		}
		f, err := in.Open()
		if err != nil {
			return policy.ErrTempFailure
		}
		_, err = rt.opts.Queue.Put(env.From, env.Remote, f)
		f.Close()
		if err != nil {
			rt.opts.Logger.Error("queue message", "err", err)
			return policy.ErrTempFailure
		}
	}
	if len(env.Local) == 0 {
		return nil
	}
	ds, err := in.Deliver(env.Local, "INBOX")
	if err != nil {
		rt.opts.Logger.Error("deliver", "err", err)
		return policy.ErrTempFailure
	}
	rt.Notify(env.Local, env.From)
	rt.trim(ds)
	rt.opts.Metrics.Delivered(env.Path, time.Since(start))
	return nil
}

// filter runs a message through a policy check into a new Incoming. On
// refusal or a read error the Incoming is already discarded.
func (rt *Router) filter(r io.Reader, check func(io.Reader, io.Writer) *policy.Reply) (*mailbox.Incoming, error) {
	in, err := rt.opts.Store.NewIncoming()
	if err != nil {
		rt.opts.Logger.Error("start message", "err", err)
		return nil, policy.ErrTempFailure
	}
	rr := &ReadErr{R: r}
	reply := check(rr, in)
	io.Copy(io.Discard, rr)
	if rr.Err != nil {
		in.Abort()
		return nil, ReadFailure(rr.Err)
	}
	if reply != nil {
		in.Abort()
		rt.opts.Metrics.Refused(fmt.Sprintf("%d %s", reply.Code, reply.EnhancedCode()))
		rt.opts.Logger.Info("message refused", "code", reply.Code, "reason", reply.Reason())
		return nil, reply
	}
	return in, nil
}

// checkQuota answers full unless every recipient has room for the
// message.
func (rt *Router) checkQuota(in *mailbox.Incoming, rcpts []*mailbox.Account, full *policy.Reply) error {
	for _, a := range rcpts {
		if ok, err := rt.opts.Store.QuotaFits(a.Addr, in.Size()); err != nil {
			return policy.ErrTempFailure
		} else if !ok {
			return full
		}
	}
	return nil
}

// Notify queues push notifications for recipients of a new message from
// someone else (SPEC section 7); a user's own copies wake nobody.
func (rt *Router) Notify(rcpts []*mailbox.Account, from string) {
	for _, a := range rcpts {
		if strings.EqualFold(a.Addr, from) {
			continue
		}
		tokens, err := rt.opts.Store.PushTokens(a.Addr)
		if err != nil || len(tokens) == 0 {
			continue
		}
		if err := rt.opts.Push.Notify(a.Addr, tokens); err != nil {
			rt.opts.Logger.Warn("queue push notification", "err", err)
		}
	}
}

// trim trims recipients a delivery took past the quota's high mark, in
// the background and once at a time per account.
func (rt *Router) trim(ds []mailbox.Delivery) {
	lc, quota := rt.opts.Lifecycle, rt.opts.Quota
	for _, d := range ds {
		addr := d.Account.Addr
		if quota <= 0 || float64(d.Used) <= lc.QuotaHigh*float64(quota) {
			continue
		}
		if _, busy := rt.trimming.LoadOrStore(addr, true); busy {
			continue
		}
		started := rt.opts.Background("quota trim", func(context.Context) error {
			defer rt.trimming.Delete(addr)
			if _, _, err := rt.opts.Store.TrimQuota(addr, lc); err != nil {
				rt.opts.Logger.Warn("quota trim", "err", err)
			}
			return nil
		})
		if !started {
			rt.trimming.Delete(addr)
		}
	}
}

// ReadErr remembers the first read error, so that a message cut short (too
// big, connection lost) is reported as such rather than as a policy
// refusal.
type ReadErr struct {
	R   io.Reader
	Err error
}

func (e *ReadErr) Read(p []byte) (int, error) {
	n, err := e.R.Read(p)
	if err != nil && err != io.EOF && e.Err == nil {
		e.Err = err
	}
	return n, err
}

// ReadFailure is the reply for a message that could not be read whole:
// too big (SMTP's limit or /mxdeliv's), a line too long, or else the
// read error itself.
func ReadFailure(err error) error {
	var tooBig *http.MaxBytesError
	if errors.Is(err, smtp.ErrDataTooLarge) || errors.As(err, &tooBig) {
		return policy.ErrTooBig
	}
	if errors.Is(err, smtp.ErrTooLongLine) {
		// RFC 5321 section 4.5.3.1.6; go-smtp closes the connection after.
		return policy.ErrCommandLineTooLong
	}
	return err
}
