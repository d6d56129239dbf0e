package install

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/relay"
)

// ConfigOptions are the values install sets in a new config file.
type ConfigOptions struct {
	Domain    string
	IP        string
	DataDir   string
	ACMEEmail string
	// ProxyPort turns the Shadowsocks proxy on at this port; 0: off.
	ProxyPort int
}

// ConfigFile returns the TOML text of a new config: the keys install sets,
// and every other key of relay.Config commented out with its default, so
// the operator sees what can be changed. The commented keys come from
// relay.Default() by reflection and cannot drift from it.
func ConfigFile(o ConfigOptions) []byte {
	set := map[string]string{"data_dir": strconv.Quote(o.DataDir)}
	if o.IP != "" {
		set["ip"] = strconv.Quote(o.IP)
		// IP mode has no certificate authority to ask.
		set["tls.mode"] = strconv.Quote("selfsigned")
	} else {
		set["domain"] = strconv.Quote(o.Domain)
	}
	if o.ProxyPort != 0 {
		set["proxy.listen"] = strconv.Quote(":" + strconv.Itoa(o.ProxyPort))
	}
	if o.ACMEEmail != "" {
		set["tls.acme_email"] = strconv.Quote(o.ACMEEmail)
	}

	var b strings.Builder
	b.WriteString("# chatrelay configuration, written by `chatrelay install`.\n")
	b.WriteString("# Commented keys show their defaults. After a change:\n")
	b.WriteString("#   systemctl restart chatrelay\n")
	b.WriteString("# `chatrelay install` never overwrites this file.\n\n")
	writeTable(&b, "", reflect.ValueOf(relay.Default()), set)
	return []byte(b.String())
}

// writeTable writes the scalar keys of v, then each nested struct as its
// own [table], as TOML requires.
func writeTable(b *strings.Builder, prefix string, v reflect.Value, set map[string]string) {
	t := v.Type()
	var tables []int
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key, ok := tomlKey(f)
		if !ok {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			tables = append(tables, i)
			continue
		}
		if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
			// An array of tables has no one-line default.
			fmt.Fprintf(b, "# %s: none; add [[%s]] tables at the end (docs/CONFIG.md)\n", key, prefix+key)
			continue
		}
		full := prefix + key
		if val, ok := set[full]; ok {
			fmt.Fprintf(b, "%s = %s\n", key, val)
			continue
		}
		fmt.Fprintf(b, "# %s = %s\n", key, tomlValue(v.Field(i)))
	}
	for _, i := range tables {
		key, _ := tomlKey(t.Field(i))
		fmt.Fprintf(b, "\n[%s%s]\n", prefix, key)
		writeTable(b, prefix+key+".", v.Field(i), set)
	}
}

func tomlKey(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	tag := strings.Split(f.Tag.Get("toml"), ",")[0]
	if tag == "-" || tag == "" {
		return "", false
	}
	return tag, true
}

func tomlValue(v reflect.Value) string {
	if d, ok := v.Interface().(time.Duration); ok {
		return strconv.Quote(d.String())
	}
	switch v.Kind() {
	case reflect.String:
		return strconv.Quote(v.String())
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Float32, reflect.Float64:
		s := strconv.FormatFloat(v.Float(), 'f', -1, 64)
		if !strings.ContainsAny(s, ".eE") {
			s += ".0" // keep it a TOML float
		}
		return s
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = tomlValue(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case reflect.Map:
		// An inline table, keys sorted so the file is the same every time.
		keys := v.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = strconv.Quote(fmt.Sprint(k)) + " = " + tomlValue(v.MapIndex(k))
		}
		if len(parts) == 0 {
			return "{}"
		}
		return "{ " + strings.Join(parts, ", ") + " }"
	default:
		return fmt.Sprintf("%q", fmt.Sprint(v.Interface()))
	}
}
