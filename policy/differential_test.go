package policy

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// The tests in this file hold the rule of SPEC section 5 that anything two
// MIME parsers could read differently is refused, and that cleartext has
// no small carriers. Each case is a message some parser reads as
// cleartext while a lenient reading of it is an encrypted message (or a
// SecureJoin request, or a bounce); every way in must refuse it.

// wayIn runs msg through one of the three checks and returns its refusal.
type wayIn struct {
	name  string
	check func(msg string) *Reply
}

func waysIn() []wayIn {
	return []wayIn{
		{"outgoing", func(msg string) *Reply {
			return Outgoing(Envelope{From: alice, To: []string{bob}}, strings.NewReader(msg), &bytes.Buffer{})
		}},
		{"incoming", func(msg string) *Reply {
			env := Envelope{From: alice, To: []string{bob}, Authenticated: "example.org"}
			_, rep := Incoming(env, strings.NewReader(msg), &bytes.Buffer{})
			return rep
		}},
		{"append", func(msg string) *Reply {
			return Append(alice, strings.NewReader(msg), &bytes.Buffer{})
		}},
	}
}

type refusal struct {
	name string
	msg  string
}

// checkRefusedEverywhere asserts that every way in refuses each case with
// a 5xx policy reply (523 or 554), and that ok passes everywhere, so the
// refusals are not for some unrelated reason.
func checkRefusedEverywhere(t *testing.T, ok string, cases []refusal) {
	t.Helper()
	for _, w := range waysIn() {
		if rep := w.check(ok); rep != nil {
			t.Fatalf("%s: the unaltered message is refused: %v (%s)", w.name, rep, rep.Reason())
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, w := range waysIn() {
				rep := w.check(c.msg)
				if rep == nil {
					t.Errorf("%s: accepted", w.name)
					continue
				}
				if !errors.Is(rep, ErrEncryptionNeeded) && !errors.Is(rep, ErrMalformed) {
					t.Errorf("%s: %v (%s), want %v or %v", w.name, rep, rep.Reason(), ErrEncryptionNeeded, ErrMalformed)
				}
			}
		})
	}
}

