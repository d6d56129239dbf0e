package relay

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/relay/dkim"
	"github.com/chatrelay/chatrelay/relay/queue"
)

// bounce tells a local sender that recipients failed for good: a delivery
// status notification (RFC 3464) from mailer-daemon, delivered to the
// sender's INBOX. Our senders are always local: submission only accepts
// local logins.
func (s *Server) bounce(item *queue.Item, failed []queue.Rcpt) error {
	if !s.isLocal(item.From) {
		s.log.Warn("bounce for a non-local sender dropped")
		return nil
	}
	acc, err := s.store.Lookup(item.From)
	if err != nil {
		// The sender's account is gone: nobody to tell.
		return nil
	}
	msg := s.buildDSN(item, failed)
	if s.cfg.IP == "" {
		sig, err := dkim.Signature(s.fed.key, s.cfg.Domain, s.cfg.Federation.DKIMSelector, bytes.NewReader(msg))
		if err != nil {
			return err
		}
		msg = append([]byte(sig), msg...)
	}
	in, err := s.store.NewIncoming()
	if err != nil {
		return err
	}
	if _, err := in.Write(msg); err != nil {
		in.Abort()
		return err
	}
	if _, err := in.Deliver([]*mailbox.Account{acc}, "INBOX"); err != nil {
		return err
	}
	s.notify([]*mailbox.Account{acc}, "")
	return nil
}

func (s *Server) buildDSN(item *queue.Item, failed []queue.Rcpt) []byte {
	var rnd [12]byte
	rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	boundary := "dsn-" + id
	domain := s.cfg.MailDomain()
	now := s.now().UTC().Format("Mon, 02 Jan 2006 15:04:05 -0000")
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Mail Delivery System <mailer-daemon@%s>\r\n", domain)
	fmt.Fprintf(&b, "To: <%s>\r\n", item.From)
	fmt.Fprintf(&b, "Subject: Undelivered Mail Returned to Sender\r\n")
	fmt.Fprintf(&b, "Date: %s\r\nMessage-ID: <%s@%s>\r\n", now, id, strings.Trim(domain, "[]"))
	fmt.Fprintf(&b, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Your message could not be delivered to:\r\n\r\n")
	for _, r := range failed {
		fmt.Fprintf(&b, "  %s: %s\r\n", r.Addr, oneLine(r.LastError))
	}
	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: message/delivery-status\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Reporting-MTA: dns; %s\r\nArrival-Date: %s\r\n", strings.Trim(domain, "[]"),
		item.Created.UTC().Format("Mon, 02 Jan 2006 15:04:05 -0000"))
	for _, r := range failed {
		fmt.Fprintf(&b, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: 5.0.0\r\nDiagnostic-Code: smtp; %s\r\n", r.Addr, oneLine(r.LastError))
	}
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 500 {
		s = s[:500]
	}
	if s == "" {
		s = "delivery failed"
	}
	return s
}
