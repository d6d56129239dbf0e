package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/mailbox"
)

// handleMXDeliv receives mail from another chatmail relay over HTTPS, the
// format those relays accept: POST, X-MAIL-FROM (absent for a null
// sender), one X-MAIL-TO per recipient, the raw message as body. The checks
// are port 25's. Answers: 200 "250 ..."; 413 "552 ..."; 400 with the SMTP
// reply; the whole message is accepted or refused for everyone.
func (s *Server) handleMXDeliv(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Federation.DisableMXDeliv {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "405 method not allowed", http.StatusMethodNotAllowed)
		return
	}
	from := strings.ToLower(strings.Trim(strings.TrimSpace(r.Header.Get("X-MAIL-FROM")), "<>"))
	tos := r.Header.Values("X-MAIL-TO")
	if len(tos) == 0 || len(tos) > s.cfg.MaxRecipients {
		mxdelivReply(w, errBadRecipientCount)
		return
	}
	var rcpts []*mailbox.Account
	for _, to := range tos {
		acc, err := s.inboundRecipient(strings.Trim(strings.TrimSpace(to), "<>"))
		if err != nil {
			mxdelivReply(w, err)
			return
		}
		rcpts = append(rcpts, acc)
	}
	var ip net.IP
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		ip = net.ParseIP(host)
	}
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxMessageSize)
	err := s.receive(ip, from, rcpts, body)
	io.Copy(io.Discard, body)
	mxdelivReply(w, err)
}

func mxdelivReply(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err == nil {
		io.WriteString(w, "250 2.0.0 OK\r\n")
		return
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		se = errTempFailure
	}
	status := http.StatusBadRequest
	if se.Code == 552 {
		status = http.StatusRequestEntityTooLarge
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %d.%d.%d %s\r\n", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
}
