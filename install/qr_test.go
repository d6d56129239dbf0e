package install

import (
	"strings"
	"testing"
	"unicode/utf8"

	qrcode "github.com/skip2/go-qrcode"
)

func TestQRHalfBlocks(t *testing.T) {
	const text = "DCACCOUNT:https://example.org/new"
	s, err := QR(text)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := qrcode.New(text, qrcode.Medium)
	bm := q.Bitmap()
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) != (len(bm)+1)/2 {
		t.Fatalf("%d lines for %d rows", len(lines), len(bm))
	}
	// Each cell is two modules of one column; check the code round-trips.
	for y, line := range lines {
		if n := utf8.RuneCountInString(line); n != len(bm[0]) {
			t.Fatalf("line %d is %d cells, want %d", y, n, len(bm[0]))
		}
		for x, r := range []rune(line) {
			top := !bm[2*y][x]
			bottom := 2*y+1 < len(bm) && !bm[2*y+1][x]
			want := map[[2]bool]rune{{true, true}: '█', {true, false}: '▀', {false, true}: '▄', {false, false}: ' '}[[2]bool{top, bottom}]
			if r != want {
				t.Fatalf("cell %d,%d is %q, want %q", x, y, r, want)
			}
		}
	}
	// The quiet zone is light: the first line is all full blocks.
	if strings.Trim(lines[0], "█") != "" {
		t.Errorf("first line %q is not quiet zone", lines[0])
	}
}
