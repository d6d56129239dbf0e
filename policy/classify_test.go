package policy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// policyCase is one message and what each direction must say about it.
type policyCase struct {
	name string
	msg  string
	to   []string // envelope recipients; default bob
	out  *Reply   // Outgoing from alice; nil: accepted
	in   *Reply   // Incoming from alice; nil: accepted
	kind Kind     // Incoming's kind when accepted
}

// policyCases builds the table shared by the tests and the fuzz seeds.
func policyCases(t testing.TB) []policyCase {
	v4, aead := testKeys(t)
	plain := []byte("Content-Type: text/plain\r\n\r\nHello Bob, a message long enough to need partial lengths. " +
		strings.Repeat("0123456789", 200))
	pubkey := armored(t, encryptTo(t, v4, false, plain), nil, false)
	pubkeyCRC := armored(t, encryptTo(t, v4, false, plain), nil, true)
	seipd2 := armored(t, encryptTo(t, aead, true, plain), nil, false)
	symmetric := armored(t, encryptTo(t, nil, false, []byte("hi")), nil, false)
	withVersion := armored(t, encryptTo(t, v4, false, plain), map[string]string{"Version": "GnuPG v2"}, false)
	withComment := armored(t, encryptTo(t, v4, false, plain), map[string]string{"Comment": "https://example.org"}, false)
	withHash := armored(t, encryptTo(t, v4, false, plain), map[string]string{"Hash": "SHA256"}, false)

	esk := pkt(tagPKESK, fakeESK(90))
	seipd := pkt(tagSEIPD, fakeSEIPD(300))
	synth := func(parts ...[]byte) string {
		return armored(t, bytes.Join(parts, nil), nil, false)
	}
	old := append([]byte{0x84, 90}, fakeESK(90)...) // legacy format, tag 1
	literal := pkt(11, []byte("b\x00\x00\x00\x00\x00Hello"))
	marker := pkt(10, []byte("PGP"))
	seipd3 := pkt(tagSEIPD, append([]byte{3}, fakeSEIPD(40)[1:]...))

	base := newEncrypted(pubkey)
	enc := func(f func(*encryptedMsg)) string { return base.with(f).String() }
	swap := func(m *encryptedMsg) {
		m.Part1, m.Part2Head, m.Armor = m.Part2Head+"\n"+m.Armor, strings.TrimSuffix(m.Part1, "\n\n")+"\n", "\n"
	}
	lines := strings.Split(strings.TrimSpace(pubkey), "\n")
	badB64 := strings.Join(append(append(append([]string{}, lines[:3]...), lines[3][:10]+"*"+lines[3][11:]), lines[4:]...), "\n") + "\n"
	armorWithout := func(s string) string { // drop the blank line after BEGIN
		return strings.Replace(s, "-----\n\n", "-----\n", 1)
	}

	var C []policyCase
	add := func(name, msg string, out, in *Reply, kind Kind) {
		C = append(C, policyCase{name: name, msg: msg, out: out, in: in, kind: kind})
	}
	E := ErrEncryptionNeeded

	// Encrypted messages that pass.
	add("pubkey", base.String(), nil, nil, Encrypted)
	add("pubkey with CRC line", newEncrypted(pubkeyCRC).String(), nil, nil, Encrypted)
	add("SEIPD v2 AEAD", newEncrypted(seipd2).String(), nil, nil, Encrypted)
	add("symmetric (SKESK)", newEncrypted(symmetric).String(), nil, nil, Encrypted)
	add("LF line endings", strings.ReplaceAll(base.String(), "\r\n", "\n"), nil, nil, Encrypted)
	add("no preamble", enc(func(m *encryptedMsg) { m.Preamble = "" }), nil, nil, Encrypted)
	add("blank epilogue", enc(func(m *encryptedMsg) { m.Epilogue = "\n \n" }), nil, nil, Encrypted)
	add("Delta Chat's part headers", enc(func(m *encryptedMsg) {
		m.CType = "multipart/encrypted; protocol=\"application/pgp-encrypted\"; \n\tboundary=\"" + testBoundary + "\""
		m.Part1 = "Content-Type: application/pgp-encrypted; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\n\nVersion: 1\n\n"
		m.Part2Head = "Content-Type: application/octet-stream; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\n"
	}), nil, nil, Encrypted)
	add("no protocol parameter", enc(func(m *encryptedMsg) {
		m.CType = `multipart/encrypted; boundary="` + testBoundary + `"`
	}), E, E, 0)
	add("SEIPD only", newEncrypted(synth(seipd)).String(), nil, nil, Encrypted)
	add("PKESK SKESK PKESK SEIPD", newEncrypted(synth(esk, pkt(tagSKESK, fakeESK(40)), esk, seipd)).String(), nil, nil, Encrypted)
	add("partial lengths", newEncrypted(synth(esk, partialPkt(tagSEIPD, fakeSEIPD(5000), 9))).String(), nil, nil, Encrypted)
	add("partial lengths ending in zero", newEncrypted(synth(esk, partialPkt(tagSEIPD, fakeSEIPD(1024), 9))).String(), nil, nil, Encrypted)
	add("two- and five-octet lengths", newEncrypted(synth(esk, seipd[:1], []byte{255, 0, 0, 1, 44}, seipd[3:])).String(), nil, nil, Encrypted)
	add("no blank line after BEGIN", newEncrypted(armorWithout(pubkey)).String(), E, E, 0)
	add("Version: 1 with white space", enc(func(m *encryptedMsg) {
		m.Part1 = strings.Replace(m.Part1, "Version: 1\n", "\n  Version: 1  \n\n", 1)
	}), nil, nil, Encrypted)
	add("Content-Transfer-Encoding 7bit", enc(func(m *encryptedMsg) {
		m.Part2Head += "Content-Transfer-Encoding: 7bit\n"
	}), nil, nil, Encrypted)

	// Armor headers: refused when sending, accepted when receiving.
	add("armor Version header", newEncrypted(withVersion).String(), E, nil, Encrypted)
	add("armor Comment header", newEncrypted(withComment).String(), E, E, 0)
	add("armor Hash header", newEncrypted(withHash).String(), E, E, 0)

	// Structure.
	add("only the armor part", enc(func(m *encryptedMsg) {
		m.Part1 = m.Part2Head + "\n" + m.Armor
		m.Part2Head, m.Armor, m.NoClose, m.Epilogue = "", "", true, "--"+testBoundary+"--\n"
	}), E, E, 0)
	add("only the version part", enc(func(m *encryptedMsg) {
		m.Part2Head, m.Armor, m.NoClose = "", "", true
		m.Part1 += "--" + testBoundary + "--\n"
	}), E, E, 0)
	add("three parts", enc(func(m *encryptedMsg) { m.MoreParts = []string{"Content-Type: text/plain\n\nhello\n"} }), E, E, 0)
	add("parts swapped", enc(swap), E, E, 0)
	add("part 2 text/plain", enc(func(m *encryptedMsg) {
		m.Part2Head = strings.Replace(m.Part2Head, "application/octet-stream", "text/plain", 1)
	}), E, E, 0)
	add("part 1 text/plain", enc(func(m *encryptedMsg) {
		m.Part1 = strings.Replace(m.Part1, "application/pgp-encrypted", "text/plain", 1)
	}), E, E, 0)
	add("top-level multipart/mixed", enc(func(m *encryptedMsg) {
		m.CType = `multipart/mixed; boundary="` + testBoundary + `"`
	}), E, E, 0)
	add("wrong protocol", enc(func(m *encryptedMsg) {
		m.CType = `multipart/encrypted; protocol="application/pkcs7-mime"; boundary="` + testBoundary + `"`
	}), E, E, 0)
	add("Version: 2", enc(func(m *encryptedMsg) {
		m.Part1 = strings.Replace(m.Part1, "Version: 1", "Version: 2", 1)
	}), E, E, 0)
	add("version part with more text", enc(func(m *encryptedMsg) {
		m.Part1 = strings.Replace(m.Part1, "Version: 1", "Version: 1\nBuy now", 1)
	}), E, E, 0)
	add("no close delimiter", enc(func(m *encryptedMsg) { m.NoClose = true }), E, E, 0)
	add("nested multipart", enc(func(m *encryptedMsg) {
		m.Part2Head = "Content-Type: multipart/mixed; boundary=\"inner\"\n"
		m.Armor = "--inner\nContent-Type: application/octet-stream\n\n" + m.Armor + "--inner--\n"
	}), E, E, 0)
	add("base64 transfer encoding", enc(func(m *encryptedMsg) {
		m.Part2Head += "Content-Transfer-Encoding: base64\n"
	}), E, E, 0)
	add("text/plain holding an armored message", toCRLF("From: <"+alice+">\nTo: <"+bob+">\nSubject: hi\nContent-Type: text/plain\n\n"+pubkey), E, E, 0)
	add("no Content-Type", toCRLF("From: <"+alice+">\nTo: <"+bob+">\nSubject: hi\n\nhello\n"), E, E, 0)

	// Armor.
	add("text before armor", newEncrypted("Hello Bob\n"+pubkey).String(), E, E, 0)
	add("text after armor", newEncrypted(pubkey+"PS: hello\n").String(), E, E, 0)
	add("two armored messages", newEncrypted(pubkey+pubkey).String(), E, E, 0)
	add("bad base64", newEncrypted(badB64).String(), E, E, 0)
	add("malformed CRC line", newEncrypted(strings.Replace(pubkeyCRC, "\n=", "\n=A", 1)).String(), E, E, 0)
	add("no END line", newEncrypted(strings.Replace(pubkey, "-----END PGP MESSAGE-----", "", 1)).String(), E, E, 0)
	add("PGP SIGNATURE block", newEncrypted(strings.ReplaceAll(pubkey, "PGP MESSAGE", "PGP SIGNATURE")).String(), E, E, 0)
	add("empty armor", newEncrypted("-----BEGIN PGP MESSAGE-----\n\n-----END PGP MESSAGE-----\n").String(), E, E, 0)

	// Packets.
	add("packet after SEIPD", newEncrypted(synth(esk, seipd, marker)).String(), E, E, 0)
	add("two SEIPD", newEncrypted(synth(esk, seipd, seipd)).String(), E, E, 0)
	add("literal data instead of SEIPD", newEncrypted(synth(esk, literal)).String(), E, E, 0)
	add("marker packet first", newEncrypted(synth(marker, esk, seipd)).String(), E, E, 0)
	add("legacy format header", newEncrypted(synth(old, seipd)).String(), E, E, 0)
	add("PKESK only", newEncrypted(synth(esk)).String(), E, E, 0)
	add("truncated SEIPD", newEncrypted(synth(esk, seipd[:len(seipd)-1])).String(), E, E, 0)
	add("partial length in PKESK", newEncrypted(synth(partialPkt(tagPKESK, fakeESK(600), 9), seipd)).String(), E, E, 0)
	add("SEIPD version 3", newEncrypted(synth(esk, seipd3)).String(), E, E, 0)
	add("empty SEIPD", newEncrypted(synth(esk, pkt(tagSEIPD, nil))).String(), E, E, 0)

	// SecureJoin.
	add("securejoin vc-request", secureJoinMsg("vc-request", "secure-join: vc-request"), nil, nil, SecureJoin)
	add("securejoin vg-request", secureJoinMsg("vg-request", "Secure-Join: vg-request\n"), nil, nil, SecureJoin)
	add("securejoin text/plain", toCRLF("From: <"+alice+">\nTo: <"+bob+">\nSecure-Join: vc-request\nMIME-Version: 1.0\nContent-Type: text/plain\n\nsecure-join: vc-request\n"), nil, nil, SecureJoin)
	add("securejoin wrong body", secureJoinMsg("vc-request", "secure-join: vc-request\nHi Bob, buy now"), E, E, 0)
	add("securejoin mismatched step", secureJoinMsg("vc-request", "secure-join: vg-request"), E, E, 0)
	add("securejoin later step in cleartext", secureJoinMsg("vc-request-with-auth", "secure-join: vc-request-with-auth"), E, E, 0)
	add("securejoin extra part", strings.Replace(secureJoinMsg("vc-request", "secure-join: vc-request"), "--sj--", "--sj\r\nContent-Type: text/plain\r\n\r\nhello\r\n--sj--", 1), E, E, 0)
	add("securejoin html part", strings.Replace(secureJoinMsg("vc-request", "secure-join: vc-request"), "text/plain", "text/html", 1), E, E, 0)
	add("two Secure-Join fields", strings.Replace(secureJoinMsg("vc-request", "secure-join: vc-request"), "Subject:", "Secure-Join: vg-request\r\nSubject:", 1), ErrMalformed, ErrMalformed, 0)
	add("securejoin base64 part", strings.Replace(secureJoinMsg("vc-request", "c2VjdXJlLWpvaW46IHZjLXJlcXVlc3Q="), "charset=utf-8", "charset=utf-8\r\nContent-Transfer-Encoding: base64", 1), E, E, 0)

	// Autocrypt Setup Message.
	C = append(C, policyCase{name: "setup message to oneself", msg: setupMsg(alice), to: []string{alice}, kind: SetupMessage})
	C = append(C, policyCase{name: "setup message to someone else", msg: setupMsg(bob), out: E, in: E})
	C = append(C, policyCase{name: "setup message to oneself and another", msg: setupMsg(alice), to: []string{alice, bob}, out: E, in: E})

	// Bounces, accepted only when received.
	add("bounce", bounceMsg("MAILER-DAEMON@example.org", true), ErrFromMismatch, nil, Bounce)
	add("bounce without Auto-Submitted", bounceMsg("MAILER-DAEMON@example.org", false), ErrFromMismatch, E, 0)
	add("report from someone else", bounceMsg(alice, true), E, E, 0)

	// Header section.
	add("header without colon", "From: <"+alice+">\r\nnot a header\r\n\r\n", ErrMalformed, ErrMalformed, 0)
	add("bare CR in header", "From: <"+alice+">\r\nSubject: a\rb\r\n\r\n", ErrMalformed, ErrMalformed, 0)
	add("two Content-Type fields", enc(func(m *encryptedMsg) { m.Extra = "Content-Type: text/plain\n" }), ErrMalformed, ErrMalformed, 0)
	add("white space header line", enc(func(m *encryptedMsg) { m.Extra = "X-A: b\n \n" }), ErrMalformed, ErrMalformed, 0)
	add("header too big", enc(func(m *encryptedMsg) { m.Extra = strings.Repeat("X-Filler: 0123456789\n", maxHeaderLines) }), ErrHeaderTooBig, ErrHeaderTooBig, 0)
	add("line too long", enc(func(m *encryptedMsg) { m.Preamble = strings.Repeat("x", maxLineLen) + "\n" }), ErrLineTooLong, ErrLineTooLong, 0)
	add("empty message", "", ErrFromMismatch, ErrMalformed, 0)
	add("two From fields", enc(func(m *encryptedMsg) { m.Extra = "From: <" + alice + ">\n" }), ErrFromMismatch, ErrMalformed, 0)
	return C
}

