package policy

import (
	"bytes"
	"encoding/base64"
)

// The armor lines of an OpenPGP message (RFC 9580 6.2).
var (
	armorBegin = []byte("-----BEGIN PGP MESSAGE-----")
	armorEnd   = []byte("-----END PGP MESSAGE-----")
	armorDash  = []byte("-----")
)

// maxArmorVersion bounds the value of a Version armor header: "GnuPG v2",
// "OpenPGP.js v4.10.10", not a place for text.
const maxArmorVersion = 64

type armorState uint8

const (
	armorBeforeBegin armorState = iota // blank lines before the BEGIN line
	armorHeaders                       // armor headers after BEGIN
	armorData                          // base64 lines
	armorAfterCRC                      // after the checksum line, END must follow
	armorAfterEnd                      // blank lines after the END line
)

// armorChecker checks, line by line, that a MIME part body is one
// ASCII-armored OpenPGP message (RFC 9580 6.2) whose packets form an
// encrypted message (see packetWalker). The base64 is decoded as it
// streams, so the whole packet sequence is checked with memory bounded by
// one line.
//
// Decisions beyond the RFC:
//   - Only white space may surround the armor block: text before or after
//     it would travel in cleartext.
//   - Only a few blank lines (maxPadLines) may come before BEGIN and after
//     END, and none between the base64 lines.
//   - Armor headers (RFC 9580 6.2.2.1): when sending (strict) none at all.
//     Delta Chat writes none, and a Version header is cleartext that says
//     which software the user runs. Received and appended messages may
//     carry one Version header of at most maxArmorVersion printable ASCII
//     characters, which other OpenPGP implementations write; Comment and
//     Charset carry text a client may show, Hash belongs to cleartext
//     signatures: anything but Version is refused (SPEC section 5).
//   - The blank line after the armor headers (RFC 9580 6.2) must be there,
//     headers or not: go-crypto's decoder refuses armor without it.
//   - The CRC-24 line, if present, must be "=" and four base64 characters
//     and directly precede the END line; its value is not checked, as
//     RFC 9580 6.1 says a receiver must not reject a message over it.
//   - Base64 padding must end the data; padding split over two lines is
//     refused, since that second line looks like a checksum.
type armorChecker struct {
	strict  bool
	state   armorState
	headers int
	pad     int // blank lines before BEGIN and after END

	carry  [4]byte // base64 characters not yet forming a quantum
	ncarry int
	padded bool   // the data ended with "=" padding
	quad   []byte // scratch: carry plus the current line
	dec    []byte // scratch: decoded octets

	packets packetWalker
}

// line takes the next line of the part body, without its terminator.
func (a *armorChecker) line(l []byte) error {
	n := len(l)
	if l = bytes.TrimRight(l, " \t"); n-len(l) > maxPadLine {
		return packetError("white space after an armor line")
	}
	switch a.state {
	case armorBeforeBegin:
		switch {
		case len(l) == 0:
			if a.pad++; a.pad > maxPadLines {
				return packetError("too many blank lines before the armor")
			}
		case bytes.Equal(l, armorBegin):
			a.state = armorHeaders
		default:
			return packetError("text before the armor")
		}
		return nil

	case armorHeaders:
		if len(l) == 0 {
			a.state = armorData
			return nil
		}
		if i := bytes.IndexByte(l, ':'); i >= 0 {
			return a.header(l[:i], l[i+1:])
		}
		// go-crypto's armor decoder, for one, fails without the blank
		// line; another reader may take the first data line for a header.
		return packetError("no blank line after the armor headers")

	case armorData:
		switch {
		case len(l) == 0:
			return packetError("blank line in the armor")
		case l[0] == '=':
			if !isChecksumLine(l) {
				return packetError("malformed armor checksum line")
			}
			a.state = armorAfterCRC
			return a.dataEnd()
		case bytes.Equal(l, armorEnd):
			a.state = armorAfterEnd
			return a.dataEnd()
		case bytes.HasPrefix(l, armorDash):
			return packetError("unexpected armor line")
		}
		return a.data(l)

	case armorAfterCRC:
		if !bytes.Equal(l, armorEnd) {
			return packetError("no END line after the armor checksum")
		}
		a.state = armorAfterEnd
		return nil
	}

	// armorAfterEnd
	if len(l) != 0 {
		return packetError("text after the armor")
	}
	if a.pad++; a.pad > 2*maxPadLines {
		return packetError("too many blank lines after the armor")
	}
	return nil
}

// header checks one armor header (RFC 9580 6.2.2).
func (a *armorChecker) header(key, value []byte) error {
	if a.strict {
		return packetError("armor header in a message being sent")
	}
	if string(key) != "Version" {
		return packetError("armor header not allowed")
	}
	if a.headers++; a.headers > 1 {
		return packetError("more than one armor header")
	}
	value = bytes.TrimLeft(value, " ")
	if len(value) > maxArmorVersion {
		return packetError("armor Version header too long")
	}
	for _, c := range value {
		if c < ' ' || c >= 0x7f {
			return packetError("armor Version header not printable ASCII")
		}
	}
	return nil
}

// maxArmorLine bounds a line of base64 (RFC 9580 6.3: 76 characters);
// go-crypto's decoder refuses lines over 96, others may not.
const maxArmorLine = 76

// data decodes one line of base64 (RFC 4648 4) and feeds the octets to the
// packet walker. A line need not hold whole quanta; the rest is carried to
// the next line.
func (a *armorChecker) data(l []byte) error {
	if len(l) > maxArmorLine {
		return packetError("armor line longer than 76 characters")
	}
	if a.padded {
		return packetError("base64 after padding")
	}
	a.quad = append(append(a.quad[:0], a.carry[:a.ncarry]...), l...)
	n := len(a.quad) / 4 * 4
	if n > 0 {
		if cap(a.dec) < n/4*3 {
			a.dec = make([]byte, n/4*3)
		}
		m, err := base64.StdEncoding.Decode(a.dec[:cap(a.dec)], a.quad[:n])
		if err != nil {
			return packetError("invalid base64")
		}
		a.padded = a.quad[n-1] == '='
		if _, err := a.packets.Write(a.dec[:m]); err != nil {
			return err
		}
	}
	a.ncarry = copy(a.carry[:], a.quad[n:])
	if a.padded && a.ncarry > 0 {
		return packetError("base64 after padding")
	}
	return nil
}

// dataEnd is called at the line after the last base64 line.
func (a *armorChecker) dataEnd() error {
	// A last quantum without padding is unambiguous; accept it like most
	// decoders do. One lone character cannot encode an octet.
	if a.ncarry > 0 {
		var dec [3]byte
		m, err := base64.RawStdEncoding.Decode(dec[:], a.carry[:a.ncarry])
		if err != nil {
			return packetError("invalid base64 at the end")
		}
		a.ncarry = 0
		if _, err := a.packets.Write(dec[:m]); err != nil {
			return err
		}
	}
	return a.packets.Close()
}

// end is called at the end of the part body.
func (a *armorChecker) end() error {
	if a.state != armorAfterEnd {
		return packetError("no complete armored message")
	}
	return nil
}

// isChecksumLine reports whether l is "=" and four base64 characters, the
// armor checksum line (RFC 9580 6.1).
func isChecksumLine(l []byte) bool {
	if len(l) != 5 || l[0] != '=' {
		return false
	}
	for _, c := range l[1:] {
		if !isBase64Char(c) {
			return false
		}
	}
	return true
}

func isBase64Char(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/'
}
