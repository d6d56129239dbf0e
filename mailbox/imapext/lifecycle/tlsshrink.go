// Reviewed against crypto/tls of Go 1.26 only: every Go release must be
// read again (conn.go: rawInput, input, hand and how readRecord and
// Read use them) before this constraint names it.

//go:build go1.26 && !go1.27

package lifecycle

import (
	"bytes"
	"crypto/tls"
	"reflect"
	"unsafe"
)

// A TLS connection keeps the buffers crypto/tls grew while reading the
// handshake: the raw input (the ClientHello's record, about 2 KiB with a
// post-quantum key share) and the handshake buffer (about 1.5 KiB), for its
// whole life. They are a third of what an idle connection costs, and
// crypto/tls offers no way to let them go. A connection going away (Leaving)
// has read everything crypto/tls held, and no goroutine is in a read of it
// then, so shrinkTLS resets the buffers to empty ones: crypto/tls grows new
// ones from nothing when the next record comes. It finds them by name and
// type through reflect, and does nothing when crypto/tls no longer has
// them as they were (TestShrinkTLS then fails), or while any of them holds
// bytes (a record that came in part, say).

var tlsFields = func() (f struct {
	ok                    bool
	rawInput, input, hand uintptr
}) {
	t := reflect.TypeFor[tls.Conn]()
	find := func(name string, typ reflect.Type) (uintptr, bool) {
		sf, ok := t.FieldByName(name)
		return sf.Offset, ok && sf.Type == typ
	}
	var ok1, ok2, ok3 bool
	f.rawInput, ok1 = find("rawInput", reflect.TypeFor[bytes.Buffer]())
	f.input, ok2 = find("input", reflect.TypeFor[bytes.Reader]())
	f.hand, ok3 = find("hand", reflect.TypeFor[bytes.Buffer]())
	f.ok = ok1 && ok2 && ok3
	return f
}()

// tlsShrinks says whether shrinkTLS was reviewed for this Go release.
const tlsShrinks = true

// shrinkTLS lets go of tc's empty read buffers and returns the bytes of
// buffer it let go. The caller is tc's only reader and is not in a read.
func shrinkTLS(tc *tls.Conn) int {
	if !tlsFields.ok {
		return 0
	}
	p := unsafe.Pointer(tc)
	raw := (*bytes.Buffer)(unsafe.Add(p, tlsFields.rawInput))
	in := (*bytes.Reader)(unsafe.Add(p, tlsFields.input))
	hand := (*bytes.Buffer)(unsafe.Add(p, tlsFields.hand))
	if raw.Len() != 0 || in.Len() != 0 || hand.Len() != 0 {
		return 0
	}
	n := raw.Cap() + hand.Cap()
	*raw, *in, *hand = bytes.Buffer{}, bytes.Reader{}, bytes.Buffer{}
	return n
}
