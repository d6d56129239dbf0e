package install

import (
	"strings"

	qrcode "github.com/skip2/go-qrcode"
)

// QR renders text as a QR code for a terminal, two modules per character
// cell with Unicode half blocks. Light modules (and the quiet zone) are
// drawn as blocks, as `qrencode -t UTF8` does: on the usual light-on-dark
// terminal the code appears dark on light, which is what scanners expect.
func QR(text string) (string, error) {
	q, err := qrcode.New(text, qrcode.Medium)
	if err != nil {
		return "", err
	}
	bm := q.Bitmap() // true is a dark module; includes the quiet zone
	var b strings.Builder
	for y := 0; y < len(bm); y += 2 {
		for x := range bm[y] {
			top := !bm[y][x]
			bottom := y+1 < len(bm) && !bm[y+1][x]
			switch {
			case top && bottom:
				b.WriteRune('█')
			case top:
				b.WriteRune('▀')
			case bottom:
				b.WriteRune('▄')
			default:
				b.WriteRune(' ')
			}
		}
		b.WriteByte('\n')
	}
	return b.String(), nil
}