// TestParserDifferentialContentType: Content-Type values that Go's mime,
// Python's email and Rust's mailparse read differently.
func TestParserDifferentialContentType(t *testing.T) {
	v4, _ := testKeys(t)
	base := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, false))
	ct := func(v string) string {
		return base.with(func(m *encryptedMsg) { m.CType = v }).String()
	}
	const proto = `multipart/encrypted; protocol="application/pgp-encrypted"; `
	const b = testBoundary
	checkRefusedEverywhere(t, base.String(), []refusal{
		// The example: Go lets the RFC 2231 form win, Python and
		// mailparse keep the plain one.
		{"RFC 2231 boundary beside a plain one", ct(proto + `boundary="A1"; boundary*=utf-8''` + b)},
		{"RFC 2231 boundary only", ct(proto + `boundary*=utf-8''` + b)},
		{"RFC 2231 continuation", ct(proto + `boundary*0="` + b[:5] + `"; boundary*1="` + b[5:] + `"`)},
		{"duplicate boundary", ct(proto + `boundary="A1"; boundary="` + b + `"`)},
		{"duplicate boundary, other case", ct(proto + `boundary="A1"; BOUNDARY="` + b + `"`)},
		{"duplicate protocol", ct(`multipart/encrypted; protocol="text/plain"; protocol="application/pgp-encrypted"; boundary="` + b + `"`)},
		{"semicolon in a quoted value", ct(`multipart/encrypted; protocol="application/pgp-encrypted;boundary=A1"; boundary="` + b + `"`)},
		{"encoded word", ct(proto + `boundary="=?utf-8?q?` + b + `?="`)},
		{"encoded word in the type", ct(`=?utf-8?q?multipart/encrypted?=; protocol="application/pgp-encrypted"; boundary="` + b + `"`)},
		{"comment", ct(`multipart/encrypted (text/plain); protocol="application/pgp-encrypted"; boundary="` + b + `"`)},
		{"comment in a parameter", ct(proto + `boundary=(x)"` + b + `"`)},
		{"backslash escape", ct(proto + `boundary="` + b[:3] + `\` + b[3:] + `"`)},
		{"white space around the slash", ct(`multipart / encrypted; protocol="application/pgp-encrypted"; boundary="` + b + `"`)},
		{"white space before =", ct(proto + `boundary ="` + b + `"`)},
		{"white space after =", ct(proto + `boundary= "` + b + `"`)},
		{"fold inside quotes", ct(proto + `boundary="` + b[:4] + "\n " + b[4:] + `"`)},
		{"unclosed quote", ct(proto + `boundary="` + b)},
		{"text after the quote", ct(proto + `boundary="` + b + `"x`)},
		{"no semicolon between parameters", ct(`multipart/encrypted; protocol="application/pgp-encrypted" boundary="` + b + `"`)},
		{"unquoted value with a tspecial", ct(`multipart/encrypted; protocol=application/pgp-encrypted; boundary="` + b + `"`)},
		{"8-bit byte", ct(proto + "boundary=\"" + b + "\xa0\"")},
		{"control character", ct(proto + "boundary=\"" + b + "\x0b\"")},
		{"boundary with a space", ct(proto + `boundary="a b"`)},
		{"boundary with a parenthesis", ct(proto + `boundary="a(b)"`)},
		{"boundary too long", ct(proto + `boundary="` + strings.Repeat("a", 71) + `"`)},
		{"empty boundary", ct(proto + `boundary=""`)},
		{"no protocol", ct(`multipart/encrypted; boundary="` + b + `"`)},
		{"unknown parameter", ct(proto + `boundary="` + b + `"; x-type=text/plain`)},
		{"two Content-Type fields", base.with(func(m *encryptedMsg) { m.Extra = "Content-Type: text/plain\n" }).String()},
		{"two Content-Type fields, other case", base.with(func(m *encryptedMsg) { m.Extra = "content-type: text/plain\n" }).String()},
	})
}

// TestParserDifferentialBoundaries: delimiter lines that one parser takes
// and another does not.
func TestParserDifferentialBoundaries(t *testing.T) {
	v4, _ := testKeys(t)
	base := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, false))
	const b = testBoundary
	with := func(f func(*encryptedMsg)) string { return base.with(f).String() }
	checkRefusedEverywhere(t, base.String(), []refusal{
		// The example: mailparse takes any line that starts with
		// "--boundary" for a delimiter.
		{"preamble line that starts with the delimiter", with(func(m *encryptedMsg) {
			m.Preamble = "--" + b + " Hello Bob, meet me at noon\n"
		})},
		{"preamble line that starts with --", with(func(m *encryptedMsg) { m.Preamble = "--\n" })},
		{"delimiter with trailing white space", strings.Replace(base.String(), "--"+b+"\r\n", "--"+b+" \r\n", 1)},
		{"close delimiter with trailing white space", strings.Replace(base.String(), "--"+b+"--", "--"+b+"--\t", 1)},
		{"close delimiter followed by text", strings.Replace(base.String(), "--"+b+"--", "--"+b+"--Hello Bob", 1)},
		{"delimiter followed by text", strings.Replace(base.String(), "--"+b+"\r\n", "--"+b+"Hello\r\n", 1)},
		{"longer boundary in a part", with(func(m *encryptedMsg) {
			m.Part1 = "Content-Type: application/pgp-encrypted\n\nVersion: 1\n--" + b + "X\n"
		})},
		{"boundary that is a prefix of the real one", strings.Replace(base.String(), `boundary="`+b+`"`, `boundary="`+b[:10]+`"`, 1)},
		{"delimiter inside a part header", with(func(m *encryptedMsg) {
			m.Part1 = "Content-Type: application/pgp-encrypted\n--" + b + "\n\nVersion: 1\n"
		})},
		{"no close delimiter", with(func(m *encryptedMsg) { m.NoClose = true })},
		{"third part after the close delimiter", with(func(m *encryptedMsg) {
			m.Epilogue = "--" + b + "\nContent-Type: text/plain\n\nHello Bob\n--" + b + "--\n"
		})},
	})
}

