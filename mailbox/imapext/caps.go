package imapext

import (
	"bytes"
	"strings"
)

// rewriteCaps fixes the capability list in a response line from imapserver:
// "* CAPABILITY ..." (RFC 9051 section 7.2.2) or a "[CAPABILITY ...]"
// response code in the greeting or a status response (section 7.1), such as
// the tagged OK of LOGIN and AUTHENTICATE. It appends the result to buf and
// returns it, or returns nil when line has no capability list.
func (l *layer) rewriteCaps(line, buf []byte) []byte {
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return nil
	}
	rest := line[sp+1:]
	var listStart, listEnd int // in line
	switch {
	case string(line[:sp]) == "*" && hasPrefixFold(rest, "CAPABILITY "):
		listStart = sp + 1 + len("CAPABILITY ")
		listEnd = len(line)
		for listEnd > listStart && (line[listEnd-1] == '\n' || line[listEnd-1] == '\r') {
			listEnd--
		}
	default:
		sp2 := bytes.IndexByte(rest, ' ')
		if sp2 < 0 || !hasPrefixFold(rest[sp2+1:], "[CAPABILITY ") {
			return nil
		}
		listStart = sp + 1 + sp2 + 1 + len("[CAPABILITY ")
		end := bytes.IndexByte(line[listStart:], ']')
		if end < 0 {
			return nil
		}
		listEnd = listStart + end
	}

	l.mu.Lock()
	authed := l.user != ""
	authOK := l.tls || l.opts.InsecureAuth
	startTLS := l.opts.TLSConfig != nil && !l.tls && !authed
	l.mu.Unlock()

	buf = append(buf, line[:listStart]...)
	first := true
	add := func(c string) {
		if !first {
			buf = append(buf, ' ')
		}
		buf = append(buf, c...)
		first = false
	}
	var have []string
	for _, c := range strings.Fields(string(line[listStart:listEnd])) {
		u := strings.ToUpper(c)
		switch {
		case u == "STARTTLS", u == "LOGINDISABLED":
			continue // the layer decides about these below
		case strings.HasPrefix(u, "AUTH=") && !authOK:
			continue
		}
		have = append(have, u)
		add(c)
	}
	if startTLS {
		add("STARTTLS")
	}
	if !authOK && !authed {
		// RFC 9051 section 6.2.3: LOGIN is disabled until TLS is on.
		add("LOGINDISABLED")
	}
	for _, c := range l.opts.ExtraCaps {
		u := strings.ToUpper(c)
		dup := false
		for _, h := range have {
			dup = dup || h == u
		}
		if !dup {
			add(c)
			have = append(have, u)
		}
	}
	return append(buf, line[listEnd:]...)
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && strings.EqualFold(string(b[:len(prefix)]), prefix)
}
