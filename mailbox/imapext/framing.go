package imapext

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// maxLine bounds one line of a client command (the text between two
// literals). RFC 7162 section 4 asks servers to accept at least 8192 octets.
// The layer's own commands may use all of it; a passthrough command is held
// to maxServerCommand.
const maxLine = 64 << 10

// The framing limits of imapserver (go-imap v2.0.0-beta.8). A command it
// would split where the layer does not, or join where the layer splits, is
// refused before imapserver sees it (see checkSegment).
const (
	// maxServerCommand is imapserver's maxCommandSize: its decoder reads at
	// most this many bytes outside literals for one command (a byte or two
	// more, by the way it counts), then fails, skips nothing and parses the
	// rest as the next command.
	maxServerCommand = 50 << 10
	// maxServerContLine bounds a line that answers a continuation request
	// of AUTHENTICATE or IDLE: imapserver reads it with ReadLine on its
	// 4096-byte bufio.Reader and takes the rest of a longer line as the
	// next command.
	maxServerContLine = 4096
)

// A framingError is a command imapserver would frame differently from the
// layer; its text is the reply.
type framingError struct{ text string }

func (e *framingError) Error() string { return "imapext: " + e.text }

var (
	errFramingSize   = &framingError{"Command line too long"}
	errFramingCR     = &framingError{"Syntax error: CR without LF"}
	errFramingQuote  = &framingError{"Syntax error: line ends inside a quoted string"}
	errFramingNumber = &framingError{"Syntax error: literal size has too many digits"}
)

// checkSegment checks one line of a passthrough command (up to its literal
// header, if any) against the way imapserver's decoder reads it, and adds
// the bytes the layer will send for it to *sent. imapserver reads a line up
// to LF like the layer, except:
//   - a CR not followed by LF ends the line for its error recovery
//     (DiscardLine), so the rest would be a new command;
//   - a quoted string runs on over LF (its Quoted reads any byte up to the
//     closing quote), so the next lines would be part of this command;
//   - a literal size of more than 18 digits may still fit its int64.
//
// None of these occur in a well-formed command (RFC 9051 section 9:
// quoted strings hold no CR or LF).
func checkSegment(line []byte, lit literal, sent *int) error {
	if lit.size == sizeUnparsed {
		return errFramingNumber
	}
	end := len(line) - 1 // the LF
	if end > 0 && line[end-1] == '\r' {
		end--
	}
	body := line[:end]
	if lit.size >= 0 {
		body = line[:lit.start]
		*sent += lit.start + len("{}\r\n") + len(appendInt(nil, lit.size))
	} else {
		*sent += len(line)
	}
	if *sent > maxServerCommand {
		return errFramingSize
	}
	if bytes.IndexByte(line[:end], '\r') >= 0 {
		return errFramingCR
	}
	quoted := false
	for i := 0; i < len(body); i++ {
		switch c := body[i]; {
		case !quoted:
			quoted = c == '"'
		case c == '\\':
			i++
		case c == '"':
			quoted = false
		}
	}
	if quoted {
		return errFramingQuote
	}
	return nil
}

var errLineTooLong = errors.New("imapext: command line too long")

// A literal describes the literal header ending a line: "{n}" (RFC 9051
// section 4.3), "{n+}" (RFC 7888) or "~{n}" (RFC 3516, the "~" stays in the
// text before it).
type literal struct {
	size    int64 // -1 when the line ends without a literal header, sizeUnparsed
	nonSync bool  // the client sends the data without waiting for "+"
	start   int   // offset of "{" in the line
}

// sizeUnparsed is the size of a literal header whose number has more digits
// than the layer reads; imapserver may still take it as a literal.
const sizeUnparsed = -2

// parseLiteralHeader finds a literal header at the end of line, which ends in
// LF. The line end is matched as leniently as imapserver's decoder does it
// (optional SP, optional CR, then LF) so that both agree on where literals
// begin.
func parseLiteralHeader(line []byte) literal {
	none := literal{size: -1}
	i := len(line)
	if i == 0 || line[i-1] != '\n' {
		return none
	}
	i--
	if i > 0 && line[i-1] == '\r' {
		i--
	}
	if i > 0 && line[i-1] == ' ' {
		i--
	}
	if i == 0 || line[i-1] != '}' {
		return none
	}
	i--
	nonSync := false
	if i > 0 && line[i-1] == '+' {
		nonSync = true
		i--
	}
	end := i
	for i > 0 && line[i-1] >= '0' && line[i-1] <= '9' {
		i--
	}
	if i == end || i == 0 || line[i-1] != '{' {
		return none
	}
	if end-i > 18 {
		return literal{size: sizeUnparsed} // 18 digits always fit an int64
	}
	var n int64
	for _, c := range line[i:end] {
		n = n*10 + int64(c-'0')
	}
	return literal{size: n, nonSync: nonSync, start: i - 1}
}

