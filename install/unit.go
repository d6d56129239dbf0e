package install

import (
	_ "embed"
	"strings"
)

//go:embed chatrelay.service
var unitTemplate string

// UnitOptions fills the systemd unit.
type UnitOptions struct {
	Binary  string // ExecStart program
	Config  string // passed as --config
	DataDir string // working directory and the only writable path
	User    string // User= and Group=
}

// Unit returns the sandboxed systemd unit that runs `chatrelay serve`.
// It is Type=notify: the server sends READY=1 (NotifyReady) once it listens.
func Unit(o UnitOptions) string {
	return strings.NewReplacer(
		"@BINARY@", o.Binary,
		"@CONFIG@", o.Config,
		"@DATADIR@", o.DataDir,
		"@BACKUPDIR@", BackupDir,
		"@USER@", o.User,
	).Replace(unitTemplate)
}
