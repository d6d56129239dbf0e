package relay

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"testing/fstest"
	"time"
)

// Every translation uses only keys English has, with the same printf
// verbs in the same order, so a page never shows "%!d(MISSING)".
func TestWebCatalogueTranslationsMatchEnglish(t *testing.T) {
	cat, err := loadCatalogue(webFS)
	if err != nil {
		t.Fatal(err)
	}
	if len(cat) < 2 {
		t.Fatalf("only %d languages", len(cat))
	}
	verbs := regexp.MustCompile(`%[-+# 0-9.]*[a-zA-Z%]`)
	for lang, m := range cat {
		for k, v := range m {
			en, ok := cat["en"][k]
			if !ok {
				t.Errorf("%s.json: key %q not in en.json", lang, k)
				continue
			}
			if got, want := verbs.FindAllString(v, -1), verbs.FindAllString(en, -1); !slices.Equal(got, want) {
				t.Errorf("%s.json %q: verbs %q, English has %q", lang, k, got, want)
			}
		}
	}
	// The main page is offered in more than English.
	if langs := pages["index"].langs; len(langs) < 2 || langs[0] != "en" {
		t.Errorf("index page languages %v", langs)
	}
}

// A page whose template uses a key English lacks is a build error, and a
// language that misses one of a page's keys is not offered for it.
func TestWebPageLanguagesNeedEveryKey(t *testing.T) {
	fsys := fstest.MapFS{
		"templates/layout.html":       {Data: []byte(`{{define "layout"}}{{.S.a}} {{template "content" .}}{{end}}`)},
		"templates/p.html":            {Data: []byte(`{{define "content"}}{{.S.b}}{{end}}`)},
		"templates/bad.html":          {Data: []byte(`{{define "content"}}{{.S.nope}}{{end}}`)},
		"templates/strings/en.json":   {Data: []byte(`{"a":"A","b":"B"}`)},
		"templates/strings/de.json":   {Data: []byte(`{"a":"Ä","b":"Ö"}`)},
		"templates/strings/ru.json":   {Data: []byte(`{"a":"Я"}`)},
		"templates/strings/fr.json":   {Data: []byte(`{"a":"À","b":"B"}`)},
		"templates/strings/xx.txt":    {Data: []byte(`ignored`)},
		"templates/strings/sub/x.txt": {Data: []byte(`ignored`)},
	}
	cat, err := loadCatalogue(fsys)
	if err != nil {
		t.Fatal(err)
	}
	p, err := loadPage(fsys, cat, "p")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"en", "de", "fr"}; !slices.Equal(p.langs, want) {
		t.Errorf("languages %v, want %v", p.langs, want)
	}
	if _, err := loadPage(fsys, cat, "bad"); err == nil {
		t.Error("a page using an unknown key loaded")
	}
	if _, err := loadPage(fsys, cat, "p", "c"); err == nil {
		t.Error("a page needing an unknown extra key loaded")
	}
}

// A file's sum is computed once per size and mtime.
func TestDownloadsSumCachedBySizeAndMtime(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "app.apk")
	os.WriteFile(f, []byte("version one"), 0o644)
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	os.Chtimes(f, mtime, mtime)
	d := newDownloads(dir)
	sum := func() string {
		t.Helper()
		files, err := d.list()
		if err != nil || len(files) != 1 {
			t.Fatalf("list: %v %v", files, err)
		}
		s, err := d.sha256(files[0])
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := sum()
	// Same size, same mtime: the cached sum stands (and proves the cache).
	os.WriteFile(f, []byte("version two"), 0o644)
	os.Chtimes(f, mtime, mtime)
	if sum() != first {
		t.Fatal("sum computed again for an unchanged size and mtime")
	}
	later := mtime.Add(time.Second)
	os.Chtimes(f, later, later)
	if sum() == first {
		t.Fatal("sum not computed again after the mtime changed")
	}
}

func TestValidDownloadName(t *testing.T) {
	for name, want := range map[string]bool{
		"deltachat.apk": true, "Delta Chat 2.0.exe": true, "ümlaut.zip": true,
		"": false, ".": false, "..": false, ".hidden": false, "a/b": false, `a\b`: false,
		"../x": false, "x\x00": false,
	} {
		if got := validDownloadName(name); got != want {
			t.Errorf("validDownloadName(%q) = %v", name, got)
		}
	}
}
