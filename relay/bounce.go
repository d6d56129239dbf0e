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
	s.router.Notify([]*mailbox.Account{acc}, "")
	return nil
}

// buildDSN writes the bounce. Its text is ours alone: a remote server
// refusing the message (over SMTP or /mxdeliv) chooses its reply text,
// and copied into a bounce that text would be cleartext delivered into a
// local mailbox, past the encrypted-only rule, by anyone who runs a
// server and gets mail addressed to it. The bounce carries the reply code
// and enhanced status code only (queue.Rcpt.Reply), and never a host name
// a remote domain chose.
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
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Your message could not be delivered to:\r\n\r\n")
	for _, r := range failed {
		fmt.Fprintf(&b, "  %s: %s\r\n", dsnAddr(r.Addr), dsnReason(r))
	}
	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: message/delivery-status\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Reporting-MTA: dns; %s\r\nArrival-Date: %s\r\n", strings.Trim(domain, "[]"),
		item.Created.UTC().Format("Mon, 02 Jan 2006 15:04:05 -0000"))
	for _, r := range failed {
		code, status := dsnCodes(r.Reply)
		fmt.Fprintf(&b, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\n", dsnAddr(r.Addr), status)
		if code != "" {
			// RFC 3464 section 2.3.6, with the code alone.
			fmt.Fprintf(&b, "Diagnostic-Code: smtp; %s\r\n", r.Reply)
		}
	}
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}

// dsnCodes splits a queue.Rcpt.Reply ("550 5.1.1") into the reply code
// and the DSN status, checking both: "" and "5.0.0" when there is none.
func dsnCodes(reply string) (code, status string) {
	status = "5.0.0"
	c, ec, _ := strings.Cut(reply, " ")
	if len(c) != 3 || c[0] < '2' || c[0] > '5' || strings.Trim(c, "0123456789") != "" {
		return "", status
	}
	if parts := strings.Split(ec, "."); len(parts) == 3 && parts[0] == c[:1] && len(ec) <= 11 &&
		strings.Trim(strings.Join(parts, ""), "0123456789") == "" && parts[1] != "" && parts[2] != "" {
		status = ec
	}
	return c, status
}

// dsnReason is the bounce's line for a failed recipient: our wording,
// with the remote's reply code at most.
func dsnReason(r queue.Rcpt) string {
	code, status := dsnCodes(r.Reply)
	switch {
	case code != "" && status != "5.0.0":
		return "refused by the recipient's mail server (" + code + " " + status + ")"
	case code != "":
		return "refused by the recipient's mail server (" + code + ")"
	case strings.HasPrefix(r.LastError, "gave up after"):
		return "no delivery was possible within the retry period"
	}
	return "delivery failed"
}

// dsnAddr is a recipient as the bounce shows it: printable ASCII (an
// internationalised address is shown escaped), at most 256 characters.
func dsnAddr(a string) string {
	var b strings.Builder
	for _, c := range []byte(a) {
		if c > ' ' && c < 0x7f {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "\\x%02x", c)
		}
		if b.Len() >= 256 {
			break
		}
	}
	return b.String()
}
