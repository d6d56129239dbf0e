package relay

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzConfigFile loads arbitrary TOML over the defaults and validates it:
// no panic, and an error names the file; what Validate accepts has the
// invariants the server relies on.
func FuzzConfigFile(f *testing.F) {
	f.Add("domain = \"chat.example\"\n")
	f.Add("ip = \"192.0.2.1\"\nregistration = \"invite\"\n[listen]\nimaps = \":993\"\n")
	f.Add("domain = \"x.test\"\n[federation]\nstatic_routes = { \"b.test\" = \"10.0.0.1\" }\n")
	f.Add("domain = \"x.test\"\n[limits]\nimap = 10\nimap_per_ip = -1\n")
	f.Add("domain = \"x.test\"\n[tls]\nmode = \"files\"\n")
	f.Add("domain = \"x.test\"\nmax_name_len = 99999999999999999999\n")
	f.Add("[[listen]]\n")
	f.Add("domain = \"\\u0000\"\nquota_byts = 5\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data string) {
		p := filepath.Join(dir, "c.toml")
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, cfg := range []Config{Default(), DevDefault()} {
			if err := cfg.LoadFile(p); err != nil {
				if !strings.Contains(err.Error(), p) {
					t.Fatalf("error does not name the file: %v", err)
				}
				continue
			}
			if cfg.Validate() != nil {
				continue
			}
			if cfg.MinNameLen < 1 || cfg.MaxNameLen < cfg.MinNameLen || cfg.MinPasswordLen < 1 || cfg.DataDir == "" {
				t.Fatalf("validated config breaks an invariant: %+v", cfg)
			}
			if cfg.Limits.IMAP < 0 || cfg.Limits.IMAPPerIP < 0 || cfg.Limits.HTTPS < 0 {
				t.Fatalf("validated config has a negative limit: %+v", cfg.Limits)
			}
			_ = cfg.MailDomain()
			_ = cfg.Lifecycle()
		}
	})
}