// wantWhy holds, for refusals that could happen for the wrong reason,
// what Reason must contain (one of the alternatives split by "|").
var wantWhy = map[string]string{
	"armor Version header":                  "armor header",
	"only the armor part":                   "part 1 is application/octet-stream",
	"only the version part":                 "1 MIME parts, want 2",
	"three parts":                           "more than 2 MIME parts",
	"Version: 2":                            "unexpected text part body",
	"nested multipart":                      "nested multipart",
	"text after armor":                      "text after the armor",
	"two armored messages":                  "text after the armor",
	"bad base64":                            "invalid base64",
	"malformed CRC line":                    "checksum",
	"packet after SEIPD":                    "after the SEIPD",
	"two SEIPD":                             "after the SEIPD",
	"literal data instead of SEIPD":         "tag 11",
	"marker packet first":                   "tag 10",
	"legacy format header":                  "legacy",
	"PKESK only":                            "no SEIPD",
	"truncated SEIPD":                       "truncated",
	"partial length in PKESK":               "partial length",
	"SEIPD version 3":                       "SEIPD version 3",
	"empty SEIPD":                           "empty SEIPD",
	"securejoin extra part":                 "more than 1 MIME parts",
	"securejoin mismatched step":            "unexpected text part body",
	"setup message to someone else":         "not to oneself",
	"bounce without Auto-Submitted":         "Auto-Submitted",
	"report from someone else":              "cleartext multipart/report|not from mailer-daemon",
	"text/plain holding an armored message": "cleartext text/plain",
}

