package policy

import (
	"strings"
	"testing"
)

func TestArmorChecker(t *testing.T) {
	// PKESK (tag 1, 3 octets) and SEIPD (tag 18, 4 octets), 11 octets:
	// "wQMDAwPSBAECAwQ=" in base64.
	const data = "wQMDAwPSBAECAwQ="
	for _, tc := range []struct {
		name      string
		armor     string
		strictOK  bool
		lenientOK bool
	}{
		{"plain", "-----BEGIN PGP MESSAGE-----\n\n" + data + "\n-----END PGP MESSAGE-----", true, true},
		{"blank lines around", "\n\n-----BEGIN PGP MESSAGE-----\n\n" + data + "\n-----END PGP MESSAGE-----\n \n", true, true},
		{"trailing white space", "-----BEGIN PGP MESSAGE----- \t\n\n" + data + " \n-----END PGP MESSAGE-----\t", true, true},
		{"CRC line", "-----BEGIN PGP MESSAGE-----\n\n" + data + "\n=AAAA\n-----END PGP MESSAGE-----", true, true},
		{"CRC then text", "-----BEGIN PGP MESSAGE-----\n\n" + data + "\n=AAAA\nhello\n-----END PGP MESSAGE-----", false, false},
		{"no padding", "-----BEGIN PGP MESSAGE-----\n\n" + strings.TrimRight(data, "=") + "\n-----END PGP MESSAGE-----", true, true},
		{"data split over lines", "-----BEGIN PGP MESSAGE-----\n\nwQMDA\nwPSBAE\nCAwQ=\n-----END PGP MESSAGE-----", true, true},
		{"data after padding", "-----BEGIN PGP MESSAGE-----\n\n" + data + "\nAAAA\n-----END PGP MESSAGE-----", false, false},
		{"space inside data", "-----BEGIN PGP MESSAGE-----\n\nwQMDA wPSBAECAwQ=\n-----END PGP MESSAGE-----", false, false},
		{"Version header", "-----BEGIN PGP MESSAGE-----\nVersion: x\n\n" + data + "\n-----END PGP MESSAGE-----", false, true},
		{"Charset header", "-----BEGIN PGP MESSAGE-----\nCharset: utf-8\n\n" + data + "\n-----END PGP MESSAGE-----", false, false},
		{"Comment header", "-----BEGIN PGP MESSAGE-----\nComment: Hi Bob, meet me at noon\n\n" + data + "\n-----END PGP MESSAGE-----", false, false},
		{"two Version headers", "-----BEGIN PGP MESSAGE-----\nVersion: a\nVersion: b\n\n" + data + "\n-----END PGP MESSAGE-----", false, false},
		{"long Version header", "-----BEGIN PGP MESSAGE-----\nVersion: " + strings.Repeat("x", maxArmorVersion+1) + "\n\n" + data + "\n-----END PGP MESSAGE-----", false, false},
		{"line over 76 characters", "-----BEGIN PGP MESSAGE-----\n\n" + strings.Repeat("wQMD", 19) + "AwPSBAECAwQ=\n-----END PGP MESSAGE-----", false, false},
		{"no blank line after BEGIN", "-----BEGIN PGP MESSAGE-----\n" + data + "\n-----END PGP MESSAGE-----", false, false},
		{"blank line inside data", "-----BEGIN PGP MESSAGE-----\n\nwQMDA\n\nwPSBAECAwQ=\n-----END PGP MESSAGE-----", false, false},
		{"many blank lines before", strings.Repeat("\n", maxPadLines+1) + "-----BEGIN PGP MESSAGE-----\n\n" + data + "\n-----END PGP MESSAGE-----", false, false},
		{"unknown header", "-----BEGIN PGP MESSAGE-----\nX-Spam: buy\n\n" + data + "\n-----END PGP MESSAGE-----", false, false},
		{"header after data", "-----BEGIN PGP MESSAGE-----\n\nwQMD\nComment: a\nAwPSBAECAwQ=\n-----END PGP MESSAGE-----", false, false},
		{"END of another block", "-----BEGIN PGP MESSAGE-----\n\n" + data + "\n-----END PGP SIGNATURE-----", false, false},
		{"no END", "-----BEGIN PGP MESSAGE-----\n\n" + data, false, false},
	} {
		for _, strict := range []bool{true, false} {
			want := tc.lenientOK
			if strict {
				want = tc.strictOK
			}
			a := armorChecker{strict: strict}
			var err error
			for _, l := range strings.Split(tc.armor, "\n") {
				if err = a.line([]byte(l)); err != nil {
					break
				}
			}
			if err == nil {
				err = a.end()
			}
			if (err == nil) != want {
				t.Errorf("%s (strict %v): %v, want ok=%v", tc.name, strict, err, want)
			}
		}
	}
}
