package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// downloads is the operator's folder of client app files, for places
// where the app stores are gone (SPEC section 9). Only regular files
// directly in the folder are served, never dotfiles, and every open goes
// through an os.Root, so neither "..", nor an encoded variant of it, nor a
// symlink can reach outside.
type downloads struct {
	dir string

	mu   sync.Mutex
	sums map[string]fileSum // by name
}

// fileSum is a SHA-256 computed once for a file's size and mtime.
type fileSum struct {
	size  int64
	mtime time.Time
	sum   string
}

// download is one row of the /downloads page.
type download struct {
	Name   string
	Size   string
	SHA256 string
}

func newDownloads(dir string) *downloads {
	return &downloads{dir: dir, sums: map[string]fileSum{}}
}

// validDownloadName accepts a plain file name: one path element, not
// hidden, nothing a file system or a browser would read as a path.
func validDownloadName(name string) bool {
	return name != "" && len(name) <= 255 && name[0] != '.' &&
		!strings.ContainsAny(name, "/\\\x00") && filepath.IsLocal(name)
}

// list returns the files on offer, sorted by name.
func (d *downloads) list() ([]fs.FileInfo, *os.Root, error) {
	root, err := os.OpenRoot(d.dir)
	if err != nil {
		return nil, nil, err
	}
	f, err := root.Open(".")
	if err != nil {
		root.Close()
		return nil, nil, err
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		root.Close()
		return nil, nil, err
	}
	var files []fs.FileInfo
	for _, e := range entries {
		if !validDownloadName(e.Name()) {
			continue
		}
		// Stat through the root: a symlink counts only when it stays
		// inside the folder and ends at a regular file.
		fi, err := root.Stat(e.Name())
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		files = append(files, fi)
	}
	slices.SortFunc(files, func(a, b fs.FileInfo) int { return strings.Compare(a.Name(), b.Name()) })
	return files, root, nil
}

// any reports whether there is at least one file to offer.
func (d *downloads) any() bool {
	files, root, err := d.list()
	if err != nil {
		return false
	}
	root.Close()
	return len(files) > 0
}

// sha256 returns the file's SHA-256, from the cache while its size and
// mtime are unchanged.
func (d *downloads) sha256(root *os.Root, fi fs.FileInfo) (string, error) {
	name := fi.Name()
	d.mu.Lock()
	c, ok := d.sums[name]
	d.mu.Unlock()
	if ok && c.size == fi.Size() && c.mtime.Equal(fi.ModTime()) {
		return c.sum, nil
	}
	f, err := root.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", name, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	d.mu.Lock()
	d.sums[name] = fileSum{size: fi.Size(), mtime: fi.ModTime(), sum: sum}
	d.mu.Unlock()
	return sum, nil
}

func (w *web) handleDownloads(rw http.ResponseWriter, r *http.Request) {
	files, root, err := w.dl.list()
	if err != nil || len(files) == 0 {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			w.s.log.Warn("downloads folder", "err", err)
		}
		if root != nil {
			root.Close()
		}
		http.NotFound(rw, r)
		return
	}
	defer root.Close()
	p := pages["downloads"]
	d := w.pageData(p, r)
	d.HasDownloads = true
	for _, fi := range files {
		sum, err := w.dl.sha256(root, fi)
		if err != nil {
			w.s.log.Warn("downloads: hash", "err", err)
			continue
		}
		d.Downloads = append(d.Downloads, download{Name: fi.Name(), Size: humanSize(fi.Size()), SHA256: sum})
	}
	w.render(rw, p, d)
}

// serveDownload sends one file as an attachment; ranges are honoured, so
// a big download over a bad link can resume.
func (w *web) serveDownload(rw http.ResponseWriter, r *http.Request, name string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		rw.Header().Set("Allow", "GET, HEAD")
		http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !validDownloadName(name) {
		http.NotFound(rw, r)
		return
	}
	root, err := os.OpenRoot(w.dl.dir)
	if err != nil {
		http.NotFound(rw, r)
		return
	}
	defer root.Close()
	f, err := root.Open(name)
	if err != nil {
		http.NotFound(rw, r)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.NotFound(rw, r)
		return
	}
	ctype := mime.TypeByExtension(filepath.Ext(name))
	if ctype == "" || strings.HasPrefix(ctype, "text/html") {
		ctype = "application/octet-stream"
	}
	h := rw.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	http.ServeContent(rw, r, name, fi.ModTime(), f)
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