// TestParserDifferentialHeaders: header syntax and MIME fields that
// parsers read differently, at the top and in the parts.
func TestParserDifferentialHeaders(t *testing.T) {
	v4, _ := testKeys(t)
	base := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, false))
	with := func(f func(*encryptedMsg)) string { return base.with(f).String() }
	msg := base.String()
	part2 := func(extra string) string {
		return with(func(m *encryptedMsg) { m.Part2Head += extra })
	}
	checkRefusedEverywhere(t, msg, []refusal{
		{"white space before the Content-Type colon", strings.Replace(msg, "Content-Type: multipart", "Content-Type : multipart", 1)},
		{"tab before the colon", strings.Replace(msg, "Content-Type: multipart", "Content-Type\t: multipart", 1)},
		{"white space before a part's colon", strings.Replace(msg, "Content-Type: application/octet-stream", "Content-Type :application/octet-stream", 1)},
		{"no MIME-Version", strings.Replace(msg, "MIME-Version: 1.0\r\n", "", 1)},
		{"MIME-Version with a comment", strings.Replace(msg, "MIME-Version: 1.0", "MIME-Version: 1.0 (or not)", 1)},
		{"MIME-Version 1.1", strings.Replace(msg, "MIME-Version: 1.0", "MIME-Version: 1.1", 1)},
		{"two MIME-Version fields", strings.Replace(msg, "MIME-Version: 1.0", "MIME-Version: 1.0\r\nMIME-Version: 1.0", 1)},
		{"two Content-Transfer-Encoding fields", with(func(m *encryptedMsg) {
			m.Extra = "Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64\n"
		})},
		{"Content-Transfer-Encoding with a comment", with(func(m *encryptedMsg) { m.Extra = "Content-Transfer-Encoding: 7bit (base64)\n" })},
		{"quoted Content-Transfer-Encoding", part2("Content-Transfer-Encoding: \"7bit\"\n")},
		{"NUL in a header", with(func(m *encryptedMsg) { m.Extra = "X-A: a\x00b\n" })},
		{"bare CR in a header", with(func(m *encryptedMsg) { m.Extra = "X-A: a\rContent-Type: text/plain\n" })},
		{"white space line in the header", with(func(m *encryptedMsg) { m.Extra = "X-A: b\n \n" })},
		{"folded first line", "  folded\r\n" + msg},
		{"two Content-Type fields in a part", part2("Content-Type: text/plain\n")},
		{"nested Content-Type in a part", part2("content-type: multipart/mixed; boundary=x\n")},
		{"two Content-Disposition fields in a part", part2("Content-Disposition: attachment\n")},
		{"Content-Disposition with an RFC 2231 filename", with(func(m *encryptedMsg) {
			m.Part2Head = strings.Replace(m.Part2Head, `filename="encrypted.asc"`, `filename*=utf-8''hello%20bob`, 1)
		})},
		{"Content-Disposition of another kind", with(func(m *encryptedMsg) {
			m.Part2Head = strings.Replace(m.Part2Head, "inline;", "form-data;", 1)
		})},
		{"other field in a part", part2("X-Note: Hello Bob, meet me at noon\n")},
		{"MIME-Version in a part", part2("MIME-Version: 1.0\n")},
		{"long Content-Description", with(func(m *encryptedMsg) {
			m.Part2Head = strings.Replace(m.Part2Head, "OpenPGP encrypted message", "Hello Bob, meet me at noon by the old bridge, bring the documents and the key", 1)
		})},
		{"encoded word in Content-Description", with(func(m *encryptedMsg) {
			m.Part2Head = strings.Replace(m.Part2Head, "OpenPGP encrypted message", "=?utf-8?q?hi?=", 1)
		})},
		{"base64 on the armor part", part2("Content-Transfer-Encoding: base64\n")},
		{"quoted-printable on the armor part", part2("Content-Transfer-Encoding: quoted-printable\n")},
		{"quoted-printable on the version part", with(func(m *encryptedMsg) {
			m.Part1 = "Content-Type: application/pgp-encrypted\nContent-Transfer-Encoding: quoted-printable\n\nVersion: 1\n\n"
		})},
		{"base64 on the top level", with(func(m *encryptedMsg) { m.Extra = "Content-Transfer-Encoding: base64\n" })},
		{"charset utf-16 on a part", with(func(m *encryptedMsg) {
			m.Part2Head = strings.Replace(m.Part2Head, `name="encrypted.asc"`, `charset=utf-16; name="encrypted.asc"`, 1)
		})},
		{"unknown parameter on a part", with(func(m *encryptedMsg) {
			m.Part1 = "Content-Type: application/pgp-encrypted; x=y\n\nVersion: 1\n\n"
		})},
		{"NUL in the version part", with(func(m *encryptedMsg) {
			m.Part1 = "Content-Type: application/pgp-encrypted\n\nVersion: 1\x00\n\n"
		})},
	})
}

