package install

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// FixOwners gives everything under dirs to the user name and its group,
// changing only the entries owned by someone else, and returns how many it
// changed. Missing dirs are skipped.
func FixOwners(name string, dirs ...string) (int, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("user %s: uid %q gid %q", name, u.Uid, u.Gid)
	}
	return fixOwners(uid, gid, dirs...)
}

func fixOwners(uid, gid int, dirs ...string) (int, error) {
	changed := 0
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) && p == dir {
					return filepath.SkipDir
				}
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			st, ok := info.Sys().(*syscall.Stat_t)
			if !ok || int(st.Uid) == uid && int(st.Gid) == gid {
				return nil
			}
			if err := os.Lchown(p, uid, gid); err != nil {
				return err
			}
			changed++
			return nil
		})
		if err != nil {
			return changed, fmt.Errorf("set owners under %s: %w", dir, err)
		}
	}
	return changed, nil
}
