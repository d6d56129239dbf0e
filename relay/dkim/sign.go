package dkim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// SignedHeaders are the header fields a signature covers, in h= order.
// Each is listed as many times as the message has it, at least once: a
// name listed for a field the message lacks contributes nothing to the
// hash but makes a field of that name added later break the signature
// (RFC 6376 section 5.4). The Delta Chat fields matter to the receiving
// client (Autocrypt carries the sender's key, Chat-Version and Secure-Join
// change how the message is handled).
var SignedHeaders = []string{
	"From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date",
	"Message-ID", "In-Reply-To", "References",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"Autocrypt", "Autocrypt-Setup-Message", "Chat-Version",
	"Chat-Disposition-Notification-To",
	"Secure-Join", "Secure-Join-Invitenumber", "Secure-Join-Auth",
	"Auto-Submitted",
}

// OversignedHeaders are listed once more than the message has them
// (RFC 6376 section 5.4.2), so no extra copy can be prepended even when
// the message has one already: a second From or Autocrypt would change
// what a client shows or which key it trusts.
var OversignedHeaders = []string{"From", "Subject", "Autocrypt"}

// maxHeaderBytes bounds the header section Signature reads into memory.
// Autocrypt headers hold a public key (a few KiB); nothing legitimate comes
// near this.
const maxHeaderBytes = 1 << 20

// Signature reads the message from msg and returns the DKIM-Signature
// header field to prepend to it, with its name and final CRLF. d= is
// domain and s= selector. The message is streamed, not kept in memory, so
// a caller sending from a file reads the file twice.
func Signature(key *Key, domain, selector string, msg io.Reader) (string, error) {
	br := bufio.NewReader(msg)
	head, err := readHeader(br)
	if err != nil {
		return "", err
	}
	s, err := dkim.NewSigner(&dkim.SignOptions{
		Domain:                 domain,
		Selector:               selector,
		Signer:                 key.priv,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationSimple,
		HeaderKeys:             headerKeys(head),
	})
	if err != nil {
		return "", fmt.Errorf("dkim sign: %w", err)
	}
	if _, err := io.Copy(s, io.MultiReader(bytes.NewReader(head), br)); err != nil {
		s.Close()
		return "", fmt.Errorf("dkim sign: %w", err)
	}
	if err := s.Close(); err != nil {
		return "", fmt.Errorf("dkim sign: %w", err)
	}
	return s.Signature(), nil
}

// Sign writes the message from msg to w with a DKIM-Signature header field
// in front. It holds the message in memory; use Signature to sign a message
// that can be read twice.
func Sign(key *Key, domain, selector string, msg io.Reader, w io.Writer) error {
	var buf bytes.Buffer
	sig, err := Signature(key, domain, selector, io.TeeReader(msg, &buf))
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, sig); err != nil {
		return err
	}
	_, err = buf.WriteTo(w)
	return err
}

// readHeader returns the raw header section, up to and including the empty
// line that ends it (or all of the input when there is no body).
func readHeader(br *bufio.Reader) ([]byte, error) {
	var head []byte
	partial := false // the previous read ended inside a line
	for {
		line, err := br.ReadSlice('\n')
		if len(head) == 0 && len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			// It would fold into our DKIM-Signature field and break it.
			return nil, errors.New("dkim sign: header section starts with a continuation line")
		}
		head = append(head, line...)
		if len(head) > maxHeaderBytes {
			return nil, errors.New("dkim sign: header section too large")
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			partial = true
			continue
		case err == io.EOF:
			return head, nil
		case err != nil:
			return nil, fmt.Errorf("dkim sign: read header: %w", err)
		}
		if !partial && len(bytes.TrimRight(line, "\r\n")) == 0 {
			return head, nil
		}
		partial = false
	}
}

// headerKeys returns h= for a message with this header section.
func headerKeys(head []byte) []string {
	count := map[string]int{}
	for _, line := range bytes.Split(head, []byte("\n")) {
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue // folded continuation, or the end
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		count[strings.ToLower(string(bytes.TrimSpace(name)))]++
	}
	over := map[string]bool{}
	for _, h := range OversignedHeaders {
		over[strings.ToLower(h)] = true
	}
	var keys []string
	for _, h := range SignedHeaders {
		n := max(count[strings.ToLower(h)], 1)
		if over[strings.ToLower(h)] {
			n = count[strings.ToLower(h)] + 1
		}
		for range n {
			keys = append(keys, h)
		}
	}
	return keys
}
