package load

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Submitter is one authenticated submission connection (implicit TLS)
// that sends many messages.
type Submitter struct {
	c    *smtp.Client
	conn net.Conn
	from string
}

// DialSubmit connects to a submission port with implicit TLS and logs in.
func DialSubmit(ctx context.Context, addr, user, pass string) (*Submitter, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 30 * time.Second}, Config: ClientTLS()}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	c := smtp.NewClient(conn)
	if err := c.Hello("bench.localhost"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("AUTH: %w", err)
	}
	return &Submitter{c: c, conn: conn, from: user}, nil
}

// Sent is when one message went: End is when the end of DATA was about to
// be written, Accepted when the 250 for it was read.
type Sent struct {
	End, Accepted time.Time
}

// Send submits msg to rcpt on the open connection.
func (s *Submitter) Send(rcpt string, msg []byte) (Sent, error) {
	s.conn.SetDeadline(time.Now().Add(60 * time.Second))
	if err := s.c.Mail(s.from, nil); err != nil {
		return Sent{}, fmt.Errorf("MAIL: %w", err)
	}
	if err := s.c.Rcpt(rcpt, nil); err != nil {
		return Sent{}, fmt.Errorf("RCPT: %w", err)
	}
	w, err := s.c.Data()
	if err != nil {
		return Sent{}, fmt.Errorf("DATA: %w", err)
	}
	// The message is written whole but for its last two bytes, so that the
	// timer starts when the end of data (CRLF.CRLF) is what remains.
	if len(msg) > 2 {
		if _, err := w.Write(msg[:len(msg)-2]); err != nil {
			return Sent{}, fmt.Errorf("DATA body: %w", err)
		}
		msg = msg[len(msg)-2:]
	}
	if _, err := w.Write(msg); err != nil {
		return Sent{}, fmt.Errorf("DATA body: %w", err)
	}
	var t Sent
	t.End = time.Now()
	if err := w.Close(); err != nil {
		return Sent{}, fmt.Errorf("end of DATA: %w", err)
	}
	t.Accepted = time.Now()
	return t, nil
}

// Close quits.
func (s *Submitter) Close() {
	s.conn.SetDeadline(time.Now().Add(5 * time.Second))
	s.c.Quit()
	s.c.Close()
}
