package policy

// The relay's own SMTP replies that are not about a message's content:
// envelope, session and server state. They stand beside the message
// refusals in policy.go so that every text a sending server or client
// sees is in this package.
var (
	// ErrTempFailure: the server could not do its part (the store, the
	// queue); nothing was accepted and the client may try again.
	ErrTempFailure = newReply(451, 4, 3, 0, "Temporary server error, try again later")

	// ErrRelayDenied: port 25 and /mxdeliv take mail for this relay's
	// domain only. 5.7.1: delivery not authorized (RFC 3463 3.8).
	ErrRelayDenied = newReply(550, 5, 7, 1, "Relaying denied")

	// ErrBadRcptSyntax: a recipient that is not an address. 5.1.3: bad
	// destination mailbox address syntax (RFC 3463 3.2).
	ErrBadRcptSyntax = newReply(501, 5, 1, 3, "Bad address syntax")

	// ErrAuthTemp: a login that could not be decided now (the machine
	// is starved, the store is busy). RFC 4954 section 6.
	ErrAuthTemp = newReply(454, 4, 7, 0, "Temporary authentication failure, try again later")

	// ErrMailboxFull: a local recipient of a submitted message has no
	// room for it; nobody gets the message. 5.2.2: mailbox full (RFC
	// 3463 3.3).
	ErrMailboxFull = newReply(552, 5, 2, 2, "Mailbox full")

	// ErrMailboxFullTemp: the same for mail from another server, which
	// keeps it and tries again while the recipient makes room.
	ErrMailboxFullTemp = newReply(452, 4, 2, 2, "Mailbox full, try again later")

	// ErrCommandLineTooLong: a line of the SMTP dialogue (DATA included)
	// longer than the server reads. RFC 5321 section 4.5.3.1.6.
	ErrCommandLineTooLong = newReply(500, 5, 5, 6, "Line too long")

	// ErrDKIMTemp: a sender's DKIM key could not be looked up now.
	// 4.7.5: cryptographic failure (RFC 3463 3.8, RFC 6376 6.1.2).
	ErrDKIMTemp = newReply(451, 4, 7, 5, "DKIM key lookup failed, try again later")

	// ErrIPMismatch: a sender whose From: is an address literal
	// connected from another address.
	ErrIPMismatch = newReply(554, 5, 7, 1, "Sender address literal does not match the connecting address")

	// ErrTLSRequired: MAIL before STARTTLS on port 25. RFC 3207 section 4.
	ErrTLSRequired = newReply(530, 5, 7, 0, "Must issue a STARTTLS command first")

	// ErrNoRecipients: DATA without a recipient accepted.
	ErrNoRecipients = newReply(554, 5, 5, 1, "No valid recipients")

	// ErrBadRecipientCount: an /mxdeliv request with no X-MAIL-TO, or
	// more than the recipient limit.
	ErrBadRecipientCount = newReply(554, 5, 5, 1, "Bad recipient count")
)

// AuthRefused is a failed login that breaks a public account rule
// (name or password length, ...), whose text the client may show.
// 5.7.8: authentication credentials invalid (RFC 4954 section 6).
func AuthRefused(text string) *Reply {
	return newReply(535, 5, 7, 8, text)
}
