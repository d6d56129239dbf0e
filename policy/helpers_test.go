package policy

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

const (
	alice = "alice0001@example.org"
	bob   = "bob000002@example.net"
)

var (
	keyOnce sync.Once
	keyV4   *openpgp.Entity // Ed25519 + X25519 like Delta Chat's, SEIPD v1
	keyAEAD *openpgp.Entity // advertises SEIPD v2 (RFC 9580 5.13.2)
	keyErr  error
)

func testKeys(t testing.TB) (v4, aead *openpgp.Entity) {
	t.Helper()
	keyOnce.Do(func() {
		keyV4, keyErr = openpgp.NewEntity("Bob", "", bob, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
		if keyErr != nil {
			return
		}
		keyAEAD, keyErr = openpgp.NewEntity("Bob", "", bob, &packet.Config{
			Algorithm: packet.PubKeyAlgoEdDSA, AEADConfig: &packet.AEADConfig{},
		})
	})
	if keyErr != nil {
		t.Fatalf("generate key: %v", keyErr)
	}
	return keyV4, keyAEAD
}

// encryptTo returns the binary OpenPGP message of plaintext encrypted to
// key, or with a passphrase when key is nil.
func encryptTo(t testing.TB, key *openpgp.Entity, aead bool, plaintext []byte) []byte {
	t.Helper()
	var cfg *packet.Config
	if aead {
		cfg = &packet.Config{AEADConfig: &packet.AEADConfig{}}
	}
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	if key == nil {
		w, err = openpgp.SymmetricallyEncrypt(&buf, []byte("secure-join secret"), nil, cfg)
	} else {
		w, err = openpgp.Encrypt(&buf, []*openpgp.Entity{key}, nil, nil, cfg)
	}
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	if _, err := w.Write(plaintext); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// armored armors a binary OpenPGP message with go-crypto's encoder, which
// writes LF line endings.
func armored(t testing.TB, bin []byte, headers map[string]string, checksum bool) string {
	t.Helper()
	var buf bytes.Buffer
	w, err := armor.EncodeWithChecksumOption(&buf, "PGP MESSAGE", headers, checksum)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(bin)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("\n")
	return buf.String()
}

// pkt builds a packet with an OpenPGP (new) format header and the shortest
// definite length (RFC 9580 4.2.1).
func pkt(tag byte, body []byte) []byte {
	b := []byte{0xc0 | tag}
	switch n := len(body); {
	case n < 192:
		b = append(b, byte(n))
	case n < 8384:
		n -= 192
		b = append(b, byte(n>>8)+192, byte(n))
	default:
		b = append(b, 255)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
	}
	return append(b, body...)
}

// partialPkt builds a packet whose body is sent in partial chunks of
// 1<<power octets, ended by a definite length (RFC 9580 4.2.1.4).
func partialPkt(tag byte, body []byte, power uint) []byte {
	b := []byte{0xc0 | tag}
	chunk := 1 << power
	for len(body) > chunk {
		b = append(b, 224+byte(power))
		b = append(b, body[:chunk]...)
		body = body[chunk:]
	}
	last := pkt(0, body)
	return append(b, last[1:]...)
}

// fakeSEIPD is a version 1 SEIPD body of n octets of noise.
func fakeSEIPD(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(b)
	b[0] = 1
	return b
}

// fakeESK is the body of an ESK packet; its content is never looked at.
func fakeESK(n int) []byte { return bytes.Repeat([]byte{3}, n) }

// toCRLF turns LF line endings into CRLF.
func toCRLF(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// encryptedMsg is an OpenPGP/MIME message as Delta Chat writes it
// (RFC 3156 4), whose pieces tests tamper with.
type encryptedMsg struct {
	From      string
	To        string
	Extra     string // more top-level header lines
	CType     string // top-level Content-Type value
	Preamble  string
	Part1     string // header and body of the version part
	Part2Head string
	Armor     string
	MoreParts []string
	Epilogue  string
	NoClose   bool
}

const testBoundary = "oF1cH3QmX2d7sKzB5yLk4wP9eT0aV6r"

func newEncrypted(armor string) *encryptedMsg {
	return &encryptedMsg{
		From:     alice,
		To:       bob,
		CType:    `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="` + testBoundary + `"`,
		Preamble: "",
		Part1: "Content-Type: application/pgp-encrypted\n" +
			"Content-Description: PGP/MIME version identification\n\nVersion: 1\n\n",
		Part2Head: "Content-Type: application/octet-stream; name=\"encrypted.asc\"\n" +
			"Content-Description: OpenPGP encrypted message\n" +
			"Content-Disposition: inline; filename=\"encrypted.asc\"\n",
		Armor: armor,
	}
}

func (m *encryptedMsg) String() string {
	var b strings.Builder
	b.WriteString("Subject: [...]\n")
	b.WriteString("Chat-Version: 1.0\n")
	b.WriteString("Autocrypt: addr=" + m.From + "; prefer-encrypt=mutual;\n keydata=xjMEZ1NfhRYJKwYBBAHaRw8BAQdAcGxhY2Vob2xkZXI=\n")
	b.WriteString("From: <" + m.From + ">\n")
	b.WriteString("To: <" + m.To + ">\n")
	b.WriteString("Date: Mon, 02 Jun 2025 10:00:00 +0000\n")
	b.WriteString("Message-ID: <Mr.abc@localhost>\n")
	b.WriteString("MIME-Version: 1.0\n")
	b.WriteString(m.Extra)
	b.WriteString("Content-Type: " + m.CType + "\n\n")
	b.WriteString(m.Preamble)
	b.WriteString("\n--" + testBoundary + "\n")
	b.WriteString(m.Part1)
	b.WriteString("\n--" + testBoundary + "\n")
	b.WriteString(m.Part2Head + "\n")
	b.WriteString(m.Armor)
	for _, p := range m.MoreParts {
		b.WriteString("\n--" + testBoundary + "\n")
		b.WriteString(p)
	}
	if !m.NoClose {
		b.WriteString("\n--" + testBoundary + "--\n")
	}
	b.WriteString(m.Epilogue)
	return toCRLF(b.String())
}

func (m *encryptedMsg) with(f func(*encryptedMsg)) *encryptedMsg {
	c := *m
	f(&c)
	return &c
}

func secureJoinMsg(header, body string) string {
	return toCRLF("From: <" + alice + ">\n" +
		"To: <" + bob + ">\n" +
		"Subject: Message from alice\n" +
		"Secure-Join: " + header + "\n" +
		"Secure-Join-Invitenumber: Ae1Ib2Fc3Gd4\n" +
		"MIME-Version: 1.0\n" +
		"Content-Type: multipart/mixed; boundary=\"sj\"\n\n" +
		"--sj\n" +
		"Content-Type: text/plain; charset=utf-8\n\n" +
		body + "\n" +
		"--sj--\n")
}

func setupMsg(to string) string {
	return toCRLF("From: <" + alice + ">\n" +
		"To: <" + to + ">\n" +
		"Subject: Autocrypt Setup Message\n" +
		"Autocrypt-Setup-Message: v1\n" +
		"MIME-Version: 1.0\n" +
		"Content-Type: multipart/mixed; boundary=\"asm\"\n\n" +
		"--asm\n" +
		"Content-Type: text/plain\n\nThis is the Autocrypt Setup Message.\n" +
		"--asm\n" +
		"Content-Type: application/autocrypt-setup\n" +
		"Content-Disposition: attachment; filename=\"autocrypt-setup-message.html\"\n\n" +
		"<html><body><pre>\n-----BEGIN PGP MESSAGE-----\nPassphrase-Format: numeric9x4\n\nwy4ECQMI\n-----END PGP MESSAGE-----\n</pre></body></html>\n" +
		"--asm--\n")
}

func bounceMsg(from string, autoSubmitted bool) string {
	as := ""
	if autoSubmitted {
		as = "Auto-Submitted: auto-replied\n"
	}
	return toCRLF("From: Mail Delivery System <" + from + ">\n" +
		"To: <" + bob + ">\n" +
		"Subject: Undelivered Mail Returned to Sender\n" +
		as +
		"MIME-Version: 1.0\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"rep\"\n\n" +
		"--rep\nContent-Type: text/plain\n\nThe mail could not be delivered.\n" +
		"--rep\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; x@example.net\nAction: failed\nStatus: 5.1.1\n" +
		"--rep--\n")
}
