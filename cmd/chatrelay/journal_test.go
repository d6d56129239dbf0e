package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Under the journal each log line starts with its syslog priority, so
// `journalctl -p err` finds the errors.
func TestJournalLogLinesCarryPriority(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLoggerTo(&buf, "debug", true)
	if err != nil {
		t.Fatal(err)
	}
	log.Error("deliver failed", "err", "boom")
	log.Warn("queue slow")
	log.Info("looks like level=ERROR but is info", "note", "level=WARN")
	log.Debug("detail")
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	want := []string{"<3>level=ERROR ", "<4>level=WARN ", "<6>level=INFO ", "<7>level=DEBUG "}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %q, want it to start %q", lines[i], w)
		}
	}
	// Outside the journal: plain lines with their time, no prefix.
	buf.Reset()
	log, _ = newLoggerTo(&buf, "info", false)
	log.Error("x")
	if !strings.HasPrefix(buf.String(), "time=") {
		t.Errorf("terminal line %q", buf.String())
	}
}

// underJournal believes JOURNAL_STREAM only for the stream it names.
func TestUnderJournal(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	journal, other := open("journal"), open("other")
	fi, _ := journal.Stat()
	st := fi.Sys().(*syscall.Stat_t)
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	if !underJournal(journal) {
		t.Error("the stream JOURNAL_STREAM names is not taken for the journal")
	}
	if underJournal(other) {
		t.Error("another file is taken for the journal")
	}
	t.Setenv("JOURNAL_STREAM", "")
	if underJournal(journal) {
		t.Error("without JOURNAL_STREAM a file is taken for the journal")
	}
}
