package mailbox

import (
	"bufio"
	"bytes"
	"io"
	"reflect"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"
)

// sectionItems are the sections FuzzSectionsMatchGoIMAP asks of every
// message.
var sectionItems = []*imap.FetchItemBodySection{
	{}, {Specifier: imap.PartSpecifierHeader}, {Specifier: imap.PartSpecifierText},
	{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"From", "Subject"}},
	{Specifier: imap.PartSpecifierHeader, HeaderFieldsNot: []string{"Subject"}},
	{Part: []int{1}}, {Part: []int{2}}, {Part: []int{1, 1}}, {Part: []int{2, 1}}, {Part: []int{2, 2}},
	{Part: []int{1}, Specifier: imap.PartSpecifierMIME}, {Part: []int{2}, Specifier: imap.PartSpecifierHeader},
	{Part: []int{2}, Specifier: imap.PartSpecifierText}, {Part: []int{1, 2}, Specifier: imap.PartSpecifierMIME},
	{Part: []int{2}, Partial: &imap.SectionPartial{Offset: 3, Size: 9}},
	{Specifier: imap.PartSpecifierText, Partial: &imap.SectionPartial{Offset: 0, Size: 1}},
}

var binaryParts = [][]int{nil, {1}, {2}, {1, 1}, {2, 1}}

// literalOf is what streamSection writes into a literal.
func literalOf(t *testing.T, msg []byte, extract func(w io.Writer, r io.Reader) error, partial *imap.SectionPartial) []byte {
	var out bytes.Buffer
	var announced int64 = -1
	err := streamSection(func() io.Reader { return bytes.NewReader(msg) }, extract, partial, func(size int64) io.WriteCloser {
		announced = size
		return nopCloser{&out}
	})
	if err != nil {
		t.Fatalf("streamSection: %v", err)
	}
	if announced != int64(out.Len()) {
		t.Fatalf("announced %d bytes, wrote %d", announced, out.Len())
	}
	return out.Bytes()
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// hasEmptyMultipart reports whether go-imap's structure has a multipart
// without children, which imapserver cannot write.
func hasEmptyMultipart(bs imap.BodyStructure) bool {
	switch bs := bs.(type) {
	case *imap.BodyStructureMultiPart:
		if len(bs.Children) == 0 {
			return true
		}
		for _, c := range bs.Children {
			if hasEmptyMultipart(c) {
				return true
			}
		}
	case *imap.BodyStructureSinglePart:
		if bs.MessageRFC822 != nil {
			return hasEmptyMultipart(bs.MessageRFC822.BodyStructure)
		}
	}
	return false
}

func depthOf(bs imap.BodyStructure) int {
	switch bs := bs.(type) {
	case *imap.BodyStructureMultiPart:
		d := 0
		for _, c := range bs.Children {
			d = max(d, depthOf(c))
		}
		return d + 1
	case *imap.BodyStructureSinglePart:
		if bs.MessageRFC822 != nil {
			return depthOf(bs.MessageRFC822.BodyStructure) + 1
		}
	}
	return 0
}

// FuzzSectionsMatchGoIMAP: the streaming extraction answers what go-imap's
// in-memory one answers, for any message within the bounds.
func FuzzSectionsMatchGoIMAP(f *testing.F) {
	f.Add([]byte("From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n\r\nx\r\n--c\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n--c--\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: a\n\nA\n--d--\n"))
	f.Add([]byte("Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Disposition: inline; filename=x\r\nContent-Language: en, de\r\n\r\na=3Db=\r\nc\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, item := range sectionItems {
			got := literalOf(t, msg, func(w io.Writer, r io.Reader) error { return writeBodySection(w, r, item) }, item.Partial)
			want := imapserver.ExtractBodySection(bytes.NewReader(msg), item)
			if !bytes.Equal(got, want) {
				t.Fatalf("section %+v: got %q, want %q", item, got, want)
			}
		}
		for _, part := range binaryParts {
			got := literalOf(t, msg, func(w io.Writer, r io.Reader) error { return writeBinarySection(w, r, part) }, nil)
			want := imapserver.ExtractBinarySection(bytes.NewReader(msg), &imap.FetchItemBinarySection{Part: part})
			if !bytes.Equal(got, want) {
				t.Fatalf("binary %v: got %q, want %q", part, got, want)
			}
		}
		want := imapserver.ExtractBodyStructure(bytes.NewReader(msg))
		if !hasEmptyMultipart(want) && depthOf(want) < maxPartDepth {
			if got := bodyStructure(bytes.NewReader(msg)); !reflect.DeepEqual(got, want) {
				t.Fatalf("body structure: got %#v, want %#v", got, want)
			}
		}
		wantH, wantErr := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(msg)))
		gotH, _, gotErr := readHeader(bytes.NewReader(msg))
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("header error %v, want %v", gotErr, wantErr)
		}
		if gotErr == nil && !reflect.DeepEqual(imapserver.ExtractEnvelope(gotH), imapserver.ExtractEnvelope(wantH)) {
			t.Fatalf("envelope differs")
		}
	})
}
