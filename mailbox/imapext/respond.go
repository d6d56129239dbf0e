package imapext

import (
	"bytes"
)

type respKind int

const (
	respUntagged respKind = iota
	respTagged
	respContinuation
)

// maxRespLine is the longest response line the framer buffers whole when it
// arrives in pieces; longer lines are streamed and their capability lists,
// if any, are left as they are.
const maxRespLine = bufSize

// respTail is how much of a streamed line the framer holds back to find a
// literal header at its end: "{", 18 digits, "+}", CRLF and a little slack.
const respTail = 24

// frameSink receives what respFramer finds in imapserver's responses.
type frameSink interface {
	// respStart is told the kind of each response as its first bytes
	// arrive, with those bytes (at most a line); the response is not sent
	// on when it returns true.
	respStart(kind respKind, first []byte) (hide bool)
	// firstLine gets the first line of a response when it is whole and at
	// most maxRespLine long (where capability lists are fixed).
	firstLine(b []byte)
	// out gets every other byte of a response that is not hidden.
	out(b []byte)
	// respEnd is told that a response is complete; tagOK says that a
	// tagged response is OK.
	respEnd(kind respKind, tagOK bool)
}

// respFramer follows the framing of imapserver's responses (lines and
// literals) as imapserver writes them, in whatever pieces, to find
// continuation requests and tagged responses. It is a push parser: it holds
// no goroutine and buffers only a line that arrives in pieces (up to
// maxRespLine, then respTail bytes of it).
type respFramer struct {
	part      []byte // the unsent start (or, streaming, the tail) of a line
	streaming bool   // the current line is longer than maxRespLine
	inResp    bool   // the current line continues a response after a literal
	hide      bool   // the current response is not sent on
	kind      respKind
	tagOK     bool
	litLeft   int64 // literal bytes still to come
}

// atBoundary reports whether everything fed so far completes responses.
func (f *respFramer) atBoundary() bool {
	return f.litLeft == 0 && !f.inResp && !f.streaming && len(f.part) == 0
}

func (f *respFramer) emit(s frameSink, b []byte) {
	if !f.hide && len(b) > 0 {
		s.out(b)
	}
}

// feed processes the next bytes imapserver wrote.
func (f *respFramer) feed(p []byte, s frameSink) {
	for len(p) > 0 {
		if f.litLeft > 0 {
			n := len(p)
			if int64(n) > f.litLeft {
				n = int(f.litLeft)
			}
			f.emit(s, p[:n])
			p = p[n:]
			f.litLeft -= int64(n)
			continue
		}
		chunk := p
		i := bytes.IndexByte(p, '\n')
		complete := i >= 0
		if complete {
			chunk = p[:i+1]
		}
		p = p[len(chunk):]

		if !f.streaming && !complete && len(f.part)+len(chunk) <= maxRespLine {
			f.part = append(f.part, chunk...)
			continue
		}
		start := !f.inResp && !f.streaming
		if start {
			probe := chunk
			if len(f.part) > 0 {
				probe = append(f.part, chunk[:min(len(chunk), maxRespLine)]...)
				f.part = probe[:len(f.part)]
			}
			f.kind, f.tagOK = classify(probe)
			f.hide = s.respStart(f.kind, probe)
		}

		if !complete {
			// A long line: send all but its tail, which may hold the start
			// of a literal header.
			if len(chunk) >= respTail {
				f.emit(s, f.part)
				f.emit(s, chunk[:len(chunk)-respTail])
				f.part = append(f.part[:0], chunk[len(chunk)-respTail:]...)
			} else {
				f.part = append(f.part, chunk...)
				k := len(f.part) - respTail
				if k > 0 {
					f.emit(s, f.part[:k])
					f.part = f.part[:copy(f.part, f.part[k:])]
				}
			}
			f.streaming = true
			continue
		}

		var lit literal
		if f.streaming {
			f.emit(s, f.part)
			f.emit(s, chunk)
			last := chunk
			if len(chunk) < respTail+8 {
				f.part = append(f.part, chunk...)
				last = f.part
			}
			lit = parseLiteralHeader(last)
			f.streaming = false
		} else {
			line := chunk
			if len(f.part) > 0 {
				f.part = append(f.part, chunk...)
				line = f.part
			}
			switch {
			case f.hide:
			case start && f.kind != respContinuation:
				s.firstLine(line)
			default:
				s.out(line)
			}
			lit = parseLiteralHeader(line)
		}
		if cap(f.part) > 512 {
			f.part = nil // an unusually long line
		} else {
			f.part = f.part[:0]
		}
		if lit.size >= 0 {
			f.litLeft = lit.size
			f.inResp = true
			continue
		}
		f.inResp = false
		f.hide = false
		s.respEnd(f.kind, f.tagOK)
	}
}

// classify looks at the start of a response: "+" continuation request,
// "*" untagged, or a tag.
func classify(b []byte) (kind respKind, ok bool) {
	if len(b) > 0 && b[0] == '+' {
		return respContinuation, false
	}
	sp := bytes.IndexByte(b, ' ')
	if sp < 0 {
		return respUntagged, false
	}
	if string(b[:sp]) == "*" {
		return respUntagged, false
	}
	return respTagged, bytes.HasPrefix(b[sp:], []byte(" OK"))
}
