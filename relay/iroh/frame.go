// Package iroh is an iroh relay server (protocol version 3, as spoken by
// the iroh 0.35 clients inside Delta Chat core 2.x): webxdc realtime peers
// that cannot reach each other directly exchange their packets through it.
//
// The protocol, as read from the iroh-relay crate 0.35
// (src/protos/relay.rs, src/server/http_server.rs):
//   - GET /relay with "Upgrade: iroh derp http" (core's native client, no
//     Connection header) or "Upgrade: websocket" (browsers); the server
//     answers 101 and both sides speak frames.
//   - On the native stream a frame is [type u8][length u32 big-endian]
//     [payload]; in a WebSocket binary message it is [type u8][payload]
//     with no length.
//   - The client's first frame is ClientInfo: "RELAY🔑", its ed25519
//     public key (32), a signature (64) over the rest, and the rest: the
//     postcard encoding of {version: usize} (a LEB128 varint), version 3.
//   - Then the client sends SendPacket [dst key][packet], the server
//     delivers RecvPacket [src key][packet]; Ping/Pong carry 8 bytes;
//     NodeGone [key] tells a sender that its peer left.
package iroh

import (
	"bufio"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame types (iroh-relay 0.35 protos/relay.rs FrameType).
const (
	FrameClientInfo    byte = 2
	FrameSendPacket    byte = 4
	FrameRecvPacket    byte = 5
	FrameKeepAlive     byte = 6
	FrameNotePreferred byte = 7
	FrameNodeGone      byte = 8
	FramePing          byte = 12
	FramePong          byte = 13
	FrameHealth        byte = 14
	FrameRestarting    byte = 15
)

const (
	// ProtocolVersion is the ClientInfo version iroh 0.35 sends and
	// expects.
	ProtocolVersion = 3
	// MaxPacketSize is the largest packet a SendPacket or RecvPacket may
	// carry (iroh's MAX_PACKET_SIZE).
	MaxPacketSize = 64 << 10
	// MaxFrameSize is the largest frame payload on the wire (iroh's
	// MAX_FRAME_SIZE); a longer length closes the connection before its
	// payload is read.
	MaxFrameSize = 1 << 20
	// KeyLen is the length of a node key (an ed25519 public key).
	KeyLen = ed25519.PublicKeySize
	// headerLen is type + length on the native stream.
	headerLen = 5
	// maxClientInfo bounds the first frame further: the client is not
	// yet known, and its info is a few bytes.
	maxClientInfo = 1024
)

// magic starts every ClientInfo frame.
const magic = "RELAY\xf0\x9f\x94\x91" // "RELAY🔑"

// NodeKey is a node's ed25519 public key, its identity on the relay.
type NodeKey [KeyLen]byte

// ErrFrame is wrapped by every error about a frame's content: the peer
// broke the protocol, and its connection is closed.
var ErrFrame = errors.New("malformed iroh relay frame")

func frameErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFrame, fmt.Sprintf(format, args...))
}

// ReadFrame reads one length-prefixed frame from the native stream. A
// length above max is refused without reading its payload.
func ReadFrame(r *bufio.Reader, max int) (typ byte, payload []byte, err error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if uint64(n) > uint64(max) {
		return 0, nil, frameErr("frame of %d bytes, limit %d", n, max)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], payload, nil
}

// AppendFrame appends a native-stream frame made of typ and the
// concatenation of parts.
func AppendFrame(dst []byte, typ byte, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	dst = append(dst, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(n))
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return dst
}

// ClientInfo is the client's first frame, checked.
type ClientInfo struct {
	Key     NodeKey
	Version uint64
}

// ParseClientInfo checks a ClientInfo payload: magic, key, a valid
// signature by that key over the info, and a well-formed info.
func ParseClientInfo(p []byte) (ClientInfo, error) {
	var ci ClientInfo
	if len(p) < len(magic)+KeyLen+ed25519.SignatureSize {
		return ci, frameErr("client info of %d bytes", len(p))
	}
	if string(p[:len(magic)]) != magic {
		return ci, frameErr("client info without magic")
	}
	p = p[len(magic):]
	key, sig, msg := p[:KeyLen], p[KeyLen:KeyLen+ed25519.SignatureSize], p[KeyLen+ed25519.SignatureSize:]
	if !ed25519.Verify(ed25519.PublicKey(key), msg, sig) {
		return ci, frameErr("client info signature does not verify")
	}
	v, n := binary.Uvarint(msg)
	if n <= 0 || n != len(msg) {
		return ci, frameErr("client info is not a postcard {version}")
	}
	copy(ci.Key[:], key)
	ci.Version = v
	return ci, nil
}

// MarshalClientInfo builds a signed ClientInfo payload for key's node
// (the client side, for tests and probes).
func MarshalClientInfo(priv ed25519.PrivateKey, version uint64) []byte {
	msg := binary.AppendUvarint(nil, version)
	out := append([]byte(magic), priv.Public().(ed25519.PublicKey)...)
	out = append(out, ed25519.Sign(priv, msg)...)
	return append(out, msg...)
}

// ClientFrame is a frame a connected client may send.
type ClientFrame struct {
	Type   byte
	Dst    NodeKey // SendPacket
	Packet []byte  // SendPacket: the packet; Ping, Pong: the 8 bytes
}

// ParseClientFrame checks a frame from a connected client. Frame types
// only a server sends, a second ClientInfo, unknown types and wrong
// lengths are errors (the connection is closed).
func ParseClientFrame(typ byte, p []byte) (ClientFrame, error) {
	f := ClientFrame{Type: typ}
	switch typ {
	case FrameSendPacket:
		if len(p) < KeyLen {
			return f, frameErr("send packet of %d bytes", len(p))
		}
		if len(p)-KeyLen > MaxPacketSize {
			return f, frameErr("packet of %d bytes, limit %d", len(p)-KeyLen, MaxPacketSize)
		}
		copy(f.Dst[:], p)
		f.Packet = p[KeyLen:]
	case FramePing, FramePong:
		if len(p) != 8 {
			return f, frameErr("ping or pong of %d bytes", len(p))
		}
		f.Packet = p
	case FrameKeepAlive:
		if len(p) != 0 {
			return f, frameErr("keep-alive of %d bytes", len(p))
		}
	case FrameNotePreferred:
		if len(p) != 1 || p[0] > 1 {
			return f, frameErr("note-preferred frame of %d bytes", len(p))
		}
	case FrameHealth:
		// A client has no health to report to the server; iroh's server
		// ends the connection too.
		return f, frameErr("health frame from a client")
	default:
		return f, frameErr("frame type %d from a client", typ)
	}
	return f, nil
}
