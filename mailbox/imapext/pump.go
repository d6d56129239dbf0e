package imapext

import (
	"bufio"
	"bytes"
	"io"
)

type respKind int

const (
	respUntagged respKind = iota
	respTagged
	respContinuation
)

// pump copies imapserver's responses to the client. It follows their framing
// (lines and literals) to find continuation requests and tagged responses,
// which complete passthrough commands, and fixes capability lists on the way.
// Lines longer than its buffer are streamed, not buffered.
func (l *layer) pump() (err error) {
	rb := bufio.NewReaderSize(l.inner, bufSize)
	var (
		carryBuf [32]byte
		carry    = carryBuf[:0] // tail of a long line, kept to find a literal header
		inLine   bool           // inside a line longer than rb's buffer
		inResp   bool           // inside a response, after a literal
		kind     respKind
		tagOK    bool
		locked   bool
		capsBuf  []byte
	)
	defer func() {
		if !locked {
			l.wmu.Lock()
		}
		l.flush()
		l.wmu.Unlock()
		l.mu.Lock()
		l.closed = true
		l.cond.Broadcast()
		l.mu.Unlock()
		l.closeClient()
	}()
	for {
		if rb.Buffered() == 0 {
			// Nothing more is waiting: send what we have before blocking.
			if !locked {
				l.wmu.Lock()
			}
			ferr := l.flush()
			if !locked {
				l.wmu.Unlock()
			}
			if ferr != nil {
				return ferr
			}
		}
		b, rerr := rb.ReadSlice('\n')
		if rerr != nil && rerr != bufio.ErrBufferFull {
			return rerr
		}
		complete := rerr == nil
		start := !inLine && !inResp
		if start {
			kind, tagOK = classify(b)
			if !locked {
				l.wmu.Lock()
				locked = true
			}
		}

		if !complete {
			k := min(len(b), 24)
			l.bw.Write(carry)
			l.bw.Write(b[:len(b)-k])
			carry = append(carryBuf[:0], b[len(b)-k:]...)
			inLine = true
			continue
		}

		last := b
		if inLine && len(b) < 24 {
			var tmp [64]byte
			last = append(append(tmp[:0], carry...), b...)
		}
		lit := parseLiteralHeader(last)

		switch {
		case start && kind == respContinuation:
			l.mu.Lock()
			hide := l.swallow
			l.swallow = false
			l.mu.Unlock()
			if !hide {
				l.bw.Write(b)
			}
		case start && !inLine:
			if capsBuf = l.rewriteCaps(b, capsBuf[:0]); capsBuf != nil {
				l.bw.Write(capsBuf)
			} else {
				l.bw.Write(b)
			}
			if cap(capsBuf) > 4096 {
				capsBuf = nil
			}
		default:
			l.bw.Write(carry)
			l.bw.Write(b)
		}
		carry = carry[:0]
		inLine = false

		if lit.size >= 0 {
			if _, err := io.CopyN(l.bw, rb, lit.size); err != nil {
				return err
			}
			inResp = true
			continue
		}
		inResp = false

		// The response is complete.
		l.mu.Lock()
		l.greeted = true
		switch kind {
		case respContinuation:
			l.conts++
		case respTagged:
			if len(l.pending) > 0 {
				if tagOK && l.pending[0].name == "UNAUTHENTICATE" {
					l.user = "" // RFC 8437
				}
				l.pending = l.pending[1:]
				if len(l.pending) == 0 {
					l.pending = nil
				}
			}
		}
		l.cond.Broadcast()
		l.mu.Unlock()
		l.wmu.Unlock()
		locked = false
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
