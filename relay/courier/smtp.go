package courier

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/relay/queue"
)

// smtpDeliver sends the message to one host over SMTP with STARTTLS
// (RFC 3207). A non-nil error means the host could not be talked to
// (connect, greeting, EHLO, no STARTTLS, TLS or certificate failure) and
// nothing was sent: the caller tries the next host. Otherwise there is a
// result per recipient, from the server's replies.
func (c *Courier) smtpDeliver(ctx context.Context, t target, from string, rcpts []string, sig string, body func() (io.ReadCloser, error)) ([]queue.Result, error) {
	host := t.name
	if t.addr != "" {
		host = t.addr
	}
	conn, err := c.dial(ctx, host, t.smtpPort)
	if err != nil {
		return nil, fmt.Errorf("SMTP connect to %s: %w", t.name, err)
	}
	defer conn.Close()
	// go-smtp's client has no context; closing the connection ends
	// whatever it is waiting for.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	tlsConn, err := c.startTLS(ctx, conn, t)
	if err != nil {
		return nil, fmt.Errorf("SMTP to %s: %w", t.name, err)
	}
	sc := smtp.NewClient(&greetedConn{Conn: tlsConn, pending: []byte("220 TLS established\r\n")})
	sc.CommandTimeout = c.opts.CommandTimeout
	sc.SubmissionTimeout = c.opts.DataTimeout
	defer sc.Close()
	if err := sc.Hello(c.opts.HeloName); err != nil {
		return nil, fmt.Errorf("SMTP to %s: EHLO after STARTTLS: %w", t.name, err)
	}

	var mailOpts *smtp.MailOptions
	if !isASCII(from) || !all(rcpts, isASCII) {
		mailOpts = &smtp.MailOptions{UTF8: true} // RFC 6531
	}
	if err := sc.Mail(from, mailOpts); err != nil {
		return allFailed(rcpts, fmt.Errorf("%s: MAIL FROM: %w", t.name, err)), nil
	}
	results := make([]queue.Result, len(rcpts))
	var accepted []int
	for i, r := range rcpts {
		results[i].Rcpt = r
		err := sc.Rcpt(r, nil)
		if err == nil {
			accepted = append(accepted, i)
			continue
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			// The conversation broke: nobody has the message.
			return allFailed(rcpts, fmt.Errorf("%s: RCPT TO: %w", t.name, err)), nil
		}
		res := classify(fmt.Errorf("%s: RCPT TO: %w", t.name, err))
		results[i].Err, results[i].Permanent, results[i].Reply = res.Err, res.Permanent, res.Reply
	}
	if len(accepted) == 0 {
		sc.Quit()
		return results, nil
	}
	if err := c.smtpData(sc, sig, body); err != nil {
		res := classify(fmt.Errorf("%s: DATA: %w", t.name, err))
		for _, i := range accepted {
			results[i].Err, results[i].Permanent, results[i].Reply = res.Err, res.Permanent, res.Reply
		}
		return results, nil
	}
	sc.Quit()
	return results, nil
}

func (c *Courier) smtpData(sc *smtp.Client, sig string, body func() (io.ReadCloser, error)) error {
	w, err := sc.Data()
	if err != nil {
		return err
	}
	rc, err := body()
	if err != nil {
		w.Close()
		return fmt.Errorf("open message: %w", err)
	}
	defer rc.Close()
	if _, err := io.WriteString(w, sig); err != nil {
		return err
	}
	if _, err := io.Copy(w, rc); err != nil {
		return err
	}
	return w.Close()
}

// startTLS greets the server, says EHLO with our name and upgrades the
// connection with STARTTLS, which must be offered: we never send mail in
// the clear. It is done here rather than in go-smtp because its client
// offers STARTTLS only together with an EHLO as "localhost".
func (c *Courier) startTLS(ctx context.Context, conn net.Conn, t target) (*tls.Conn, error) {
	conn.SetDeadline(time.Now().Add(c.opts.CommandTimeout))
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("greeting: %w", replyErr(err))
	}
	ext, err := command(tp, 250, "EHLO %s", c.opts.HeloName)
	if err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if !hasExtension(ext, "STARTTLS") {
		return nil, errors.New("server does not offer STARTTLS")
	}
	if _, err := command(tp, 220, "STARTTLS"); err != nil {
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	if tp.R.Buffered() > 0 {
		// Anything sent before the handshake would be read as if it came
		// through TLS (the STARTTLS command injection of RFC 3207
		// section 5 and CVE-2011-0411's family).
		return nil, errors.New("server sent data after its STARTTLS reply")
	}
	cfg := &tls.Config{
		RootCAs:            c.opts.RootCAs,
		InsecureSkipVerify: t.insecure,
		MinVersion:         tls.VersionTLS12,
	}
	if _, err := netip.ParseAddr(t.name); err != nil {
		cfg.ServerName = t.name
	}
	tc := tls.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, c.opts.CommandTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	conn.SetDeadline(time.Time{})
	return tc, nil
}

// command sends one SMTP command and reads its reply.
func command(tp *textproto.Conn, want int, format string, args ...any) (string, error) {
	id, err := tp.Cmd(format, args...)
	if err != nil {
		return "", err
	}
	tp.StartResponse(id)
	defer tp.EndResponse(id)
	_, msg, err := tp.ReadResponse(want)
	return msg, replyErr(err)
}

// replyErr turns a textproto reply error into an *smtp.SMTPError.
func replyErr(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) {
		if se := parseReply(fmt.Sprintf("%03d %s", te.Code, te.Msg)); se != nil {
			return se
		}
		return &smtp.SMTPError{Code: te.Code, Message: te.Msg}
	}
	return err
}

// hasExtension looks for a keyword in an EHLO reply (RFC 5321 section
// 4.1.1.1): the lines after the first, one keyword each.
func hasExtension(ehlo, keyword string) bool {
	lines := strings.Split(ehlo, "\n")
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], keyword) {
			return true
		}
	}
	return false
}

// greetedConn hands go-smtp's client the greeting it insists on reading
// first; the real greeting was read before STARTTLS, and the server sends
// none after the handshake (RFC 3207 section 4.2).
type greetedConn struct {
	net.Conn
	pending []byte
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func all(ss []string, f func(string) bool) bool {
	for _, s := range ss {
		if !f(s) {
			return false
		}
	}
	return true
}
