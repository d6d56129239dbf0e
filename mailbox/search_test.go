package mailbox

import (
	"strings"
	"testing"
)

// A text search reads the message in pieces: a match anywhere, also
// across the pieces and inside a character cut by them, is found, as
// containsFold finds it in the whole text.
func TestSearchStreamsTheWholeMessage(t *testing.T) {
	filler := strings.Repeat("a", searchChunk-3)
	for _, c := range []struct {
		name, text, needle string
	}{
		{"at the start", "Needle" + filler, "needle"},
		{"across a piece", filler + "NEEDLE" + filler, "needle"},
		{"past 1 MiB", strings.Repeat(filler, 40) + "neeDle", "NEEDLE"},
		{"folded character cut by a piece", filler + "xxÄÖ" + filler, "äö"},
		{"absent", strings.Repeat(filler, 3), "needle"},
		{"empty needle", "abc", ""},
		{"needle longer than text", "ne", "needle"},
	} {
		want := containsFold([]byte(c.text), c.needle)
		if got := containsFoldStream(strings.NewReader(c.text), c.needle); got != want {
			t.Errorf("%s: containsFoldStream %v, containsFold %v", c.name, got, want)
		}
		if c.name != "absent" && c.name != "needle longer than text" && !want {
			t.Errorf("%s: no match", c.name)
		}
	}
	for _, c := range []struct {
		text string
		want int64
	}{
		{"a\r\n\r\nb", 1},
		{filler + "\r\n\r\n", int64(len(filler))},
		{filler + "x\r\n\r\n", int64(len(filler)) + 1},
		{"no blank line\r\n", -1},
	} {
		if got := indexStream(strings.NewReader(c.text), []byte("\r\n\r\n")); got != c.want {
			t.Errorf("indexStream(%.20q...) = %d, want %d", c.text, got, c.want)
		}
	}
}
