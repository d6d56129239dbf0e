package dkim

import (
	"bytes"
	"net"
	"testing"

	"github.com/chatrelay/chatrelay/internal/testmsg"
)

// FuzzVerify feeds arbitrary messages to Verify with a published key, a
// failing lookup and a garbage key record: it must not panic, and it may
// only pass a message that carries a DKIM-Signature, and only a failing
// lookup makes a failure temporary.
// What Sign accepts, Verify accepts.
func FuzzVerify(f *testing.F) {
	k, err := Generate()
	if err != nil {
		f.Fatal(err)
	}
	const domain = "a.example"
	plain := testmsg.Encrypted("alice@"+domain, "bob@b.example", 0)
	var signed bytes.Buffer
	if err := Sign(k, domain, "dkim", bytes.NewReader(plain), &signed); err != nil {
		f.Fatal(err)
	}
	f.Add(signed.Bytes(), byte(0))
	f.Add(signed.Bytes(), byte(1))
	f.Add(signed.Bytes(), byte(2))
	f.Add(plain, byte(0))
	f.Add([]byte("DKIM-Signature: v=1; a=rsa-sha256; d=a.example; s=dkim; h=from; bh=; b=\r\nFrom: <x@a.example>\r\n\r\nhi\r\n"), byte(0))
	f.Add([]byte("From: <x@a.example>\r\n\r\n"), byte(3))
	f.Fuzz(func(t *testing.T, msg []byte, mode byte) {
		lookup := func(name string) ([]string, error) {
			switch mode % 4 {
			case 0:
				return []string{k.TXTRecord()}, nil
			case 1:
				return nil, &net.DNSError{Err: "timeout", Name: name, IsTimeout: true}
			case 2:
				return []string{"v=DKIM1; k=rsa; p=" + string(msg[:min(len(msg), 64)])}, nil
			default:
				return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
			}
		}
		err := Verify(bytes.NewReader(msg), domain, lookup)
		if err == nil && !bytes.Contains(bytes.ToLower(msg), []byte("dkim-signature")) {
			t.Fatal("a message without a signature passed")
		}
		// A malformed message is refused for good: only a failed key
		// lookup may ask the sender to try again.
		if err != nil && IsTemporary(err) && mode%4 != 1 {
			t.Fatalf("temporary failure without a failing lookup: %v", err)
		}
		if mode%4 != 0 {
			return
		}
		var out bytes.Buffer
		if Sign(k, domain, "dkim", bytes.NewReader(msg), &out) != nil {
			return
		}
		if err := Verify(bytes.NewReader(out.Bytes()), domain, lookup); err != nil {
			t.Fatalf("own signature does not verify: %v", err)
		}
	})
}