func checkWhy(t *testing.T, name string, got *Reply) {
	t.Helper()
	why, ok := wantWhy[name]
	if !ok || !errors.Is(got, ErrEncryptionNeeded) {
		return
	}
	for _, w := range strings.Split(why, "|") {
		if strings.Contains(got.Reason(), w) {
			return
		}
	}
	t.Errorf("refused because %q, want %q", got.Reason(), why)
}

func envFor(c policyCase) Envelope {
	to := c.to
	if to == nil {
		to = []string{bob}
	}
	return Envelope{From: alice, To: to}
}

func TestOutgoingTable(t *testing.T) {
	for _, c := range policyCases(t) {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			got := Outgoing(envFor(c), strings.NewReader(c.msg), &out)
			if !sameReply(got, c.out) {
				t.Fatalf("Outgoing = %v (%s), want %v", got, reason(got), c.out)
			}
			checkWhy(t, c.name, got)
			if got == nil {
				checkCRLF(t, out.Bytes())
			}
		})
	}
}

func TestIncomingTable(t *testing.T) {
	for _, c := range policyCases(t) {
		t.Run(c.name, func(t *testing.T) {
			env := envFor(c)
			env.Authenticated = "example.org" // alice's and the bounces' domain
			if strings.Contains(c.msg, "MAILER-DAEMON") {
				env.From = "" // the null reverse-path of bounces
			}
			var out bytes.Buffer
			v, got := Incoming(env, strings.NewReader(c.msg), &out)
			if !sameReply(got, c.in) {
				t.Fatalf("Incoming = %v (%s), want %v", got, reason(got), c.in)
			}
			checkWhy(t, c.name, got)
			if got != nil {
				return
			}
			checkCRLF(t, out.Bytes())
			if v.Kind != c.kind {
				t.Errorf("Kind = %v, want %v", v.Kind, c.kind)
			}
			if v.From == "" || v.From != strings.ToLower(v.From) {
				t.Errorf("From = %q, want the lower-cased From: address", v.From)
			}
			if v.DropEnvelopeSender {
				t.Errorf("DropEnvelopeSender set though MAIL FROM equals From:")
			}
		})
	}
}

