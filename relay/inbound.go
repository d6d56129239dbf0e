package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
	"github.com/chatrelay/chatrelay/relay/dkim"
	"github.com/chatrelay/chatrelay/relay/router"
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
	if _, ok := connTLS(is.conn); !ok {
		// Mail between relays is never carried in the clear (SPEC
		// section 5): the sender must use STARTTLS, as ours does.
		return errTLSRequired
	}
	if opts != nil && opts.Size > is.s.cfg.MaxMessageSize {
		return smtpReply(policy.ErrTooBig)
	}
	is.from = strings.ToLower(from)
	// In a mail transaction: no longer evicted for a newcomer.
	is.s.limits.proved(is.conn.Conn().LocalAddr(), is.conn.Conn().RemoteAddr())
	return nil
}

func (is *inboundSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	acc, err := is.s.inboundRecipient(to)
	if err != nil {
		return err
	}
	is.local = append(is.local, acc)
	return nil
}

// inboundRecipient accepts only existing local accounts; inbound mail never
// creates one and never goes anywhere else.
func (s *Server) inboundRecipient(to string) (*mailbox.Account, error) {
	if _, _, err := policy.SplitAddress(to); err != nil {
		return nil, errBadAddress
	}
	if !s.isLocal(to) {
		return nil, errNoRelay
	}
	acc, err := s.store.Lookup(to)
	if errors.Is(err, mailbox.ErrNoAccount) {
		return nil, smtpReply(policy.ErrNoSuchUser)
	} else if err != nil {
		return nil, errTempFailure
	}
	return acc, nil
}

func (is *inboundSession) Data(r io.Reader) error {
	var ip net.IP
	if a, ok := is.conn.Conn().RemoteAddr().(*net.TCPAddr); ok {
		ip = a.IP
	}
	return is.s.receive(ip, is.from, is.local, progressDeadline(is.conn, r))
}

func (is *inboundSession) Reset() { is.from, is.local = "", nil }

func (is *inboundSession) Logout() error { return nil }

// receive is the one inbound path, for port 25 and /mxdeliv alike: spool
// the raw message, check its sender (DKIM aligned with From:, or for an
// address-literal sender the connecting IP), apply the incoming policy and
// header clean-up, and deliver. It returns nil only when the message is
// durable.
func (s *Server) receive(remote net.IP, envFrom string, rcpts []*mailbox.Account, r io.Reader) error {
	if len(rcpts) == 0 {
		return errNoRecipients
	}
	raw, err := s.store.NewIncoming()
	if err != nil {
		s.log.Error("start message", "err", err)
		return errTempFailure
	}
	defer raw.Abort()
	rr := &router.ReadErr{R: r}
	if _, err := io.Copy(raw, rr); err != nil {
		if rr.Err != nil {
			return smtpErr(router.ReadFailure(rr.Err))
		}
		s.log.Error("spool inbound message", "err", err)
		return errTempFailure
	}
	domain, err := s.checkSender(raw, remote)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			s.metrics.Refused(fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2]))
		}
		s.log.Info("inbound refused", "reason", err.Error())
		return err
	}
	in, err := raw.Open()
	if err != nil {
		return errTempFailure
	}
	defer in.Close()
	// The policy reads From: again, its own way, and refuses the message
	// unless it finds the domain verified here.
	env := policy.Envelope{From: envFrom, Authenticated: domain}
	for _, a := range rcpts {
		env.To = append(env.To, a.Addr)
	}
	err = s.router.Route(in, router.Envelope{
		From: envFrom, Local: rcpts, MailboxFull: policy.ErrMailboxFullTemp, Path: "in",
	}, func(r io.Reader, w io.Writer) *policy.Reply {
		_, reply := policy.Incoming(env, r, w)
		return reply
	})
	return smtpErr(err)
}

// checkSender authenticates the From: domain of a spooled message and
// returns it: DKIM aligned with it, or for an address literal the
// connecting address.
func (s *Server) checkSender(raw *mailbox.Incoming, remote net.IP) (string, error) {
	f, err := raw.Open()
	if err != nil {
		return "", errTempFailure
	}
	defer f.Close()
	from, err := headerFrom(f)
	if err != nil {
		return "", smtpReply(policy.ErrDKIM("no valid From header"))
	}
	_, domain, err := policy.SplitAddress(from)
	if err != nil {
		return "", smtpReply(policy.ErrDKIM("no valid From header"))
	}
	domain = strings.ToLower(domain)
	if strings.HasPrefix(domain, "[") {
		// An address literal carries no DKIM: the sender must connect
		// from that address.
		lit := strings.TrimPrefix(strings.Trim(domain, "[]"), "ipv6:")
		if ip := net.ParseIP(lit); ip == nil || remote == nil || !ip.Equal(remote) {
			return "", errIPMismatch
		}
		return domain, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", errTempFailure
	}
	if err := dkim.Verify(f, domain, s.dkimLookup); err != nil {
		if dkim.IsTemporary(err) {
			s.log.Warn("dkim lookup failed", "err", err)
			return "", errDKIMTemp
		}
		s.log.Info("inbound refused", "reason", err.Error())
		if errors.Is(err, dkim.ErrNoSignature) {
			return "", smtpReply(policy.ErrNoDKIMSignature)
		}
		return "", smtpReply(policy.ErrDKIM(err.Error()))
	}
	return domain, nil
}
