package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"syscall"
)

// journalWriter puts the syslog priority journald understands in front of
// each log line ("<3>" for errors, sd-daemon(3)), so that the journal
// files a relay's errors at priority err and `journalctl -p err` finds
// them; without it every line of a service's stderr lands at info.
type journalWriter struct{ w io.Writer }

// The slog text handler writes one record per Write, time first, then
// level=LEVEL; a level from an attribute or a message comes later on the
// line, so the first "level=" is the record's own.
func (j journalWriter) Write(p []byte) (int, error) {
	prio := "<6>" // info
	if i := bytes.Index(p, []byte("level=")); i >= 0 {
		rest := p[i+len("level="):]
		switch {
		case bytes.HasPrefix(rest, []byte("ERROR")):
			prio = "<3>"
		case bytes.HasPrefix(rest, []byte("WARN")):
			prio = "<4>"
		case bytes.HasPrefix(rest, []byte("DEBUG")):
			prio = "<7>"
		}
	}
	if _, err := io.WriteString(j.w, prio); err != nil {
		return 0, err
	}
	return j.w.Write(p)
}

// underJournal reports whether f is connected to the journal: systemd sets
// JOURNAL_STREAM to the device and inode of the stream it gave the
// service (systemd.exec(5)), which a child with its own stderr does not
// share.
func underJournal(f *os.File) bool {
	want := os.Getenv("JOURNAL_STREAM")
	if want == "" {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && fmt.Sprintf("%d:%d", st.Dev, st.Ino) == want
}