// appendDiffers lists the cases where Append and Incoming disagree.
var appendDiffers = map[string]*Reply{
	"bounce": ErrEncryptionNeeded, // only received bounces pass
	// A setup message is appended by its From: (alice), whatever the
	// envelope said.
	"setup message to someone else":        nil,
	"setup message to oneself and another": nil,
	// From: is only looked at for setup messages, but two are refused
	// like any other doubled field.
	"empty message": ErrEncryptionNeeded,
}

// TestAppendTable: APPEND accepts what Incoming accepts, with the
// exceptions above, and copies the message unchanged.
func TestAppendTable(t *testing.T) {
	for _, c := range policyCases(t) {
		t.Run(c.name, func(t *testing.T) {
			want := c.in
			if w, ok := appendDiffers[c.name]; ok {
				want = w
			}
			var out bytes.Buffer
			got := Append(alice, strings.NewReader(c.msg), &out)
			if !sameReply(got, want) {
				t.Fatalf("Append = %v (%s), want %v", got, reason(got), want)
			}
			if got == nil && out.String() != c.msg {
				t.Errorf("Append changed the message")
			}
		})
	}
}

func TestAppendSetupMessageFromSomeoneElse(t *testing.T) {
	msg := strings.Replace(setupMsg(alice), "From: <"+alice+">", "From: <"+bob+">", 1)
	if got := Append(alice, strings.NewReader(msg), io.Discard); !errors.Is(got, ErrEncryptionNeeded) {
		t.Errorf("Append = %v, want %v", got, ErrEncryptionNeeded)
	}
}

