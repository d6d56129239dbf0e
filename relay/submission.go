package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/policy"
)

// smtpReply turns a policy refusal into the SMTP error go-smtp writes.
func smtpReply(r *policy.Reply) *smtp.SMTPError {
	if r.Colon {
		return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.NoEnhancedCode, Message: r.EnhancedCode() + ": " + r.Text}
	}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.EnhancedCode(r.Enhanced), Message: r.Text}
}

var (
	errTempFailure = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary server error, try again later"}
	errNoRelay     = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied"}
	errBadAddress  = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad address syntax"}
	errAuthTemp    = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure, try again later"}
	errMailbox     = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "Mailbox full"}
	errLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 6}, Message: "Line too long"}
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
	}), s.certs.TLSConfig(), common)
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
		acc, err := ss.s.auth.login(ss.conn.Conn().RemoteAddr(), username, password, "smtp")
		var rule *ruleRefusal
		if errors.Is(err, mailbox.ErrUnavailable) {
			return errAuthTemp
		} else if errors.As(err, &rule) {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: rule.ClientText()}
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
	r = progressDeadline(ss.conn, r)
	env := policy.Envelope{From: ss.from, To: ss.remote}
	for _, a := range ss.local {
		env.To = append(env.To, a.Addr)
	}
	start := time.Now()
	in, err := ss.s.filter(r, func(r io.Reader, w io.Writer) *policy.Reply {
		return policy.Outgoing(env, r, w)
	})
	if err != nil {
		return err
	}
	// Queue for other servers first: once the spool is durable the local
	// copies follow; a failure here leaves nothing half-sent.
	if len(ss.remote) > 0 {
		f, err := in.Open()
		if err != nil {
			in.Abort()
			return errTempFailure
		}
		_, err = ss.s.fed.queue.Put(ss.from, ss.remote, f)
		f.Close()
		if err != nil {
			in.Abort()
			ss.s.log.Error("queue message", "err", err)
			return errTempFailure
		}
	}
	if err := ss.s.storeLocal(in, ss.local, errMailbox, ss.from); err != nil {
		return err
	}
	if len(ss.local) > 0 {
		ss.s.metrics.Delivered("local", time.Since(start))
	}
	return nil
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

// readErr remembers the first read error, so that a message cut short (too
// big, connection lost) is reported as such rather than as a policy refusal.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// readFailure is the reply for a message that could not be read whole.
func readFailure(err error) error {
	var tooBig *http.MaxBytesError
	if errors.Is(err, smtp.ErrDataTooLarge) || errors.As(err, &tooBig) {
		return smtpReply(policy.ErrTooBig)
	}
	if errors.Is(err, smtp.ErrTooLongLine) {
		// RFC 5321 section 4.5.3.1.6; go-smtp closes the connection after.
		return errLineTooLong
	}
	return err
}

// filter runs a message through a policy check into a new Incoming. On
// refusal or a read error the Incoming is already discarded.
func (s *Server) filter(r io.Reader, check func(io.Reader, io.Writer) *policy.Reply) (*mailbox.Incoming, error) {
	in, err := s.store.NewIncoming()
	if err != nil {
		s.log.Error("start message", "err", err)
		return nil, errTempFailure
	}
	rr := &readErr{r: r}
	reply := check(rr, in)
	io.Copy(io.Discard, rr)
	if rr.err != nil {
		in.Abort()
		return nil, readFailure(rr.err)
	}
	if reply != nil {
		in.Abort()
		s.metrics.Refused(fmt.Sprintf("%d %s", reply.Code, reply.EnhancedCode()))
		s.log.Info("message refused", "code", reply.Code, "reason", reply.Reason())
		return nil, smtpReply(reply)
	}
	return in, nil
}

// deliverLocal runs the message through check into the store and delivers
// it to local accounts. It returns nil only when the message is durable.
// quotaErr is what a full mailbox answers.
func (s *Server) deliverLocal(r io.Reader, rcpts []*mailbox.Account, quotaErr error, from string, check func(io.Reader, io.Writer) *policy.Reply) error {
	start := time.Now()
	in, err := s.filter(r, check)
	if err != nil {
		return err
	}
	if err := s.storeLocal(in, rcpts, quotaErr, from); err != nil {
		return err
	}
	s.metrics.Delivered("in", time.Since(start))
	return nil
}

// storeLocal delivers a filtered message to local accounts, or drops it when
// there are none, and wakes the recipients' phones. The Incoming is
// consumed.
func (s *Server) storeLocal(in *mailbox.Incoming, rcpts []*mailbox.Account, quotaErr error, from string) error {
	if len(rcpts) == 0 {
		in.Abort()
		return nil
	}
	for _, a := range rcpts {
		if ok, err := s.store.QuotaFits(a.Addr, in.Size()); err != nil {
			in.Abort()
			return errTempFailure
		} else if !ok {
			in.Abort()
			return quotaErr
		}
	}
	ds, err := in.Deliver(rcpts, "INBOX")
	if err != nil {
		s.log.Error("deliver", "err", err)
		return errTempFailure
	}
	s.notify(rcpts, from)
	s.trimAfterDelivery(ds)
	return nil
}

// notify queues push notifications for recipients of a new message from
// someone else (SPEC section 7); a user's own copies wake nobody.
func (s *Server) notify(rcpts []*mailbox.Account, from string) {
	for _, a := range rcpts {
		if strings.EqualFold(a.Addr, from) {
			continue
		}
		tokens, err := s.store.PushTokens(a.Addr)
		if err != nil || len(tokens) == 0 {
			continue
		}
		if err := s.push.Notify(a.Addr, tokens); err != nil {
			s.log.Warn("queue push notification", "err", err)
		}
	}
}
