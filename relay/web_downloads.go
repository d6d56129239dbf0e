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
	"strconv"
	"strings"
	"sync"
	"time"
)

// downloads is the operator's folder of client app files, for places
// where the app stores are gone (SPEC section 9), and the folder of this
// relay's own signed release files. Only regular files directly in a
// folder are served, never dotfiles, and every open goes through an
// os.Root, so neither "..", nor an encoded variant of it, nor a symlink
// can reach outside. A name in the first folder hides the same name in
// the second.
type downloads struct {
	dirs []string

	mu   sync.Mutex
	sums map[string]fileSum // by folder and name
}

// fileSum is a SHA-256 computed once for a file's size and mtime.
type fileSum struct {
	size  int64
	mtime time.Time
	sum   string
}

// download is one row of the /downloads page.
type download struct {
	Name    string
	Size    string
	SHA256  string
	Release bool // one of this relay's own release files
}

// dlFile is a file on offer and the folder it is in.
type dlFile struct {
	fs.FileInfo
	dir int // index into downloads.dirs
}

func newDownloads(dirs ...string) *downloads {
	return &downloads{dirs: dirs, sums: map[string]fileSum{}}
}

// validDownloadName accepts a plain file name: one path element, not
// hidden, nothing a file system or a browser would read as a path.
func validDownloadName(name string) bool {
	return name != "" && len(name) <= 255 && name[0] != '.' &&
		!strings.ContainsAny(name, "/\\\x00") && filepath.IsLocal(name)
}

// listDir returns the files on offer in one folder.
func listDir(dir string) ([]fs.FileInfo, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.Open(".")
	if err != nil {
		return nil, err
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return nil, err
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
	return files, nil
}

// list returns the files on offer in every folder, sorted by name. A
// folder that is not there offers nothing; other errors are returned
// with what the other folders offer.
func (d *downloads) list() ([]dlFile, error) {
	var out []dlFile
	var firstErr error
	seen := map[string]bool{}
	for i, dir := range d.dirs {
		files, err := listDir(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) && firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, fi := range files {
			if !seen[fi.Name()] {
				seen[fi.Name()] = true
				out = append(out, dlFile{fi, i})
			}
		}
	}
	slices.SortFunc(out, func(a, b dlFile) int { return strings.Compare(a.Name(), b.Name()) })
	return out, firstErr
}

// any reports whether there is at least one file to offer.
func (d *downloads) any() bool {
	files, _ := d.list()
	return len(files) > 0
}

// has reports whether name is on offer.
func (d *downloads) has(name string) bool {
	if !validDownloadName(name) {
		return false
	}
	f, _, err := d.open(name)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// sha256 returns the file's SHA-256, from the cache while its size and
// mtime are unchanged.
func (d *downloads) sha256(fi dlFile) (string, error) {
	name := fi.Name()
	key := strconv.Itoa(fi.dir) + "/" + name
	d.mu.Lock()
	c, ok := d.sums[key]
	d.mu.Unlock()
	if ok && c.size == fi.Size() && c.mtime.Equal(fi.ModTime()) {
		return c.sum, nil
	}
	root, err := os.OpenRoot(d.dirs[fi.dir])
	if err != nil {
		return "", err
	}
	defer root.Close()
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
	d.sums[key] = fileSum{size: fi.Size(), mtime: fi.ModTime(), sum: sum}
	d.mu.Unlock()
	return sum, nil
}

// open opens name from the first folder that has it as a regular file.
func (d *downloads) open(name string) (*os.File, fs.FileInfo, error) {
	for _, dir := range d.dirs {
		root, err := os.OpenRoot(dir)
		if err != nil {
			continue
		}
		f, err := root.Open(name)
		root.Close()
		if err != nil {
			continue
		}
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			f.Close()
			continue
		}
		return f, fi, nil
	}
	return nil, nil, fs.ErrNotExist
}

func (w *web) handleDownloads(rw http.ResponseWriter, r *http.Request) {
	files, err := w.dl.list()
	if err != nil {
		w.s.log.Warn("downloads folder", "err", err)
	}
	if len(files) == 0 {
		http.NotFound(rw, r)
		return
	}
	p := pages["downloads"]
	d := w.pageData(p, r)
	d.HasDownloads = true
	for _, fi := range files {
		sum, err := w.dl.sha256(fi)
		if err != nil {
			w.s.log.Warn("downloads: hash", "err", err)
			continue
		}
		dl := download{Name: fi.Name(), Size: humanSize(fi.Size()), SHA256: sum, Release: fi.dir == 1}
		if dl.Release {
			d.HasReleases = true
		}
		d.Downloads = append(d.Downloads, dl)
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
	f, fi, err := w.dl.open(name)
	if err != nil {
		http.NotFound(rw, r)
		return
	}
	defer f.Close()
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
