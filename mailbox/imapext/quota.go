package imapext

import (
	"bufio"
	"strconv"

	"github.com/emersion/go-imap/v2"
)

// The layer offers one quota root, "", holding all of a user's mailboxes,
// with the STORAGE resource only (RFC 9208 section 5.1).

// getQuotaRoot is RFC 9208 section 4.3.2: GETQUOTAROOT SP mailbox.
func (l *layer) getQuotaRoot(tag string, a *args) error {
	if !a.sp() {
		return errSyntax
	}
	mailbox, ok := a.mailbox()
	if !ok || !a.end() {
		return errSyntax
	}
	used, limit, err := l.quota("GETQUOTAROOT")
	if err != nil {
		return err
	}
	return l.reply(func(w *bufio.Writer) {
		w.WriteString("* QUOTAROOT ")
		writeString(w, mailbox)
		if limit > 0 {
			w.WriteString(` ""`)
		}
		w.WriteString("\r\n")
		if limit > 0 {
			writeQuota(w, used, limit)
		}
		writeStatus(w, tag, imap.StatusResponseTypeOK, "", "GETQUOTAROOT completed")
	})
}

// getQuota is RFC 9208 section 4.3.1: GETQUOTA SP quota-root.
func (l *layer) getQuota(tag string, a *args) error {
	if !a.sp() {
		return errSyntax
	}
	root, ok := a.astring()
	if !ok || !a.end() {
		return errSyntax
	}
	used, limit, err := l.quota("GETQUOTA")
	if err != nil {
		return err
	}
	if root != "" || limit <= 0 {
		return errNoSuchQuotaRoot
	}
	return l.reply(func(w *bufio.Writer) {
		writeQuota(w, used, limit)
		writeStatus(w, tag, imap.StatusResponseTypeOK, "", "GETQUOTA completed")
	})
}

// quota asks the Handler for the logged-in user's usage and limit.
func (l *layer) quota(cmd string) (used, limit int64, err error) {
	user := l.currentUser()
	if user == "" {
		return 0, 0, errNotAuthenticated
	}
	used, limit, err = l.opts.Handler.Quota(user)
	if err != nil {
		return 0, 0, l.handlerError(cmd, err)
	}
	return used, limit, nil
}

// writeQuota writes "* QUOTA "" (STORAGE used limit)" in units of 1024
// octets (RFC 9208 section 5.1); usage rounds up so that a nearly full
// account does not look empty.
func writeQuota(w *bufio.Writer, used, limit int64) {
	w.WriteString(`* QUOTA "" (STORAGE `)
	w.WriteString(strconv.FormatInt((max(used, 0)+1023)/1024, 10))
	w.WriteByte(' ')
	w.WriteString(strconv.FormatInt(limit/1024, 10))
	w.WriteString(")\r\n")
}
