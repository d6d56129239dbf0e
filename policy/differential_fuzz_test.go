package policy

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	message "github.com/emersion/go-message"
)

// FuzzPolicyDifferential checks the policy against three readings of the
// same bytes by code that shares nothing with it: the standard library
// (net/mail, mime, mime/multipart), go-message, and a reading that does
// what Rust's mailparse (Delta Chat's parser) does with parameters and
// delimiters. Whenever a way in accepts a message as encrypted, or as a
// SecureJoin request, every reading must see the same: a disagreement on
// "encrypted or not" is a failure. The policy may refuse what the readings
// accept; it refuses everything that is not exactly the expected shape.
func FuzzPolicyDifferential(f *testing.F) {
	for _, c := range policyCases(f) {
		f.Add([]byte(c.msg))
	}
	for _, s := range differentialSeeds(f) {
		f.Add([]byte(s))
	}
	f.Fuzz(checkDifferential)
}

// FuzzPolicyDifferentialParts is FuzzPolicyDifferential on messages built
// from fuzzed pieces around a real armored OpenPGP message, so that the
// fuzzer spends its time on the MIME structure rather than on making
// valid armor.
func FuzzPolicyDifferentialParts(f *testing.F) {
	v4, _ := testKeys(f)
	arm := armored(f, encryptTo(f, v4, false, []byte("hi")), nil, false)
	base := newEncrypted(arm)
	add := func(m *encryptedMsg) {
		f.Add(m.Extra, m.CType, m.Preamble, m.Part1, m.Part2Head, m.Epilogue)
	}
	add(base)
	b := testBoundary
	add(base.with(func(m *encryptedMsg) {
		m.CType = `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="A1"; boundary*=utf-8''` + b
	}))
	add(base.with(func(m *encryptedMsg) { m.Preamble = "--" + b + " Hello Bob\n" }))
	add(base.with(func(m *encryptedMsg) { m.Epilogue = "\n--" + b + "\nContent-Type: text/plain\n\nHello\n" }))
	add(base.with(func(m *encryptedMsg) { m.Extra = "Content-Type: text/plain\n" }))
	add(base.with(func(m *encryptedMsg) {
		m.Part1 = "Content-Type: application/pgp-encrypted; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\n\nVersion: 1\n\n"
	}))
	f.Fuzz(func(t *testing.T, extra, ctype, preamble, part1, part2Head, epilogue string) {
		m := base.with(func(m *encryptedMsg) {
			m.Extra, m.CType, m.Preamble, m.Part1, m.Part2Head, m.Epilogue = extra, ctype, preamble, part1, part2Head, epilogue
		})
		checkDifferential(t, []byte(m.String()))
	})
}

// checkDifferential runs msg through the three ways in and, if one takes
// it for an encrypted message or a SecureJoin request, through the three
// independent readings, which must agree.
func checkDifferential(t *testing.T, msg []byte) {
	env := Envelope{From: alice, To: []string{bob}, Authenticated: "example.org"}
	v, inRep := Incoming(env, bytes.NewReader(msg), io.Discard)
	outRep := Outgoing(Envelope{From: alice, To: []string{bob}}, bytes.NewReader(msg), io.Discard)
	appRep := Append(alice, bytes.NewReader(msg), io.Discard)
	if outRep == nil && inRep != nil {
		t.Fatalf("Outgoing accepts what Incoming refuses: %v (%s)", inRep, inRep.Reason())
	}
	var kind Kind
	switch {
	case inRep == nil:
		kind = v.Kind
	case appRep == nil:
		// Accepted without a From: Incoming takes.
		kind = appendKind(msg)
	default:
		return
	}
	var want string
	switch kind {
	case Encrypted:
		want = "encrypted"
	case SecureJoin:
		want = "securejoin"
	default:
		return // cleartext by design: setup message, bounce
	}
	for _, r := range []struct {
		name string
		read func([]byte) string
	}{{"net/mail+mime/multipart", stdReading}, {"go-message", goMessageReading}, {"mailparse-like", mailparseReading}} {
		if got := r.read(msg); got != want {
			t.Fatalf("policy accepts the message as %s (incoming %v, outgoing %v, append %v); %s reads it as %q",
				want, inRep, outRep, appRep, r.name, got)
		}
	}
}

// appendKind is what Append takes msg for.
func appendKind(msg []byte) Kind {
	c := newChecker(appending, bytes.NewReader(msg), nil)
	h, rep := readHeader(c.lr, maxHeaderBytes, maxHeaderLines)
	if rep != nil {
		return 0
	}
	from, _ := h.fromAddress()
	k, _ := c.classify(h, Envelope{From: alice, To: []string{alice}}, from)
	return k
}

