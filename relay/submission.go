package relay

import (
	"errors"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
	"github.com/chatrelay/chatrelay/relay/router"
)

func (s *Server) buildSMTP() {
	common := func(srv *smtp.Server) {
		srv.Domain = s.cfg.Hostname()
		srv.MaxMessageBytes = s.cfg.MaxMessageSize
		srv.MaxRecipients = s.cfg.MaxRecipients
		srv.MaxLineLength = 4096
		srv.ReadTimeout = 5 * time.Minute
		srv.WriteTimeout = 5 * time.Minute
		srv.ErrorLog = stdLogger(s.log, "smtp")
	}
	s.submission = newSMTPService(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &submissionSession{s: s, conn: c}, nil
	}), s.clientTLS(), common)
	s.inbound = newSMTPService(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &inboundSession{s: s, conn: c}, nil
	}), s.serverTLS(), common)
}

// isLocal tells whether an address belongs to this relay's domain.
func (s *Server) isLocal(addr string) bool {
	_, domain, err := policy.SplitAddress(addr)
	return err == nil && strings.EqualFold(domain, s.cfg.MailDomain())
}

// submissionSession is one authenticated client sending mail (465, 587,
// 443 by ALPN). AUTH before TLS is refused (by go-smtp before STARTTLS,
// see smtpfront.go, and here again), and go-smtp refuses MAIL before AUTH
// once an AuthSession is offered.
type submissionSession struct {
	s      *Server
	conn   *smtp.Conn
	acc    *mailbox.Account
	from   string
	local  []*mailbox.Account
	remote []string
	// refusal, once set, answers every RCPT of this transaction: the
	// sender checks are given per recipient, as the reference relay's
	// Postfix does (SPEC section 5). rated: the rate was charged.
	refusal *smtp.SMTPError
	rated   bool
}

func (ss *submissionSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (ss *submissionSession) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	if _, ok := connTLS(ss.conn); !ok {
		return nil, errTLSRequired
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if identity != "" && !strings.EqualFold(identity, username) {
			return smtp.ErrAuthFailed
		}
		acc, err := ss.s.auth.login(ss.conn.Conn().LocalAddr(), ss.conn.Conn().RemoteAddr(), username, password, "smtp")
		var rule *ruleRefusal
		if errors.Is(err, mailbox.ErrUnavailable) {
			return errAuthTemp
		} else if errors.As(err, &rule) {
			return smtpReply(policy.AuthRefused(rule.ClientText()))
		} else if err != nil {
			return smtp.ErrAuthFailed
		}
		ss.acc = acc
		ss.s.limits.proved(ss.conn.Conn().LocalAddr(), ss.conn.Conn().RemoteAddr())
		return nil
	}), nil
}

func (ss *submissionSession) Mail(from string, opts *smtp.MailOptions) error {
	if ss.acc == nil {
		return smtp.ErrAuthRequired
	}
	if opts != nil && opts.Size > ss.s.cfg.MaxMessageSize {
		return smtpReply(policy.ErrTooBig)
	}
	ss.from = ss.acc.Addr
	if !strings.EqualFold(from, ss.acc.Addr) {
		ss.refusal = smtpReply(policy.ErrSenderMismatch)
	}
	return nil
}

func (ss *submissionSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if ss.refusal == nil && !ss.rated {
		// Charged once per message, at its first recipient.
		ss.rated = true
		if !ss.s.rate.Allow(ss.acc.Addr, ss.s.now()) {
			ss.refusal = smtpReply(policy.TooMuchMail(ss.acc.Addr))
		}
	}
	if ss.refusal != nil {
		return ss.refusal
	}
	if _, _, err := policy.SplitAddress(to); err != nil {
		return errBadAddress
	}
	if !ss.s.isLocal(to) {
		ss.remote = append(ss.remote, strings.ToLower(to))
		return nil
	}
	acc, err := ss.s.store.Lookup(to)
	if errors.Is(err, mailbox.ErrNoAccount) {
		return smtpReply(policy.ErrNoSuchUser)
	} else if err != nil {
		return errTempFailure
	}
	ss.local = append(ss.local, acc)
	return nil
}

func (ss *submissionSession) Data(r io.Reader) error {
	env := policy.Envelope{From: ss.from, To: ss.remote}
	for _, a := range ss.local {
		env.To = append(env.To, a.Addr)
	}
	err := ss.s.router.Route(progressDeadline(ss.conn, r), router.Envelope{
		From: ss.from, Local: ss.local, Remote: ss.remote,
		MailboxFull: policy.ErrMailboxFull, Path: "local",
	}, func(r io.Reader, w io.Writer) *policy.Reply {
		return policy.Outgoing(env, r, w)
	})
	return smtpErr(err)
}

func (ss *submissionSession) Reset() {
	ss.from, ss.local, ss.remote = "", nil, nil
	ss.refusal, ss.rated = nil, false
}

func (ss *submissionSession) Logout() error { return nil }

// progressDeadline renews the read deadline as DATA arrives. go-smtp sets
// it once per command line, so a 30 MiB message from a phone on a slow link
// would otherwise have to arrive whole within one ReadTimeout; a client
// that stops sending still times out.
func progressDeadline(c *smtp.Conn, r io.Reader) io.Reader {
	return &deadlineReader{r: r, conn: c.Conn(), timeout: c.Server().ReadTimeout}
}

type deadlineReader struct {
	r       io.Reader
	conn    net.Conn
	timeout time.Duration
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.timeout > 0 {
		d.conn.SetReadDeadline(time.Now().Add(d.timeout))
	}
	// go-smtp's DATA reader fills p line by line from the network before
	// returning: small reads keep each one within a deadline.
	return d.r.Read(p[:min(len(p), 1024)])
}