// TestParserDifferentialSecureJoin: the examples, and more, on a
// cleartext SecureJoin request.
func TestParserDifferentialSecureJoin(t *testing.T) {
	ok := secureJoinMsg("vc-request", "secure-join: vc-request")
	rep := func(old, new string) string { return strings.Replace(ok, old, new, 1) }
	checkRefusedEverywhere(t, ok, []refusal{
		{"RFC 2231 boundary beside a plain one", rep(`boundary="sj"`, `boundary="A1"; boundary*=utf-8''sj`)},
		{"duplicate boundary", rep(`boundary="sj"`, `boundary="A1"; boundary="sj"`)},
		{"comment in Content-Type", rep(`multipart/mixed;`, `multipart/mixed (text/html);`)},
		{"preamble line that starts with the delimiter", rep("\r\n\r\n--sj\r\n", "\r\n\r\n--sj Hello Bob, meet me at noon\r\n--sj\r\n")},
		{"longer boundary in the part", rep("secure-join: vc-request\r\n", "secure-join: vc-request\r\n--sjX\r\nHello Bob\r\n")},
		{"close delimiter followed by text", rep("--sj--", "--sj--Hello Bob")},
		{"white space before a colon", rep("Content-Type: multipart", "Content-Type : multipart")},
		{"no MIME-Version", rep("MIME-Version: 1.0\r\n", "")},
		{"two Content-Type fields in the part", rep("charset=utf-8\r\n", "charset=utf-8\r\nContent-Type: text/html\r\n")},
		{"other field in the part", rep("charset=utf-8\r\n", "charset=utf-8\r\nX-Note: Hello Bob\r\n")},
		{"charset utf-16", rep("charset=utf-8", "charset=utf-16")},
		{"base64 part", rep("charset=utf-8\r\n", "charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n")},
		{"RFC 2231 charset", rep("charset=utf-8", "charset*=utf-8''utf-8")},
		{"two Secure-Join fields", rep("Secure-Join: vc-request", "Secure-Join: vc-request\r\nsecure-join: vc-request")},
		{"second line of text", rep("secure-join: vc-request\r\n", "secure-join: vc-request\r\nHello Bob\r\n")},
	})
}

// TestCleartextCarriersPreambleEpilogue: text, or a lot of white space,
// before and after the parts of an encrypted message or a SecureJoin
// request.
func TestCleartextCarriersPreambleEpilogue(t *testing.T) {
	v4, _ := testKeys(t)
	base := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, false))
	with := func(f func(*encryptedMsg)) string { return base.with(f).String() }
	mib := strings.Repeat("Hello Bob, this is cleartext beside an encrypted message.\n", (1<<20)/58)
	sj := secureJoinMsg("vc-request", "secure-join: vc-request")
	checkRefusedEverywhere(t, base.String(), []refusal{
		{"1 MiB preamble", with(func(m *encryptedMsg) { m.Preamble = mib })},
		{"1 MiB epilogue", with(func(m *encryptedMsg) { m.Epilogue = mib })},
		{"one line of preamble", with(func(m *encryptedMsg) {
			m.Preamble = "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\n"
		})},
		{"one line of epilogue", with(func(m *encryptedMsg) { m.Epilogue = "PS: meet me at noon\n" })},
		{"many blank lines of preamble", with(func(m *encryptedMsg) { m.Preamble = strings.Repeat(" \n", 1000) })},
		{"many blank lines of epilogue", with(func(m *encryptedMsg) { m.Epilogue = strings.Repeat("\n", 1000) })},
		{"text around the version", with(func(m *encryptedMsg) {
			m.Part1 = "Content-Type: application/pgp-encrypted\n\nVersion: 1\n\nHello Bob\n"
		})},
		{"many blank lines around the armor", base.with(func(m *encryptedMsg) { m.Armor = strings.Repeat("\n", 1000) + m.Armor }).String()},
		{"long white space lines of preamble", with(func(m *encryptedMsg) { m.Preamble = strings.Repeat(" \t", 8000) + "\n" })},
		{"long white space after the version line", with(func(m *encryptedMsg) {
			m.Part1 = "Content-Type: application/pgp-encrypted\n\nVersion: 1" + strings.Repeat("\t ", 500) + "\n\n"
		})},
		{"long white space after an armor line", base.with(func(m *encryptedMsg) {
			m.Armor = strings.Replace(m.Armor, "\n", strings.Repeat(" \t", 500)+"\n", 3)
		}).String()},
		{"Secure-Join preamble", strings.Replace(sj, "\r\n\r\n--sj\r\n", "\r\n\r\nHello Bob, meet me at noon\r\n--sj\r\n", 1)},
		{"Secure-Join epilogue", sj + "Hello Bob, meet me at noon\r\n"},
		{"Secure-Join 1 MiB epilogue", sj + strings.ReplaceAll(mib, "\n", "\r\n")},
	})
	// Delta Chat's own shape, one blank line before and after, passes.
	for _, w := range waysIn() {
		m := with(func(m *encryptedMsg) { m.Preamble, m.Epilogue = "\n", "\n" })
		if rep := w.check(m); rep != nil {
			t.Errorf("%s: blank preamble and epilogue refused: %v (%s)", w.name, rep, rep.Reason())
		}
	}
}