func TestOutgoingRefusesFromMismatch(t *testing.T) {
	v4, _ := testKeys(t)
	msg := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, false)).with(func(m *encryptedMsg) {
		m.From = "mallory00@example.org"
	}).String()
	got := Outgoing(Envelope{From: alice, To: []string{bob}}, strings.NewReader(msg), io.Discard)
	if got != ErrFromMismatch || got.Code != 500 {
		t.Errorf("Outgoing = %v, want %v", got, ErrFromMismatch)
	}
	// The same with a different case is the same address.
	msg = strings.ReplaceAll(msg, "mallory00@example.org", strings.ToUpper(alice))
	if got := Outgoing(Envelope{From: alice, To: []string{bob}}, strings.NewReader(msg), io.Discard); got != nil {
		t.Errorf("Outgoing with From: in upper case = %v, want nil", got)
	}
}

func TestIncomingDropsDifferingEnvelopeSender(t *testing.T) {
	v4, _ := testKeys(t)
	msg := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, false)).with(func(m *encryptedMsg) {
		m.From = "Alice0001@Example.ORG"
	}).String()
	for _, tc := range []struct {
		mailFrom string
		drop     bool
	}{
		{alice, false},
		{"ALICE0001@example.org", false},
		{"bounces+123@lists.example.org", true},
		{"", false}, // already empty
	} {
		v, rep := Incoming(Envelope{From: tc.mailFrom, To: []string{bob}}, strings.NewReader(msg), io.Discard)
		if rep != nil {
			t.Fatalf("MAIL FROM %q: %v", tc.mailFrom, rep)
		}
		if v.DropEnvelopeSender != tc.drop || v.From != alice {
			t.Errorf("MAIL FROM %q: verdict %+v, want From %q DropEnvelopeSender %v", tc.mailFrom, v, alice, tc.drop)
		}
	}
}

