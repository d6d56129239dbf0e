package imapext

import (
	"bufio"
	"slices"

	"github.com/emersion/go-imap/v2"
)

// id is RFC 2971 section 3.1:
//
//	ID SP ("(" *(string SP nstring) ")" / NIL)
//
// The client's values are parsed and ignored: they would be user data in
// logs.
func (l *layer) id(tag string, a *args) error {
	if !a.sp() {
		return errSyntax
	}
	if !a.nil() {
		ok := a.list(true, func() bool {
			if _, ok := a.str(); !ok || !a.sp() {
				return false
			}
			_, ok := a.nstring()
			return ok
		})
		if !ok {
			return errSyntax
		}
	}
	if !a.end() {
		return errSyntax
	}
	keys := make([]string, 0, len(l.opts.ID))
	for k := range l.opts.ID {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return l.reply(func(w *bufio.Writer) {
		w.WriteString("* ID ")
		if len(keys) == 0 {
			w.WriteString("NIL")
		} else {
			w.WriteByte('(')
			for i, k := range keys {
				if i > 0 {
					w.WriteByte(' ')
				}
				writeString(w, k)
				w.WriteByte(' ')
				writeString(w, l.opts.ID[k])
			}
			w.WriteByte(')')
		}
		w.WriteString("\r\n")
		writeStatus(w, tag, imap.StatusResponseTypeOK, "", "ID completed")
	})
}
