package iroh

import (
	"bufio"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Client is the native side of the protocol as iroh 0.35's client speaks
// it, over a connection the caller dialed (plain or TLS): for tests and
// probes of a relay.
type Client struct {
	Key  NodeKey
	conn net.Conn
	r    *bufio.Reader
}

// Handshake upgrades conn on /relay of host the way core's client does
// (Upgrade: iroh derp http, no Connection header) and sends ClientInfo
// signed by priv. version is normally ProtocolVersion.
func Handshake(conn net.Conn, host string, priv ed25519.PrivateKey, version uint64) (*Client, error) {
	c, err := upgrade(conn, host)
	if err != nil {
		return nil, err
	}
	copy(c.Key[:], priv.Public().(ed25519.PublicKey))
	if err := c.Write(FrameClientInfo, MarshalClientInfo(priv, version)); err != nil {
		return nil, err
	}
	return c, nil
}

// upgrade does the HTTP part of Handshake.
func upgrade(conn net.Conn, host string) (*Client, error) {
	c := &Client{conn: conn, r: bufio.NewReader(conn)}
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: %s\r\n\r\n", RelayPath, host, upgradeNative); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return nil, fmt.Errorf("iroh relay upgrade: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, fmt.Errorf("iroh relay upgrade: %s", resp.Status)
	}
	return c, nil
}

// Write sends one frame.
func (c *Client) Write(typ byte, parts ...[]byte) error {
	c.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := c.conn.Write(AppendFrame(nil, typ, parts...))
	return err
}

// Send sends packet to dst.
func (c *Client) Send(dst NodeKey, packet []byte) error {
	return c.Write(FrameSendPacket, dst[:], packet)
}

// Read returns the next frame, waiting until deadline.
func (c *Client) Read(deadline time.Time) (typ byte, payload []byte, err error) {
	c.conn.SetReadDeadline(deadline)
	return ReadFrame(c.r, MaxFrameSize)
}

// Recv returns the next RecvPacket, answering Pings and skipping other
// frames on the way, waiting until deadline.
func (c *Client) Recv(deadline time.Time) (src NodeKey, packet []byte, err error) {
	for i := 0; i < 1000; i++ {
		typ, p, err := c.Read(deadline)
		if err != nil {
			return src, nil, err
		}
		switch typ {
		case FrameRecvPacket:
			if len(p) < KeyLen {
				return src, nil, frameErr("recv packet of %d bytes", len(p))
			}
			copy(src[:], p)
			return src, p[KeyLen:], nil
		case FramePing:
			if err := c.Write(FramePong, p); err != nil {
				return src, nil, err
			}
		}
	}
	return src, nil, fmt.Errorf("no packet among 1000 frames")
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
