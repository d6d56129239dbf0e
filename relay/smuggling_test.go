package relay_test

import (
	"strings"
	"testing"
	"time"
)

// TestIMAPCommandSmugglingOnCleartextPort: on the cleartext IMAP port a
// LOGIN hidden where imapserver, behind the layer, would see a new command
// (after 50 KiB of padding, after a CR without LF) neither logs in nor
// creates an account; the command is refused and the connection closed.
func TestIMAPCommandSmugglingOnCleartextPort(t *testing.T) {
	r := hostileRelay(t, nil)
	const newName = "smuggled1@localhost"
	logins := map[string]string{"an existing account": hBob, "a new account": newName}
	var cases []struct{ name, send string }
	for what, user := range logins {
		login := " LOGIN " + user + " " + password + "\r\n"
		// imapserver's decoder gives up after 51200 bytes of a command
		// (and a byte or two more by the way it counts): the padding
		// lengths around that point put "x LOGIN" at its next command.
		for pad := 51190; pad <= 51200; pad++ {
			cases = append(cases, struct{ name, send string }{
				what + ", padding " + itoa(pad), "a NOOP " + strings.Repeat("x", pad) + "x" + login})
		}
		cases = append(cases, struct{ name, send string }{what + ", bare CR", "a NOOP x\rb" + login})
	}
	before := snapshot(t, r)
	var observed [2]string
	for _, tc := range cases {
		l := newLine(t, dialFrom(t, "", r.AddrOf("imap"), false))
		l.expect("* OK")
		l.send(tc.send)
		lines := l.closedWithin(maxWait + 10*time.Second)
		for _, s := range lines {
			if strings.Contains(s, " OK ") && !strings.HasPrefix(s, "* ") {
				t.Fatalf("%s: %q answered OK: %q", tc.name, s, lines)
			}
		}
		if len(lines) == 0 || !strings.HasPrefix(lines[0], "a BAD") {
			t.Fatalf("%s: replies %q, want a BAD first", tc.name, lines)
		}
		switch tc.name {
		case "a new account, padding 51195":
			observed[0] = joinLines(lines)
		case "a new account, bare CR":
			observed[1] = joinLines(lines)
		}
	}
	if ok, _ := r.Store().AccountExists(newName); ok {
		t.Fatalf("account %s created by a smuggled LOGIN", newName)
	}
	unchanged(t, r, before)
	record(t, "LOGIN of a new account smuggled after 50 KiB of padding", "imap", observed[0]+"; no login, no account")
	record(t, "LOGIN of a new account smuggled after a bare CR", "imap", observed[1]+"; no login, no account")
	stillServed(t, r)
}

func itoa(n int) string {
	const digits = "0123456789"
	if n < 10 {
		return digits[n : n+1]
	}
	return itoa(n/10) + digits[n%10:n%10+1]
}
