package control

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"

	"github.com/chatrelay/chatrelay/internal/safeio"
)

// ReadUpgrade returns the last upgrade's record in dataDir, nil when there
// is none or it cannot be read.
func ReadUpgrade(dataDir string) *Upgrade {
	data, err := readFile(filepath.Join(dataDir, UpgradeFile))
	if err != nil {
		return nil
	}
	var u Upgrade
	if json.Unmarshal(data, &u) != nil {
		return nil
	}
	return &u
}

// WriteUpgrade records u in dataDir, readable by the relay's user.
func WriteUpgrade(dataDir string, u *Upgrade) error {
	data, err := json.MarshalIndent(u, "", "  ")
	if err != nil {
		return err
	}
	return safeio.WriteFile(filepath.Join(dataDir, UpgradeFile), append(data, '\n'), 0o644)
}

// readFile reads at most 1 MiB: the record is small, and the file is in
// a folder other users cannot write.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<20))
}