// TestCleartextCarriersArmorHeaders: armor headers carry text that a
// client may show; only one short Version header passes, and only when
// received or appended.
func TestCleartextCarriersArmorHeaders(t *testing.T) {
	v4, _ := testKeys(t)
	bin := encryptTo(t, v4, false, []byte("hi"))
	for _, c := range []struct {
		name    string
		headers map[string]string
		in      bool // Incoming and Append accept it
	}{
		{"Version", map[string]string{"Version": "GnuPG v2"}, true},
		{"Comment", map[string]string{"Comment": "Hello Bob, meet me at noon"}, false},
		{"Charset", map[string]string{"Charset": "utf-8"}, false},
		{"Version and Comment", map[string]string{"Version": "GnuPG v2", "Comment": "Hello Bob"}, false},
		{"long Version", map[string]string{"Version": strings.Repeat("Hello Bob ", 10)}, false},
		{"Hash", map[string]string{"Hash": "SHA256"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := newEncrypted(armored(t, bin, c.headers, false)).String()
			for _, w := range waysIn() {
				want := c.in && w.name != "outgoing"
				if rep := w.check(msg); (rep == nil) != want {
					t.Errorf("%s: %v (%s), want accepted=%v", w.name, rep, reason(rep), want)
				}
			}
		})
	}
}

// TestCleartextCarriersBounces: a cleartext bounce passes only as SPEC
// section 5 says: multipart/report of report-type delivery-status, from
// mailer-daemon at the verified domain, Auto-Submitted present and not
// "no", at most 64 KiB.
func TestCleartextCarriersBounces(t *testing.T) {
	ok := bounceMsg("MAILER-DAEMON@example.org", true)
	incoming := func(msg, verified string) *Reply {
		env := Envelope{To: []string{bob}, Authenticated: verified}
		_, rep := Incoming(env, strings.NewReader(msg), &bytes.Buffer{})
		return rep
	}
	if rep := incoming(ok, "example.org"); rep != nil {
		t.Fatalf("a genuine bounce is refused: %v (%s)", rep, rep.Reason())
	}
	rep := func(old, new string) string { return strings.Replace(ok, old, new, 1) }
	for _, c := range []struct {
		name, msg, verified string
	}{
		{"Auto-Submitted: no", rep("auto-replied", "no"), "example.org"},
		{"Auto-Submitted: No with a comment", rep("auto-replied", "No (really)"), "example.org"},
		{"Auto-Submitted empty", rep("auto-replied", ""), "example.org"},
		{"no Auto-Submitted", bounceMsg("MAILER-DAEMON@example.org", false), "example.org"},
		{"two Auto-Submitted fields", rep("Auto-Submitted: auto-replied", "Auto-Submitted: auto-replied\r\nAuto-Submitted: no"), "example.org"},
		{"mailer-daemon of another domain", bounceMsg("MAILER-DAEMON@elsewhere.example", true), "example.org"},
		{"mailer-daemon of a subdomain", bounceMsg("MAILER-DAEMON@mx.example.org", true), "example.org"},
		{"no verified domain", ok, ""},
		{"mailer-daemon of an address literal not connecting", bounceMsg("mailer-daemon@[192.0.2.7]", true), "[192.0.2.8]"},
		{"other report type", rep("report-type=delivery-status", "report-type=disposition-notification"), "example.org"},
		{"no report type", rep("report-type=delivery-status; ", ""), "example.org"},
		{"RFC 2231 report type", rep("report-type=delivery-status", "report-type*=''delivery-status"), "example.org"},
		{"over 64 KiB", rep("The mail could not be delivered.\r\n", strings.Repeat("Hello Bob, meet me at noon.\r\n", (64<<10)/29+1)), "example.org"},
		{"from someone else", bounceMsg(alice, true), "example.org"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := incoming(c.msg, c.verified); got == nil {
				t.Errorf("accepted")
			}
		})
	}
	// An address literal that is the connecting IP passes.
	lit := bounceMsg("mailer-daemon@[192.0.2.7]", true)
	if got := incoming(lit, "[192.0.2.7]"); got != nil {
		t.Errorf("bounce from the connecting address literal refused: %v (%s)", got, got.Reason())
	}
	// Just under 64 KiB passes.
	line := strings.Repeat("x", 98) + "\r\n"
	fill := (64<<10 - len(ok)) / len(line)
	big := rep("The mail could not be delivered.\r\n", strings.Repeat(line, fill))
	if got := incoming(big, "example.org"); got != nil {
		t.Errorf("bounce of %d octets refused: %v (%s)", len(big), got, got.Reason())
	}
}