// differentialSeeds are the attack examples of the hardening issue and
// their relatives, for the fuzzer to start from.
func differentialSeeds(t testing.TB) []string {
	v4, _ := testKeys(t)
	base := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, false))
	b := testBoundary
	sj := secureJoinMsg("vc-request", "secure-join: vc-request")
	return []string{
		base.with(func(m *encryptedMsg) {
			m.CType = `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="A1"; boundary*=utf-8''` + b
		}).String(),
		base.with(func(m *encryptedMsg) { m.Preamble = "--" + b + " Hello Bob\n" }).String(),
		base.with(func(m *encryptedMsg) { m.Epilogue = "Hello Bob\n" }).String(),
		base.with(func(m *encryptedMsg) { m.Extra = "Content-Type: text/plain\n" }).String(),
		strings.Replace(base.String(), "--"+b+"--", "--"+b+"--Hello", 1),
		strings.Replace(base.String(), "Content-Type: multipart", "Content-Type : multipart", 1),
		strings.Replace(sj, `boundary="sj"`, `boundary="A1"; boundary*=utf-8''sj`, 1),
		strings.Replace(sj, "\r\n\r\n--sj\r\n", "\r\n\r\n--sj Hello Bob\r\n--sj\r\n", 1),
		newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), map[string]string{"Comment": "Hello Bob"}, false)).String(),
	}
}

// --- the standard library's reading ---

// stdReading says what net/mail, mime and mime/multipart make of msg:
// "encrypted" for an RFC 3156 message with nothing but white space around
// its parts and its armor, "securejoin" for a request whose only text is
// the SecureJoin line, "" for anything else.
func stdReading(msg []byte) string {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return ""
	}
	body, err := io.ReadAll(m.Body)
	if err != nil {
		return ""
	}
	typ, params := "text/plain", map[string]string{}
	if v := m.Header.Get("Content-Type"); v != "" {
		if typ, params, err = mime.ParseMediaType(v); err != nil {
			return ""
		}
	}
	step := strings.ToLower(strings.TrimSpace(m.Header.Get("Secure-Join")))
	switch {
	case typ == "multipart/encrypted":
		parts := stdParts(body, params["boundary"])
		if len(parts) != 2 {
			return ""
		}
		if t1, _, _ := mime.ParseMediaType(parts[0].Header.Get("Content-Type")); t1 != "application/pgp-encrypted" ||
			strings.TrimSpace(string(parts[0].body)) != "Version: 1" {
			return ""
		}
		t2, _, _ := mime.ParseMediaType(parts[1].Header.Get("Content-Type"))
		if t2 != "application/octet-stream" || !plainEncoding(parts[1].Header.Get("Content-Transfer-Encoding")) ||
			!armoredEncrypted(parts[1].body) {
			return ""
		}
		return "encrypted"

	case step == "vc-request" || step == "vg-request":
		text := body
		cte := m.Header.Get("Content-Transfer-Encoding")
		if typ == "multipart/mixed" {
			parts := stdParts(body, params["boundary"])
			if len(parts) != 1 {
				return ""
			}
			if pt, _, _ := mime.ParseMediaType(parts[0].Header.Get("Content-Type")); pt != "text/plain" {
				return ""
			}
			text, cte = parts[0].body, parts[0].Header.Get("Content-Transfer-Encoding")
		} else if typ != "text/plain" {
			return ""
		}
		if isSecureJoinText(text, cte, step) {
			return "securejoin"
		}
	}
	return ""
}

type stdPart struct {
	Header textproto.MIMEHeader
	body   []byte
}

// stdParts reads the parts of a multipart body with mime/multipart, or
// returns nil when it fails or when the preamble or epilogue (found here by
// its own line scan) holds more than white space.
func stdParts(body []byte, boundary string) []stdPart {
	if !onlyBlankOutside(body, boundary) {
		return nil
	}
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	var parts []stdPart
	for range 10 {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			return nil
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return nil
		}
		parts = append(parts, stdPart{Header: p.Header, body: b})
	}
	return nil
}

// onlyBlankOutside reports whether everything before the first delimiter
// line and after the close delimiter line is white space.
func onlyBlankOutside(body []byte, boundary string) bool {
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	state := 0 // 0 preamble, 1 parts, 2 epilogue
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), " \t\r")
		switch {
		case state == 0 && l == "--"+boundary:
			state = 1
		case state == 1 && l == "--"+boundary+"--":
			state = 2
		case state != 1 && strings.TrimSpace(l) != "":
			return false
		}
	}
	return sc.Err() == nil
}

func plainEncoding(cte string) bool {
	cte = strings.ToLower(strings.TrimSpace(cte))
	return cte == "" || cte == "7bit" || cte == "8bit"
}

