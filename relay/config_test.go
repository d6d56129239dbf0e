package relay

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// tomlKeys lists the dotted keys of a config struct.
func tomlKeys(prefix string, t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("toml")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		if f.Type.Kind() == reflect.Struct {
			out = append(out, tomlKeys(key+".", f.Type)...)
			continue
		}
		out = append(out, key)
	}
	return out
}

func TestConfigDocCoversEveryKey(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "CONFIG.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range tomlKeys("", reflect.TypeOf(Config{})) {
		if !strings.Contains(string(doc), "`"+k+"`") {
			t.Errorf("docs/CONFIG.md does not document %s", k)
		}
	}
}

func TestConfigFileUnknownKeyIsNamed(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("domain = \"x.test\"\nquota_byts = 5\n[listen]\nimapz = \":1\"\n"), 0o600)
	cfg := Default()
	err := cfg.LoadFile(p)
	if err == nil || !strings.Contains(err.Error(), "quota_byts") || !strings.Contains(err.Error(), "listen.imapz") {
		t.Fatalf("unknown keys: %v", err)
	}
	os.WriteFile(p, []byte("domain = \"x.test\"\nregistration = \"invite\"\n[federation]\nstatic_routes = { \"b.test\" = \"10.0.0.1\" }\n"), 0o600)
	cfg = Default()
	if err := cfg.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Registration != "invite" || cfg.Federation.StaticRoutes["b.test"] != "10.0.0.1" || cfg.QuotaBytes != 500<<20 {
		t.Fatalf("loaded %+v", cfg)
	}
	cfg.Registration = "sometimes"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "registration") {
		t.Fatalf("bad registration: %v", err)
	}
}

// TURN defaults (SPEC section 12): 3478 UDP and TCP, relay range
// 49152-65535, 5-day credentials; dev mode on 127.0.0.1:3478 relaying to
// loopback. Mistakes in the [turn] table are named.
func TestTURNConfigDefaultsAndMistakes(t *testing.T) {
	d := Default().TURN
	if !d.BuiltIn() || d.ListenUDP != ":3478" || d.ListenTCP != ":3478" || d.MinPort != 49152 || d.MaxPort != 65535 || d.TTLHours != 120 || len(d.AllowPeers) != 0 {
		t.Errorf("defaults %+v", d)
	}
	dev := DevDefault()
	dt := dev.TURN
	if !dt.BuiltIn() || dt.ListenUDP != "127.0.0.1:3478" || dt.ListenTCP != "127.0.0.1:3478" || dt.RelayIP != "127.0.0.1" || len(dt.AllowPeers) != 1 || dt.AllowPeers[0] != "127.0.0.0/8" {
		t.Errorf("dev defaults %+v", dt)
	}
	if err := dev.Validate(); err != nil {
		t.Fatal(err)
	}
	ext := Default().TURN
	ext.Server, ext.Secret = "turn.example.org:3478", "s3cret"
	if ext.BuiltIn() || !ext.External() {
		t.Error("an external server leaves the built-in one on")
	}
	for _, c := range []struct {
		edit func(*TURNConfig)
		want string
	}{
		{func(t *TURNConfig) { t.Server = "turn.example.org:3478" }, "turn.server and turn.secret"},
		{func(t *TURNConfig) { t.MinPort, t.MaxPort = 60000, 50000 }, "turn.min_port"},
		{func(t *TURNConfig) { t.MaxPort = 70000 }, "turn.max_port"},
		{func(t *TURNConfig) { t.RelayIP = "2001:db8::1" }, "turn.relay_ip"},
		{func(t *TURNConfig) { t.RelayBind = "anywhere" }, "turn.relay_bind"},
		{func(t *TURNConfig) { t.AllowPeers = []string{"10.0.0.1"} }, "turn.allow_peers"},
		{func(t *TURNConfig) { t.TTLHours = 0 }, "turn.ttl_hours"},
	} {
		cfg := DevDefault()
		c.edit(&cfg.TURN)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %s", cfg.TURN, err, c.want)
		}
	}
}

// A table key given as a string (the old `static_routes = "map[]"`) is
// an error, not an empty table.
func TestConfigFileTableOfWrongTypeIsAnError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	for _, bad := range []string{`"map[]"`, `"b.test=10.0.0.1"`, `5`, `["b.test"]`} {
		os.WriteFile(p, []byte("domain = \"x.test\"\n[federation]\nstatic_routes = "+bad+"\n"), 0o600)
		cfg := Default()
		err := cfg.LoadFile(p)
		if err == nil || !strings.Contains(err.Error(), "federation.static_routes must be a table") {
			t.Errorf("static_routes = %s: err = %v", bad, err)
		}
	}
	for _, good := range []string{`{}`, `{ "b.test" = "10.0.0.1" }`} {
		os.WriteFile(p, []byte("domain = \"x.test\"\n[federation]\nstatic_routes = "+good+"\n"), 0o600)
		cfg := Default()
		if err := cfg.LoadFile(p); err != nil {
			t.Errorf("static_routes = %s: %v", good, err)
		}
	}
	os.WriteFile(p, []byte("domain = \"x.test\"\n[federation.static_routes]\n\"b.test\" = \"10.0.0.1\"\n"), 0o600)
	cfg := Default()
	if err := cfg.LoadFile(p); err != nil || cfg.Federation.StaticRoutes["b.test"] != "10.0.0.1" {
		t.Errorf("[federation.static_routes] table: %v, %v", err, cfg.Federation.StaticRoutes)
	}
}
