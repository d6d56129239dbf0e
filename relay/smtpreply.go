package relay

import (
	"errors"

	"github.com/emersion/go-smtp"

	"github.com/chatrelay/chatrelay/policy"
)

// The replies of policy's table as go-smtp writes them. Their texts are
// in policy (replies.go, policy.go), none here.
var (
	errTempFailure       = smtpReply(policy.ErrTempFailure)
	errNoRelay           = smtpReply(policy.ErrRelayDenied)
	errBadAddress        = smtpReply(policy.ErrBadRcptSyntax)
	errAuthTemp          = smtpReply(policy.ErrAuthTemp)
	errDKIMTemp          = smtpReply(policy.ErrDKIMTemp)
	errIPMismatch        = smtpReply(policy.ErrIPMismatch)
	errTLSRequired       = smtpReply(policy.ErrTLSRequired)
	errNoRecipients      = smtpReply(policy.ErrNoRecipients)
	errBadRecipientCount = smtpReply(policy.ErrBadRecipientCount)
)

// smtpReply turns a policy reply into the SMTP error go-smtp writes.
func smtpReply(r *policy.Reply) *smtp.SMTPError {
	if r.Colon {
		return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.NoEnhancedCode, Message: r.EnhancedCode() + ": " + r.Text}
	}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.EnhancedCode(r.Enhanced), Message: r.Text}
}

// smtpErr turns a policy reply in err (the router's refusals) into the
// SMTP error go-smtp writes; other errors pass unchanged.
func smtpErr(err error) error {
	var r *policy.Reply
	if errors.As(err, &r) {
		return smtpReply(r)
	}
	return err
}
