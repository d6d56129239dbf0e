package release

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"aead.dev/minisign"
)

// SumsFile lists the SHA-256 of every release file, as sha256sum prints.
const SumsFile = "SHA256SUMS"

// BinaryName is the file name of a release binary:
// chatrelay-VERSION-GOOS-GOARCH.
func BinaryName(version, target string) string {
	return "chatrelay-" + version + "-" + strings.ReplaceAll(target, "/", "-")
}

// Dist is one release folder as `make release` fills it.
type Dist struct {
	Dir     string
	Version string
	Targets []string // GOOS/GOARCH of the binaries in Dir
	Schema  uint64   // the index schema of this source tree
	Time    int64    // the commit's time (SOURCE_DATE_EPOCH)
}

// Finish writes SHA256SUMS and, with a key, a signature for every binary
// and for SHA256SUMS; every file gets the commit's time as its mtime, so
// that two builds of one commit give the same folder.
func (d Dist) Finish(key *minisign.PrivateKey) error {
	var sums strings.Builder
	var files []string
	for _, t := range d.Targets {
		name := BinaryName(d.Version, t)
		path := filepath.Join(d.Dir, name)
		sum, err := fileSHA256(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(&sums, "%s  %s\n", sum, name)
		files = append(files, name)
		if key != nil {
			m := Meta{Name: name, Version: d.Version, Target: t, Schema: d.Schema, Time: d.Time}
			if err := SignFile(*key, path, m); err != nil {
				return err
			}
			files = append(files, name+SigSuffix)
		}
	}
	sumsPath := filepath.Join(d.Dir, SumsFile)
	if err := os.WriteFile(sumsPath, []byte(sums.String()), 0o644); err != nil {
		return err
	}
	files = append(files, SumsFile)
	if key != nil {
		if err := SignFile(*key, sumsPath, Meta{Name: SumsFile, Version: d.Version, Time: d.Time}); err != nil {
			return err
		}
		files = append(files, SumsFile+SigSuffix)
	}
	mtime := time.Unix(d.Time, 0)
	slices.Sort(files)
	for _, f := range files {
		if err := os.Chtimes(filepath.Join(d.Dir, f), mtime, mtime); err != nil {
			return err
		}
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FileName is the name to store a verified release binary under: the
// name it was signed with, when that is a plain chatrelay-* file name,
// else the one BinaryName makes.
func (v *Verified) FileName() string {
	n := v.Name
	if strings.HasPrefix(n, "chatrelay-") && !strings.ContainsAny(n, "/\\\x00") && filepath.IsLocal(n) && n != SumsFile {
		return n
	}
	return BinaryName(v.Version, v.Target)
}