// armoredEncrypted reports whether b is one armored PGP MESSAGE, with only
// white space around it, whose packets are an encrypted message, read by
// go-crypto's armor decoder.
func armoredEncrypted(b []byte) bool {
	s := strings.TrimSpace(string(b))
	if !strings.HasPrefix(s, "-----BEGIN PGP MESSAGE-----") || !strings.HasSuffix(s, "-----END PGP MESSAGE-----") {
		return false
	}
	block, err := armor.Decode(strings.NewReader(s))
	if err != nil || block.Type != "PGP MESSAGE" {
		return false
	}
	data, err := io.ReadAll(block.Body)
	return err == nil && refEncryptedPackets(data)
}

// isSecureJoinText reports whether the decoded text is the SecureJoin line
// for step and nothing else.
func isSecureJoinText(text []byte, cte, step string) bool {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "", "7bit", "8bit":
	case "quoted-printable":
		d, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(text)))
		if err != nil {
			return false
		}
		text = d
	default:
		return false
	}
	return strings.EqualFold(strings.TrimSpace(string(text)), "secure-join: "+step)
}

// --- go-message's reading ---

func goMessageReading(msg []byte) string {
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) {
		return ""
	}
	typ, _, err := e.Header.ContentType()
	if err != nil && e.Header.Get("Content-Type") != "" {
		return ""
	}
	if typ == "" {
		typ = "text/plain"
	}
	step := strings.ToLower(strings.TrimSpace(e.Header.Get("Secure-Join")))
	switch {
	case typ == "multipart/encrypted":
		parts := goMessageParts(e)
		if len(parts) != 2 {
			return ""
		}
		t1, _, _ := parts[0].Header.ContentType()
		t2, _, _ := parts[1].Header.ContentType()
		if t1 != "application/pgp-encrypted" || strings.TrimSpace(string(parts[0].body)) != "Version: 1" ||
			t2 != "application/octet-stream" || !armoredEncrypted(parts[1].body) {
			return ""
		}
		return "encrypted"

	case step == "vc-request" || step == "vg-request":
		var text []byte
		switch typ {
		case "multipart/mixed":
			parts := goMessageParts(e)
			if len(parts) != 1 {
				return ""
			}
			if pt, _, _ := parts[0].Header.ContentType(); pt != "text/plain" {
				return ""
			}
			text = parts[0].body
		case "text/plain":
			if text, err = io.ReadAll(e.Body); err != nil {
				return ""
			}
		default:
			return ""
		}
		// go-message has decoded the transfer encoding already.
		if strings.EqualFold(strings.TrimSpace(string(text)), "secure-join: "+step) {
			return "securejoin"
		}
	}
	return ""
}

type goMessagePart struct {
	Header message.Header
	body   []byte
}

func goMessageParts(e *message.Entity) []goMessagePart {
	mr := e.MultipartReader()
	if mr == nil {
		return nil
	}
	var parts []goMessagePart
	for range 10 {
		p, err := mr.NextPart()
		if err == io.EOF {
			return parts
		}
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			return nil
		}
		b, err := io.ReadAll(p.Body)
		if err != nil {
			return nil
		}
		parts = append(parts, goMessagePart{Header: p.Header, body: b})
	}
	return nil
}

// --- a mailparse-like reading ---

// mailparseReading reads msg the way Rust's mailparse (Delta Chat's MIME
// parser) does in the places where it is lenient: the first Content-Type
// field, parameters split on every ';' with the last of two equal names
// winning and an RFC 2231 form used only when the plain name is absent,
// and any line that starts with "--boundary" taken for a delimiter, the
// close delimiter when "--" follows.
func mailparseReading(msg []byte) string {
	hdr, body := mpSplit(msg)
	typ, params := mpContentType(mpFirst(hdr, "content-type"))
	step := strings.ToLower(strings.TrimSpace(mpFirst(hdr, "secure-join")))
	switch {
	case typ == "multipart/encrypted":
		pre, parts, post := mpParts(body, params["boundary"])
		if len(parts) != 2 || strings.TrimSpace(pre) != "" || strings.TrimSpace(post) != "" {
			return ""
		}
		h1, b1 := mpSplit(parts[0])
		h2, b2 := mpSplit(parts[1])
		t1, _ := mpContentType(mpFirst(h1, "content-type"))
		t2, _ := mpContentType(mpFirst(h2, "content-type"))
		if t1 != "application/pgp-encrypted" || strings.TrimSpace(string(b1)) != "Version: 1" ||
			t2 != "application/octet-stream" || !armoredEncrypted(b2) {
			return ""
		}
		return "encrypted"
	case step == "vc-request" || step == "vg-request":
		text, cte := body, mpFirst(hdr, "content-transfer-encoding")
		switch typ {
		case "multipart/mixed":
			pre, parts, post := mpParts(body, params["boundary"])
			if len(parts) != 1 || strings.TrimSpace(pre) != "" || strings.TrimSpace(post) != "" {
				return ""
			}
			h, b := mpSplit(parts[0])
			if t, _ := mpContentType(mpFirst(h, "content-type")); t != "text/plain" {
				return ""
			}
			text, cte = b, mpFirst(h, "content-transfer-encoding")
		case "text/plain":
		default:
			return ""
		}
		if isSecureJoinText(text, cte, step) {
			return "securejoin"
		}
	}
	return ""
}

