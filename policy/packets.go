package policy

import "fmt"

// OpenPGP packet tags allowed in an encrypted message (RFC 9580 5).
const (
	tagPKESK = 1  // Public-Key Encrypted Session Key, RFC 9580 5.1
	tagSKESK = 3  // Symmetric-Key Encrypted Session Key, RFC 9580 5.3
	tagSEIPD = 18 // Symmetrically Encrypted Integrity Protected Data, RFC 9580 5.13
)

// packetError says why a packet sequence was refused.
type packetError string

func (e packetError) Error() string { return string(e) }

type walkState uint8

const (
	wantTag    walkState = iota // at a packet boundary
	wantLength                  // inside the length octets of a header
	inBody                      // skipping body octets
	afterSEIPD                  // the SEIPD packet ended; nothing may follow
)

// packetWalker checks, as the decoded bytes stream through it, that they
// form the packet sequence of an encrypted OpenPGP message as SPEC section 5
// wants it: zero or more PKESK or SKESK packets, then exactly one SEIPD
// packet, then nothing. This is the "Encrypted Message" of the message
// grammar (RFC 9580 10.3) without the optional marker and padding packets.
//
// Packet bodies are skipped, never buffered or decrypted, so the memory
// used does not depend on the message. The only body octet looked at is
// the first of the SEIPD packet, its version.
type packetWalker struct {
	state   walkState
	tag     byte
	lenBuf  [5]byte
	lenHave int
	remain  uint64 // body octets left in the current chunk
	partial bool   // the current chunk came from a partial length
	version bool   // the SEIPD version octet has been seen
	packets int
}

// Write feeds the next decoded octets. After the first error the walker is
// useless.
func (p *packetWalker) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		switch p.state {
		case afterSEIPD:
			return 0, packetError("data after the SEIPD packet")

		case wantTag:
			c := b[0]
			b = b[1:]
			// RFC 9580 4.2: bit 7 is always set; bit 6 set means the
			// OpenPGP (new) format, clear the Legacy (old) format, which
			// we refuse as SPEC section 5 asks.
			if c&0x80 == 0 {
				return 0, packetError("not an OpenPGP packet header")
			}
			if c&0x40 == 0 {
				return 0, packetError("legacy (old-format) packet header")
			}
			p.tag = c & 0x3f
			switch p.tag {
			case tagPKESK, tagSKESK, tagSEIPD:
			default:
				return 0, packetError(fmt.Sprintf("packet tag %d not allowed", p.tag))
			}
			p.packets++
			p.version = false
			p.state = wantLength
			p.lenHave = 0

		case wantLength:
			p.lenBuf[p.lenHave] = b[0]
			p.lenHave++
			b = b[1:]
			if err := p.length(); err != nil {
				return 0, err
			}

		case inBody:
			if p.tag == tagSEIPD && !p.version {
				// RFC 9580 5.13: version 1 or 2. A cheap check that the
				// packet is not an empty shell.
				if b[0] != 1 && b[0] != 2 {
					return 0, packetError(fmt.Sprintf("SEIPD version %d", b[0]))
				}
				p.version = true
			}
			skip := uint64(len(b))
			if skip > p.remain {
				skip = p.remain
			}
			b = b[skip:]
			p.remain -= skip
			if p.remain == 0 {
				if err := p.chunkDone(); err != nil {
					return 0, err
				}
			}
		}
	}
	return n, nil
}

// length decodes the body length octets collected so far (RFC 9580
// 4.2.1) and moves to the body once they are complete.
func (p *packetWalker) length() error {
	o1 := p.lenBuf[0]
	switch {
	case o1 < 192: // one-octet length, RFC 9580 4.2.1.1
		p.remain, p.partial = uint64(o1), false
	case o1 < 224: // two-octet length, RFC 9580 4.2.1.2
		if p.lenHave < 2 {
			return nil
		}
		p.remain = (uint64(o1)-192)<<8 + uint64(p.lenBuf[1]) + 192
		p.partial = false
	case o1 == 255: // five-octet length, RFC 9580 4.2.1.3
		if p.lenHave < 5 {
			return nil
		}
		p.remain = uint64(p.lenBuf[1])<<24 | uint64(p.lenBuf[2])<<16 |
			uint64(p.lenBuf[3])<<8 | uint64(p.lenBuf[4])
		p.partial = false
	default: // partial body length, RFC 9580 4.2.1.4
		// Only data packets may be split; of the three we allow that is
		// the SEIPD packet alone.
		if p.tag != tagSEIPD {
			return packetError(fmt.Sprintf("partial length in packet tag %d", p.tag))
		}
		p.remain, p.partial = uint64(1)<<(o1&0x1f), true
	}
	p.state = inBody
	if p.remain == 0 {
		return p.chunkDone()
	}
	return nil
}

// chunkDone is called when the body octets announced by a length are all
// read.
func (p *packetWalker) chunkDone() error {
	if p.partial {
		// Another length follows without a tag; the last one of a packet
		// is never partial (RFC 9580 4.2.1.4).
		p.state = wantLength
		p.lenHave = 0
		return nil
	}
	if p.tag != tagSEIPD {
		p.state = wantTag
		return nil
	}
	if !p.version {
		return packetError("empty SEIPD packet")
	}
	p.state = afterSEIPD
	return nil
}

// Close reports whether the octets written form a complete sequence.
func (p *packetWalker) Close() error {
	switch {
	case p.state == afterSEIPD:
		return nil
	case p.packets == 0:
		return packetError("no OpenPGP packets")
	case p.state == wantTag:
		return packetError("no SEIPD packet")
	}
	return packetError("truncated OpenPGP packet")
}
