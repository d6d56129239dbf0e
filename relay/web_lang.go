package relay

import (
	"net/http"
	"slices"
)

// langChoice is one entry of a page's language switcher: the language's
// own name and a link to this page in it.
type langChoice struct {
	Lang, Name, URL string
	Current         bool
}

// chosenLang is the language a reader picked with the switcher (?lang=),
// if this page has it. A query parameter, not a cookie: the site sets no
// cookies, and the choice is carried on the page's own links.
func (p *page) chosenLang(r *http.Request) string {
	if l := r.URL.Query().Get("lang"); l != "" && slices.Contains(p.langs, l) {
		return l
	}
	return ""
}

// switcher lists the page's languages, each linking to the same URL with
// lang set (an invite token stays in it); nil for a page in one language.
func (p *page) switcher(r *http.Request, current string) []langChoice {
	if len(p.langs) < 2 {
		return nil
	}
	out := make([]langChoice, 0, len(p.langs))
	for _, l := range p.langs {
		q := r.URL.Query()
		q.Set("lang", l)
		out = append(out, langChoice{Lang: l, Name: p.strings[l]["lang_name"], URL: r.URL.Path + "?" + q.Encode(), Current: l == current})
	}
	return out
}