func TestIncomingSetupMessageToOneself(t *testing.T) {
	v, rep := Incoming(Envelope{From: alice, To: []string{alice}}, strings.NewReader(setupMsg(alice)), io.Discard)
	if rep != nil || v.Kind != SetupMessage {
		t.Errorf("Incoming = %+v, %v; want a setup message", v, rep)
	}
}

func TestOutgoingCleansHeader(t *testing.T) {
	in := "Received: from [192.0.2.1] (helo=x)\n\tby relay; Mon, 2 Jun 2025 10:00:00 +0000\n" +
		"From: Alice <" + alice + ">\n" +
		"X-Mailer: Delta Chat\n" +
		"Subject: =?utf-8?q?secret_subject?=\n and more\n" +
		"User-Agent: Foo/1.0\n" +
		"x-originating-ip: [192.0.2.1]\n" +
		"received: by hand\n" +
		"To: <" + bob + ">\n" +
		"Secure-Join: vc-request\n" +
		"MIME-Version: 1.0\n" +
		"Content-Type: text/plain\n" +
		"\n" +
		"secure-join: vc-request\n"
	want := "From: Alice <" + alice + ">\r\n" +
		"Subject: [...]\r\n" +
		"To: <" + bob + ">\r\n" +
		"Secure-Join: vc-request\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain\r\n" +
		"\r\n" +
		"secure-join: vc-request\r\n"
	var out bytes.Buffer
	if rep := Outgoing(Envelope{From: alice, To: []string{bob}}, strings.NewReader(in), &out); rep != nil {
		t.Fatalf("Outgoing: %v (%s)", rep, rep.Reason())
	}
	if out.String() != want {
		t.Errorf("output:\n%q\nwant:\n%q", out.String(), want)
	}
}

