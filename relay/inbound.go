package relay

import (
	"errors"
	"io"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
)

// inboundSession is another server delivering to our users on port 25. It
// never authenticates and never relays: every recipient must be a local
// account.
type inboundSession struct {
	s     *Server
	conn  *smtp.Conn
	from  string
	local []*mailbox.Account
}

func (is *inboundSession) Mail(from string, opts *smtp.MailOptions) error {
	if opts != nil && opts.Size > is.s.cfg.MaxMessageSize {
		return smtpReply(policy.ErrTooBig)
	}
	is.from = strings.ToLower(from)
	return nil
}

func (is *inboundSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if _, _, err := policy.SplitAddress(to); err != nil {
		return errBadAddress
	}
	if !is.s.isLocal(to) {
		return errNoRelay
	}
	acc, err := is.s.store.Lookup(to)
	if errors.Is(err, mailbox.ErrNoAccount) {
		return smtpReply(policy.ErrNoSuchUser)
	} else if err != nil {
		return errTempFailure
	}
	is.local = append(is.local, acc)
	return nil
}

func (is *inboundSession) Data(r io.Reader) error {
	env := policy.Envelope{From: is.from}
	for _, a := range is.local {
		env.To = append(env.To, a.Addr)
	}
	return is.s.deliverLocal(r, is.local, func(r io.Reader, w io.Writer) *policy.Reply {
		_, reply := policy.Incoming(env, r, w)
		return reply
	})
}

func (is *inboundSession) Reset() { is.from, is.local = "", nil }

func (is *inboundSession) Logout() error { return nil }