// mpSplit splits a message at the first empty line into unfolded header
// lines and the body.
func mpSplit(msg []byte) ([]string, []byte) {
	var hdr []string
	rest := msg
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		var line []byte
		if i < 0 {
			line, rest = rest, nil
		} else {
			line, rest = rest[:i], rest[i+1:]
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if (line[0] == ' ' || line[0] == '\t') && len(hdr) > 0 {
			hdr[len(hdr)-1] += " " + strings.TrimSpace(string(line))
			continue
		}
		hdr = append(hdr, string(line))
	}
	return hdr, rest
}

func mpFirst(hdr []string, name string) string {
	for _, l := range hdr {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func mpContentType(v string) (string, map[string]string) {
	if v == "" {
		return "text/plain", nil
	}
	toks := strings.Split(v, ";")
	params := map[string]string{}
	for _, kv := range toks[1:] {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		if len(val) > 1 && val[0] == '"' && val[len(val)-1] == '"' {
			val = val[1 : len(val)-1]
		}
		params[strings.ToLower(strings.TrimSpace(k))] = val // the last wins
	}
	for k, val := range params {
		if plain, ok := strings.CutSuffix(k, "*"); ok {
			if _, has := params[plain]; !has {
				if parts := strings.SplitN(val, "'", 3); len(parts) == 3 {
					params[plain] = parts[2]
				}
			}
		}
	}
	return strings.ToLower(strings.TrimSpace(toks[0])), params
}

// mpParts splits a multipart body at every line that starts with
// "--"+boundary.
func mpParts(body []byte, boundary string) (pre string, parts [][]byte, post string) {
	if boundary == "" {
		return string(body), nil, ""
	}
	delim := []byte("--" + boundary)
	lineStart := func(from int) int {
		for i := from; i < len(body); {
			j := bytes.Index(body[i:], delim)
			if j < 0 {
				return -1
			}
			j += i
			if j == 0 || body[j-1] == '\n' {
				return j
			}
			i = j + 1
		}
		return -1
	}
	first := lineStart(0)
	if first < 0 {
		return string(body), nil, ""
	}
	pre = string(body[:first])
	at := first
	for range 10 {
		end := at + len(delim)
		if end+2 <= len(body) && body[end] == '-' && body[end+1] == '-' {
			return pre, parts, string(body[min(len(body), nextLine(body, end)):])
		}
		start := nextLine(body, end)
		if start >= len(body) {
			return pre, parts, ""
		}
		next := lineStart(start)
		if next < 0 {
			return pre, append(parts, body[start:]), ""
		}
		parts = append(parts, bytes.TrimSuffix(bytes.TrimSuffix(body[start:next], []byte("\n")), []byte("\r")))
		at = next
	}
	return pre, parts, ""
}

func nextLine(b []byte, from int) int {
	i := bytes.IndexByte(b[from:], '\n')
	if i < 0 {
		return len(b)
	}
	return from + i + 1
}

// TestDifferentialReadings checks the readings FuzzPolicyDifferential
// relies on: each sees a genuine message for what it is, and the
// mailparse-like reading sees the examples as cleartext, which is
// why the policy must refuse them.
func TestDifferentialReadings(t *testing.T) {
	v4, _ := testKeys(t)
	base := newEncrypted(armored(t, encryptTo(t, v4, false, []byte("hi")), nil, false))
	sj := secureJoinMsg("vc-request", "secure-join: vc-request")
	readings := map[string]func([]byte) string{
		"std": stdReading, "go-message": goMessageReading, "mailparse-like": mailparseReading,
	}
	for name, read := range readings {
		if got := read([]byte(base.String())); got != "encrypted" {
			t.Errorf("%s reads an encrypted message as %q", name, got)
		}
		if got := read([]byte(sj)); got != "securejoin" {
			t.Errorf("%s reads a SecureJoin request as %q", name, got)
		}
	}
	seeds := differentialSeeds(t)
	for i, want := range map[int]string{0: "", 1: "", 6: "", 7: ""} {
		if got := mailparseReading([]byte(seeds[i])); got != want {
			t.Errorf("mailparse-like reading of seed %d: %q, want %q", i, got, want)
		}
	}
}