func TestIncomingCleansHeader(t *testing.T) {
	in := "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=dkim;\r\n\tb=abc\r\n" +
		"Received: from a by b\r\n" +
		"Authentication-Results: mx.example.net; dkim=pass\r\n" +
		"From: <" + alice + ">\r\n" +
		"Subject: keep me\r\n" +
		"X-Mailer: kept when receiving\r\n" +
		"To: <" + bob + ">\r\n" +
		"Secure-Join: vg-request\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain\r\n" +
		"\r\n" +
		"secure-join: vg-request"
	want := "From: <" + alice + ">\r\n" +
		"Subject: keep me\r\n" +
		"X-Mailer: kept when receiving\r\n" +
		"To: <" + bob + ">\r\n" +
		"Secure-Join: vg-request\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain\r\n" +
		"\r\n" +
		"secure-join: vg-request\r\n"
	var out bytes.Buffer
	v, rep := Incoming(Envelope{From: alice, To: []string{bob}}, strings.NewReader(in), &out)
	if rep != nil {
		t.Fatalf("Incoming: %v (%s)", rep, rep.Reason())
	}
	if v.Kind != SecureJoin {
		t.Errorf("Kind = %v, want %v", v.Kind, SecureJoin)
	}
	if out.String() != want {
		t.Errorf("output:\n%q\nwant:\n%q", out.String(), want)
	}
}

// TestOutgoingKeepsBodyBytes: apart from line endings the body of an
// encrypted message goes out exactly as it came in.
func TestOutgoingKeepsBodyBytes(t *testing.T) {
	v4, _ := testKeys(t)
	msg := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, true)).String()
	var out bytes.Buffer
	if rep := Outgoing(Envelope{From: alice, To: []string{bob}}, strings.NewReader(strings.ReplaceAll(msg, "\r\n", "\n")), &out); rep != nil {
		t.Fatal(rep)
	}
	_, body, _ := strings.Cut(msg, "\r\n\r\n")
	_, gotBody, _ := strings.Cut(out.String(), "\r\n\r\n")
	if gotBody != body {
		t.Errorf("body changed:\n%q\nwant\n%q", gotBody, body)
	}
}

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestReadAndWriteErrors(t *testing.T) {
	errLimit := errors.New("size limit")
	r := io.MultiReader(strings.NewReader("From: <"+alice+">\r\nSubject: x\r\n"), failingReader{errLimit})
	rep := Outgoing(Envelope{From: alice}, r, io.Discard)
	if !errors.Is(rep, ErrReadFailed) || !errors.Is(rep, errLimit) {
		t.Errorf("Outgoing with failing reader = %v, want %v wrapping %v", rep, ErrReadFailed, errLimit)
	}
	errDisk := errors.New("disk full")
	_, rep = Incoming(Envelope{From: alice}, strings.NewReader(secureJoinMsg("vc-request", "secure-join: vc-request")), failingWriter{errDisk})
	if !errors.Is(rep, ErrWriteFailed) || !errors.Is(rep, errDisk) {
		t.Errorf("Incoming with failing writer = %v, want %v wrapping %v", rep, ErrWriteFailed, errDisk)
	}
	rep = Append(alice, strings.NewReader(secureJoinMsg("vc-request", "secure-join: vc-request")), failingWriter{errDisk})
	if !errors.Is(rep, ErrWriteFailed) || !errors.Is(rep, errDisk) {
		t.Errorf("Append with failing writer = %v, want %v wrapping %v", rep, ErrWriteFailed, errDisk)
	}
}

