package shadowsocks

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// URL is the SIP002 ss:// URL of a server at host:port with key k, named
// tag. SIP002 puts userinfo as base64url(method:password) for the
// classic methods and, for the 2022 methods, as method:password
// percent-encoded (their base64 key would otherwise be base64 again).
func URL(k Key, host string, port int, tag string) string {
	var userinfo string
	if k.is2022() {
		userinfo = url.PathEscape(k.Method) + ":" + url.QueryEscape(k.Password)
	} else {
		userinfo = base64.RawURLEncoding.EncodeToString([]byte(k.Method + ":" + k.Password))
	}
	u := "ss://" + userinfo + "@" + net.JoinHostPort(host, strconv.Itoa(port))
	if tag != "" {
		u += "#" + url.PathEscape(tag)
	}
	return u
}

// ParseURL reads a SIP002 ss:// URL: both userinfo forms.
func ParseURL(s string) (k Key, host string, port int, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return Key{}, "", 0, fmt.Errorf("shadowsocks url: %w", err)
	}
	if u.Scheme != "ss" || u.User == nil {
		return Key{}, "", 0, fmt.Errorf("shadowsocks url: not ss://userinfo@host:port")
	}
	var method, password string
	if pw, ok := u.User.Password(); ok {
		method, password = u.User.Username(), pw
	} else {
		raw := strings.TrimRight(u.User.Username(), "=")
		b, err := base64.RawURLEncoding.DecodeString(raw)
		if err != nil {
			if b, err = base64.RawStdEncoding.DecodeString(raw); err != nil {
				return Key{}, "", 0, fmt.Errorf("shadowsocks url: userinfo is not base64")
			}
		}
		var ok bool
		if method, password, ok = strings.Cut(string(b), ":"); !ok {
			return Key{}, "", 0, fmt.Errorf("shadowsocks url: userinfo is not method:password")
		}
	}
	if k, err = ParseKey(method, password); err != nil {
		return Key{}, "", 0, err
	}
	port, err = strconv.Atoi(u.Port())
	if err != nil || port < 1 || port > 65535 || u.Hostname() == "" {
		return Key{}, "", 0, fmt.Errorf("shadowsocks url: bad host:port %q", u.Host)
	}
	return k, u.Hostname(), port, nil
}