// syncHeader returns the literal header as a synchronizing one, which is what
// the layer always sends to imapserver (see passCommand).
func syncHeader(line []byte, lit literal, buf []byte) []byte {
	buf = append(buf[:0], line[:lit.start]...)
	buf = append(buf, '{')
	buf = appendInt(buf, lit.size)
	return append(buf, '}', '\r', '\n')
}

func appendInt(b []byte, n int64) []byte {
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}

// isAtomChar reports whether c is an ATOM-CHAR (RFC 9051 section 9).
func isAtomChar(c byte) bool {
	if c <= ' ' || c >= 0x7f {
		return false
	}
	switch c {
	case '(', ')', '{', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}

// parseCommandStart splits "tag SP name" off the first line of a command.
// The tag follows RFC 9051 ("+" is not allowed in it, which keeps
// continuation lines apart from commands); name is upper-cased. Anything
// imapserver would not parse the same way is refused here.
func parseCommandStart(line []byte) (tag, name string, ok bool) {
	i := 0
	for i < len(line) && isAtomChar(line[i]) && line[i] != '+' {
		i++
	}
	if i == 0 || i >= len(line) || line[i] != ' ' {
		return "", "", false
	}
	tag = string(line[:i])
	j := i + 1
	for j < len(line) && isAtomChar(line[j]) {
		j++
	}
	if j == i+1 || j >= len(line) {
		return "", "", false
	}
	switch line[j] {
	case ' ', '\r', '\n', '(':
	default:
		return "", "", false
	}
	return tag, strings.ToUpper(string(line[i+1 : j])), true
}

// commandReader splits the client's byte stream into lines and literals.
// It never holds more than one line (up to maxLine) plus, for the layer's own
// commands, their arguments.
type commandReader struct {
	br  *bufio.Reader
	buf []byte // accumulates a line longer than br's buffer
}

// readFragment reads one line, up to and including LF, and the literal header
// it ends with, if any. The returned slice is valid until the next call.
func (r *commandReader) readFragment() ([]byte, literal, error) {
	if cap(r.buf) > 8<<10 {
		r.buf = nil // give back the memory of an unusually long line
	}
	r.buf = r.buf[:0]
	for {
		b, err := r.br.ReadSlice('\n')
		switch err {
		case nil:
			line := b
			if len(r.buf) > 0 {
				if len(r.buf)+len(b) > maxLine {
					return nil, literal{}, errLineTooLong
				}
				r.buf = append(r.buf, b...)
				line = r.buf
			}
			return line, parseLiteralHeader(line), nil
		case bufio.ErrBufferFull:
			if len(r.buf)+len(b) > maxLine {
				return nil, literal{}, errLineTooLong
			}
			r.buf = append(r.buf, b...)
		default:
			if err == io.EOF && (len(b) > 0 || len(r.buf) > 0) {
				err = io.ErrUnexpectedEOF
			}
			return nil, literal{}, err
		}
	}
}

// readMore reads a line inside a command, where the end of input is
// unexpected.
func (r *commandReader) readMore() ([]byte, literal, error) {
	line, lit, err := r.readFragment()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return line, lit, err
}

// copyLiteral hands n bytes of literal data to send, a buffer at a time,
// without holding more than br's buffer in memory.
func (r *commandReader) copyLiteral(n int64, send func([]byte) error) error {
	for n > 0 {
		if r.br.Buffered() == 0 {
			if _, err := r.br.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		k := r.br.Buffered()
		if int64(k) > n {
			k = int(n)
		}
		b, _ := r.br.Peek(k)
		if err := send(b); err != nil {
			return err
		}
		r.br.Discard(k)
		n -= int64(k)
	}
	return nil
}

func (r *commandReader) skipLiteral(n int64) error {
	return r.copyLiteral(n, func([]byte) error { return nil })
}

// discardRest skips what is left of a command that was refused while the
// client may still be sending it. A synchronizing literal ends it: the client
// waits for a "+" that never comes and reads the tagged refusal instead
// (RFC 9051 section 7.5).
func (r *commandReader) discardRest(lit literal) error {
	for lit.size >= 0 && lit.nonSync {
		if err := r.skipLiteral(lit.size); err != nil {
			return err
		}
		var err error
		if _, lit, err = r.readMore(); err != nil {
			return err
		}
	}
	return nil
}

// maxServerLiteral is imapserver's limit for literals it buffers.
const maxServerLiteral = 4096

var errLiteralTooBig = errors.New("imapext: literal too big")

// serverBuffers reports whether lit is a literal imapserver would buffer and
// refuse for its size. Refusing one, imapserver (go-imap v2.0.0-beta.8) goes
// on parsing the command and waits for bytes the client never sends, so the
// layer refuses such literals first. Only APPEND's message literal is
// streamed; APPEND's mailbox name is the literal right after "APPEND ".
func serverBuffers(name string, line []byte, lit literal, first bool) bool {
	if lit.size <= maxServerLiteral {
		return false
	}
	return name != "APPEND" || appendMailbox(line, lit, first)
}

// appendMailbox reports whether lit is APPEND's mailbox name, the literal
// right after "APPEND ", rather than its message.
func appendMailbox(line []byte, lit literal, first bool) bool {
	return first && len(bytes.Fields(line[:lit.start])) == 2
}

// errFramingAppend is text after APPEND's message: imapserver (go-imap
// v2.0.0-beta.8) then answers nothing at all for the command, and the
// layer would wait for that answer forever.
// errFramingLiteralEnd is a command imapserver ended right after one of its
// literals, while the client's line goes on.
var errFramingLiteralEnd = &framingError{"Syntax error: command ended at a literal"}

var errFramingAppend = &framingError{"Syntax error: expected CRLF after the APPEND message"}

// appendEnd reports whether line, which follows APPEND's message literal,
// ends the command as imapserver's decoder reads it: ")" closing the UTF8
// data extension, then its CRLF (optional SP, optional CR, LF).
func appendEnd(line []byte) bool {
	line = bytes.TrimPrefix(line, []byte(")"))
	line = bytes.TrimPrefix(line, []byte(" "))
	line = bytes.TrimPrefix(line, []byte("\r"))
	return len(line) == 1 && line[0] == '\n'
}

// passer is what passCommand needs from the server side of the layer.
type passer interface {
	// refuse answers a passthrough command before any of it reached
	// imapserver, then skips the rest of it.
	refuse(tag string, lit literal) error
	// refuseFraming answers a passthrough command imapserver would frame
	// differently, before any of it reached imapserver, and ends the
	// connection: the layer cannot know where the client meant it to end.
	refuseFraming(tag string, e *framingError) error
	// begin records that a passthrough command with this tag starts.
	begin(tag, name string) error
	// send forwards bytes of the command to imapserver.
	send(p []byte) error
	// sendAwait forwards p and waits for imapserver's verdict: a continuation
	// request (more is true) or the tagged completion of the command. p ends
	// with a literal header (nonSync tells how the client sent it) or is the
	// last line of a command that may be continued (AUTHENTICATE, IDLE).
	sendAwait(p []byte, lit literal) (more bool, err error)
	// mark returns a count of imapserver's tagged responses, for settle.
	mark() int
	// settle waits until imapserver has taken everything sent so far and
	// waits for more, or has answered a command since mark; it reports the
	// latter.
	settle(mark int) (answered bool, err error)
	// continuationLine is called before reading a client line that answers
	// a continuation request of AUTHENTICATE or IDLE.
	continuationLine(name string)
}

// passCommand forwards one command to imapserver. Literals are always offered
// to imapserver as synchronizing ones and their data is sent only once it
// asked for it, so a literal imapserver refuses (tagged NO/BAD) can never be
// read by it as commands; non-synchronizing data the client sent anyway is
// then skipped here.
//
// Every line is first held to imapserver's framing (checkSegment): what
// imapserver would read as a different sequence of commands never reaches
// it. A first line that fails is answered BAD and the connection closed; a
// later one closes the connection, as imapserver holds the start of the
// command.
func (r *commandReader) passCommand(p passer, tag, name string, line []byte, lit literal) error {
	sent := 0
	if err := checkSegment(line, lit, &sent); err != nil {
		return p.refuseFraming(tag, err.(*framingError))
	}
	if serverBuffers(name, line, lit, true) {
		return p.refuse(tag, lit)
	}
	if err := p.begin(tag, name); err != nil {
		return err
	}
	for first := true; lit.size >= 0; first = false {
		if !first && serverBuffers(name, line, lit, false) {
			// imapserver holds the start of the command; there is no way to
			// take it back.
			return errLiteralTooBig
		}
		more, err := p.sendAwait(line, lit)
		if err != nil {
			return err
		}
		if !more {
			return r.discardRest(lit)
		}
		appendMsg := name == "APPEND" && !appendMailbox(line, lit, first)
		mark := p.mark()
		if err := r.copyLiteral(lit.size, p.send); err != nil {
			return err
		}
		// imapserver may end the command right after a literal (a mailbox
		// name that is not valid modified UTF-7, say) without skipping the
		// rest of the line, which it would then read as a new command.
		answered, err := p.settle(mark)
		if err != nil {
			return err
		}
		if answered {
			return errFramingLiteralEnd
		}
		if line, lit, err = r.readMore(); err != nil {
			return err
		}
		if err := checkSegment(line, lit, &sent); err != nil {
			return err
		}
		if appendMsg && !appendEnd(line) {
			return errFramingAppend
		}
	}
	// RFC 9051 section 6.2.2 (AUTHENTICATE) and RFC 2177 (IDLE): after a
	// continuation request the next client line belongs to the command.
	if name != "AUTHENTICATE" && name != "IDLE" {
		return p.send(line)
	}
	for {
		more, err := p.sendAwait(line, literal{size: -1})
		if err != nil || !more {
			return err
		}
		p.continuationLine(name)
		if line, _, err = r.readMore(); err != nil {
			return err
		}
		if len(line) > maxServerContLine {
			return errFramingSize
		}
	}
}

// readOwn buffers the rest of one of the layer's own commands, whose first
// line is line. check vets each literal before it is accepted; sendCont
// writes the continuation request for a synchronizing one. At most max bytes
// are buffered. A refusal is returned as rej after the command has been
// consumed.
func (r *commandReader) readOwn(line []byte, lit literal, max int, check func(size int64) error, sendCont func() error) (cmd []byte, rej error, err error) {
	cmd = append(make([]byte, 0, len(line)), line...)
	for lit.size >= 0 {
		rej = check(lit.size)
		if rej == nil && int64(len(cmd))+lit.size > int64(max) {
			rej = errTooBig
		}
		if rej != nil {
			if err := r.discardRest(lit); err != nil {
				return nil, nil, err
			}
			return nil, rej, nil
		}
		if !lit.nonSync {
			if err := sendCont(); err != nil {
				return nil, nil, err
			}
		}
		start := len(cmd)
		cmd = append(cmd, make([]byte, lit.size)...)
		if _, err := io.ReadFull(r.br, cmd[start:]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, nil, err
		}
		if line, lit, err = r.readMore(); err != nil {
			return nil, nil, err
		}
		if len(cmd)+len(line) > max {
			if err := r.discardRest(lit); err != nil {
				return nil, nil, err
			}
			return nil, errTooBig, nil
		}
		cmd = append(cmd, line...)
	}
	return cmd, nil, nil
}

// dispatcher is what serveCommands needs from the layer.
type dispatcher interface {
	passer
	// waiting is called before waiting for a command, reading after its
	// first line arrived. An error from waiting ends serveCommands with it.
	waiting() error
	reading()
	// isOwn reports whether the layer answers the command itself.
	isOwn(name string) bool
	// handle runs an own command; it consumes the command from the reader.
	handle(tag, name string, line []byte, lit literal) error
	// invalid deals with a line that does not start with a tag and a name.
	invalid(line []byte, lit literal) error
}

// serveCommands reads commands until the client stops or an error ends the
// connection, and hands each to the layer or to imapserver.
func serveCommands(r *commandReader, d dispatcher) error {
	for {
		if err := d.waiting(); err != nil {
			return err
		}
		line, lit, err := r.readFragment()
		if err != nil {
			return err
		}
		d.reading()
		tag, name, ok := parseCommandStart(line)
		switch {
		case !ok:
			err = d.invalid(line, lit)
		case d.isOwn(name):
			err = d.handle(tag, name, line, lit)
		default:
			err = r.passCommand(d, tag, name, line, lit)
		}
		if err != nil {
			return err
		}
	}
}
