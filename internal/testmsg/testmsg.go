// Package testmsg makes real messages for tests and benchmarks: PGP/MIME
// messages encrypted with a real OpenPGP implementation, and cleartext ones.
package testmsg

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
)

// Encrypted returns a PGP/MIME message (RFC 3156) from -> to whose body is
// symmetrically encrypted (SKESK + SEIPD packets) and padded with pad
// random bytes of plaintext, with CRLF line endings.
func Encrypted(from, to string, pad int) []byte {
	var armored bytes.Buffer
	aw, err := armor.Encode(&armored, "PGP MESSAGE", nil)
	if err != nil {
		panic(err)
	}
	pw, err := openpgp.SymmetricallyEncrypt(aw, []byte("test passphrase"), nil, nil)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(pw, "Content-Type: text/plain\r\n\r\nhello from %s\r\n", from)
	if pad > 0 {
		io.CopyN(pw, rand.Reader, int64(pad))
	}
	pw.Close()
	aw.Close()
	body := strings.ReplaceAll(armored.String(), "\r\n", "\n")
	body = strings.ReplaceAll(body, "\n", "\r\n")

	boundary := fmt.Sprintf("b%x", time.Now().UnixNano())
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: [...]\r\nDate: %s\r\n", from, to, time.Now().UTC().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%x@test>\r\nMIME-Version: 1.0\r\n", time.Now().UnixNano())
	fmt.Fprintf(&b, "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\nContent-Description: OpenPGP encrypted message\r\nContent-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n", boundary)
	b.WriteString(body)
	if !strings.HasSuffix(body, "\r\n") {
		b.WriteString("\r\n")
	}
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}

// Cleartext returns a plain text message from -> to.
func Cleartext(from, to string) []byte {
	return []byte(fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: hello\r\nDate: %s\r\nMessage-ID: <%x@test>\r\n\r\nThis is not encrypted.\r\n",
		from, to, time.Now().UTC().Format(time.RFC1123Z), time.Now().UnixNano()))
}