// TestHeaderBoundedWithoutEnd: an endless header section is refused after
// a bounded read.
func TestHeaderBoundedWithoutEnd(t *testing.T) {
	r := &countingReader{r: io.MultiReader(strings.NewReader("From: <"+alice+">\r\n"), endless("X-A: b\r\n"))}
	if rep := Outgoing(Envelope{From: alice}, r, io.Discard); !errors.Is(rep, ErrHeaderTooBig) {
		t.Fatalf("Outgoing = %v, want %v", rep, ErrHeaderTooBig)
	}
	if r.n > maxHeaderBytes+maxLineLen {
		t.Errorf("read %d bytes before refusing", r.n)
	}
	r = &countingReader{r: endless("X-A: " + strings.Repeat("b", 1000) + "\r\n")}
	if rep := Outgoing(Envelope{From: alice}, r, io.Discard); !errors.Is(rep, ErrHeaderTooBig) {
		t.Fatalf("Outgoing = %v, want %v", rep, ErrHeaderTooBig)
	}
	if r.n > maxHeaderBytes+2*maxLineLen {
		t.Errorf("read %d bytes before refusing", r.n)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

type endlessReader struct {
	unit []byte
	off  int
}

func endless(unit string) io.Reader { return &endlessReader{unit: []byte(unit)} }

func (e *endlessReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = e.unit[e.off]
		e.off = (e.off + 1) % len(e.unit)
	}
	return len(p), nil
}

func TestReplyError(t *testing.T) {
	for _, tc := range []struct {
		r    *Reply
		want string
	}{
		{ErrEncryptionNeeded, "523 5.7.1 Encryption Needed: Invalid Unencrypted Mail"},
		{TooMuchMail(alice), "450 4.7.1: Too much mail from " + alice},
		{ErrDKIM("no valid signature"), "554 5.7.1 DKIM check failed: no valid signature"},
		{ErrTooManyRecipients, "452 4.5.3 Too many recipients"},
		{ErrTooBig, "552 5.3.4 Message too big"},
		{ErrNoSuchUser, "550 5.1.1 No such user"},
		{ErrSenderMismatch, "553 5.7.1 Envelope sender must equal the login name"},
		{ErrFromMismatch, "500 5.7.1 From header must equal the envelope sender"},
		{ErrMailboxFull, "552 5.2.2 Mailbox full"},
		{ErrMailboxFullTemp, "452 4.2.2 Mailbox full, try again later"},
		{ErrTLSRequired, "530 5.7.0 Must issue a STARTTLS command first"},
		{AuthRefused("name too short"), "535 5.7.8 name too short"},
	} {
		if got := tc.r.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
	// Every reply of the table: its enhanced code's class is its code's.
	for _, r := range []*Reply{ErrEncryptionNeeded, ErrSenderMismatch, ErrFromMismatch, ErrTooBig,
		ErrNoSuchUser, ErrTooManyRecipients, ErrHeaderTooBig, ErrLineTooLong, ErrMalformed,
		ErrReadFailed, ErrWriteFailed, ErrNoDKIMSignature, ErrTempFailure, ErrRelayDenied,
		ErrBadRcptSyntax, ErrAuthTemp, ErrMailboxFull, ErrMailboxFullTemp, ErrCommandLineTooLong,
		ErrDKIMTemp, ErrIPMismatch, ErrTLSRequired, ErrNoRecipients, ErrBadRecipientCount} {
		if r.Code/100 != r.Enhanced[0] || r.Text == "" {
			t.Errorf("%v: enhanced class differs from the code's, or no text", r)
		}
	}
	var none *Reply
	if none.Error() != "<nil>" || none.Reason() != "" || none.Unwrap() != nil || none.Is(ErrEncryptionNeeded) {
		t.Errorf("methods on a nil *Reply misbehave")
	}
	r := ErrEncryptionNeeded.because("test")
	if !errors.Is(r, ErrEncryptionNeeded) || errors.Is(r, ErrMalformed) || r.Reason() != "test" || ErrEncryptionNeeded.Reason() != "" {
		t.Errorf("because: Is or Reason wrong")
	}
	for k, s := range map[Kind]string{Encrypted: "encrypted", SecureJoin: "securejoin", SetupMessage: "setup-message", Bounce: "bounce", 0: "Kind(0)"} {
		if k.String() != s {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), k.String(), s)
		}
	}
}

func sameReply(got, want *Reply) bool {
	if got == nil || want == nil {
		return got == want
	}
	return errors.Is(got, want)
}

func reason(r *Reply) string {
	if r == nil {
		return ""
	}
	return r.Reason()
}

// checkCRLF fails when out has a line ending other than CRLF.
func checkCRLF(t testing.TB, out []byte) {
	t.Helper()
	if len(out) > 0 && !bytes.HasSuffix(out, crlf) {
		t.Errorf("output does not end with CRLF")
	}
	if n, m := bytes.Count(out, []byte("\n")), bytes.Count(out, crlf); n != m {
		t.Errorf("output has %d LF but %d CRLF", n, m)
	}
	if n, m := bytes.Count(out, []byte("\r")), bytes.Count(out, crlf); n != m {
		t.Errorf("output has %d CR but %d CRLF", n, m)
	}
}
