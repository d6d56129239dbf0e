package imapext

import (
	"bufio"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"
)

// validEntry checks an entry name (RFC 5464 section 3.2): it lives under
// /private or /shared, has no "*" or "%", no empty component, no trailing
// "/" and only printable ASCII. The bare roots are only allowed in
// GETMETADATA, where DEPTH can make them useful.
func validEntry(name string, allowRoot bool) bool {
	var rest string
	switch {
	case strings.HasPrefix(strings.ToLower(name), "/private"):
		rest = name[len("/private"):]
	case strings.HasPrefix(strings.ToLower(name), "/shared"):
		rest = name[len("/shared"):]
	default:
		return false
	}
	if rest == "" {
		return allowRoot
	}
	if rest[0] != '/' || strings.HasSuffix(rest, "/") || strings.Contains(rest, "//") {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= 0x20 || c >= 0x7f || c == '*' || c == '%' {
			return false
		}
	}
	return true
}

// getMetadata is RFC 5464 section 4.2:
//
//	GETMETADATA [SP options] SP mailbox SP (entry / "(" entry *(SP entry) ")")
//
// The options list is also accepted after the mailbox, where the RFC's own
// examples and most clients (go-imap's imapclient, too) put it.
func (l *layer) getMetadata(tag string, a *args) error {
	var opts GetMetadataOptions
	if !a.sp() {
		return errSyntax
	}
	sawOpts := false
	parseOpts := func() bool {
		sawOpts = true
		return a.list(false, func() bool {
			name, ok := a.atom()
			if !ok || !a.sp() {
				return false
			}
			switch strings.ToUpper(name) {
			case "MAXSIZE":
				n, ok := a.atom()
				v, err := strconv.ParseUint(n, 10, 32)
				if !ok || err != nil {
					return false
				}
				opts.MaxSize = int64(v)
				return true
			case "DEPTH":
				d, _ := a.atom()
				switch strings.ToLower(d) {
				case "0":
					opts.Depth = 0
				case "1":
					opts.Depth = 1
				case "infinity":
					opts.Depth = -1
				default:
					return false
				}
				return true
			}
			return false
		})
	}
	if a.peek() == '(' {
		if !parseOpts() || !a.sp() {
			return errSyntax
		}
	}
	mailbox, ok := a.mailbox()
	if !ok || !a.sp() {
		return errSyntax
	}
	if !sawOpts && a.peek() == '(' && a.i+1 < len(a.b) && a.b[a.i+1] != '/' && a.b[a.i+1] != '"' {
		if !parseOpts() || !a.sp() {
			return errSyntax
		}
	}
	var entries []string
	entry := func() bool {
		e, ok := a.astring()
		if ok {
			entries = append(entries, e)
		}
		return ok
	}
	if a.peek() == '(' {
		ok = a.list(false, entry)
	} else {
		ok = entry()
	}
	if !ok || !a.end() {
		return errSyntax
	}
	user := l.currentUser()
	if user == "" {
		return errNotAuthenticated
	}
	for _, e := range entries {
		if !validEntry(e, true) {
			return &imap.Error{Type: imap.StatusResponseTypeBad, Text: "Invalid entry name"}
		}
	}

	values, err := l.opts.Handler.GetMetadata(user, mailbox, entries, opts)
	if err != nil {
		return l.handlerError("GETMETADATA", err)
	}

	// Requested entries first, in the client's order, then the descendants
	// DEPTH brought in.
	order := make([]string, 0, len(values))
	for _, e := range entries {
		if _, ok := values[e]; ok && !slices.Contains(order, e) {
			order = append(order, e)
		}
	}
	var extra []string
	for e := range values {
		if !slices.Contains(order, e) {
			extra = append(extra, e)
		}
	}
	slices.Sort(extra)
	order = append(order, extra...)

	// RFC 5464 section 4.2.1: values over MAXSIZE are left out and the
	// largest of them is reported with LONGENTRIES.
	var longest int
	kept := order[:0]
	for _, e := range order {
		if v := values[e]; v != nil && opts.MaxSize > 0 && int64(len(*v)) > opts.MaxSize {
			longest = max(longest, len(*v))
			continue
		}
		kept = append(kept, e)
	}

	return l.reply(func(w *bufio.Writer) {
		if len(kept) > 0 {
			// RFC 5464 section 4.4.1.
			w.WriteString("* METADATA ")
			writeString(w, mailbox)
			w.WriteString(" (")
			for i, e := range kept {
				if i > 0 {
					w.WriteByte(' ')
				}
				writeString(w, e)
				w.WriteByte(' ')
				if v := values[e]; v == nil {
					w.WriteString("NIL")
				} else {
					writeString(w, *v)
				}
			}
			w.WriteString(")\r\n")
		}
		var code imap.ResponseCode
		if longest > 0 {
			code = imap.ResponseCode("METADATA LONGENTRIES " + strconv.Itoa(longest))
		}
		writeStatus(w, tag, imap.StatusResponseTypeOK, code, "Getmetadata completed")
	})
}

// setMetadata is RFC 5464 section 4.3:
//
//	SETMETADATA SP mailbox SP "(" entry SP value *(SP entry SP value) ")"
func (l *layer) setMetadata(tag string, a *args) error {
	if !a.sp() {
		return errSyntax
	}
	mailbox, ok := a.mailbox()
	if !ok || !a.sp() {
		return errSyntax
	}
	entries := make(map[string]*string)
	badName := false
	ok = a.looseList(func() bool {
		e, ok := a.astring()
		if !ok || !a.spaces() {
			return false
		}
		v, ok := a.nstring()
		if !ok {
			return false
		}
		badName = badName || !validEntry(e, false)
		entries[e] = v
		return true
	})
	if !ok || !a.end() {
		return errSyntax
	}
	user := l.currentUser()
	if user == "" {
		return errNotAuthenticated
	}
	if badName {
		return &imap.Error{Type: imap.StatusResponseTypeBad, Text: "Invalid entry name"}
	}
	maxValue := l.opts.maxMetadataSize()
	for _, v := range entries {
		if v != nil && len(*v) > maxValue {
			return errMetadataMaxSize(maxValue)
		}
	}
	if err := l.opts.Handler.SetMetadata(user, mailbox, entries); err != nil {
		return l.handlerError("SETMETADATA", err)
	}
	return l.replyOK(tag, "Setmetadata completed")
}

// handlerError turns a Handler's error into the tagged response: an
// *imap.Error as it is, anything else as a server bug, logged.
func (l *layer) handlerError(cmd string, err error) error {
	var ie *imap.Error
	if errors.As(err, &ie) {
		return ie
	}
	l.log.Error("imap: handler failed", slog.String("command", cmd), slog.Any("err", err))
	return errServerBug
}
