package policy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
)

// bigMessage returns an encrypted message of about size octets whose SEIPD
// packet is real (encrypted by go-crypto) when real is set, else noise
// split in partial lengths, which is much faster to make.
func bigMessage(t testing.TB, size int, real bool) string {
	t.Helper()
	// Armor grows the binary by 4/3 plus line breaks (65/64).
	n := size * 3 / 4 * 64 / 65
	var bin []byte
	if real {
		plain := make([]byte, n-200)
		rand.NewChaCha8([32]byte{2}).Read(plain)
		v4, _ := testKeys(t)
		bin = encryptTo(t, v4, false, plain)
	} else {
		bin = append(pkt(tagPKESK, fakeESK(90)), partialPkt(tagSEIPD, fakeSEIPD(n-100), 20)...)
	}
	return newEncrypted(armored(t, bin, nil, false)).String()
}

// TestOutgoingStreamsLargeMessage: a 30 MiB message is checked and copied
// with a small, fixed amount of memory.
func TestOutgoingStreamsLargeMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("30 MiB message")
	}
	msg := bigMessage(t, 30<<20, false)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rep := Outgoing(Envelope{From: alice, To: []string{bob}}, strings.NewReader(msg), io.Discard)
	runtime.ReadMemStats(&after)
	if rep != nil {
		t.Fatalf("Outgoing: %v (%s)", rep, rep.Reason())
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("checking a %d MiB message allocated %d KiB", len(msg)>>20, alloc>>10)
	}

}

// TestOutgoingCatchesTrailingPacketAfterLargeSEIPD: the whole packet
// sequence of a large message is walked, up to its last octet.
func TestOutgoingCatchesTrailingPacketAfterLargeSEIPD(t *testing.T) {
	if testing.Short() {
		t.Skip("large message")
	}
	seipd := partialPkt(tagSEIPD, fakeSEIPD(4<<20), 16)
	for _, tc := range []struct {
		name string
		bin  []byte
		want *Reply
	}{
		{"complete", append(pkt(tagPKESK, fakeESK(90)), seipd...), nil},
		{"marker packet after", append(append(pkt(tagPKESK, fakeESK(90)), seipd...), pkt(10, []byte("PGP"))...), ErrEncryptionNeeded},
		{"one octet short", append(pkt(tagPKESK, fakeESK(90)), seipd[:len(seipd)-1]...), ErrEncryptionNeeded},
	} {
		msg := newEncrypted(armored(t, tc.bin, nil, true)).String()
		got := Outgoing(Envelope{From: alice, To: []string{bob}}, strings.NewReader(msg), io.Discard)
		if !sameReply(got, tc.want) {
			t.Errorf("%s: Outgoing = %v (%s), want %v", tc.name, got, reason(got), tc.want)
		}
	}
}

// BenchmarkOutgoing30MiB checks and copies a real 30 MiB encrypted message.
func BenchmarkOutgoing30MiB(b *testing.B) {
	msg := []byte(bigMessage(b, 30<<20, true))
	env := Envelope{From: alice, To: []string{bob}}
	var out bytes.Buffer
	out.Grow(len(msg) + 4096)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		out.Reset()
		if rep := Outgoing(env, bytes.NewReader(msg), &out); rep != nil {
			b.Fatalf("Outgoing: %v (%s)", rep, rep.Reason())
		}
	}
}

// BenchmarkIncomingSmall is a typical Delta Chat message of a few KiB.
func BenchmarkIncomingSmall(b *testing.B) {
	v4, _ := testKeys(b)
	msg := []byte(newEncrypted(armored(b, encryptTo(b, v4, false, bytes.Repeat([]byte("hello "), 500)), nil, false)).String())
	env := Envelope{From: alice, To: []string{bob}}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, rep := Incoming(env, bytes.NewReader(msg), io.Discard); rep != nil {
			b.Fatal(rep)
		}
	}
}
