package relay_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/chatrelay/chatrelay/internal/testmsg"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/relay/relaytest"
)

func TestMetadataServerEntries(t *testing.T) {
	r := relaytest.Start(t, func(c *relaytest.Cfg) {
		c.AdminContact = "admin@localhost"
		c.TURN.Server = "turn.localhost:3478"
		c.TURN.Secret = "shared-secret"
		c.TURN.TTLHours = 1
	})
	c := login(t, r, "abcdefghi@localhost")
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []imap.Cap{"METADATA", "QUOTA", "ID", "COMPRESS=DEFLATE", "XCHATMAIL", "XDELTAPUSH", imap.CapIdle} {
		if !caps.Has(want) {
			t.Errorf("capability %s missing: %v", want, caps)
		}
	}
	data, err := c.GetMetadata("", []string{
		"/shared/admin", "/shared/vendor/deltachat/maxsmtprecipients", "/shared/vendor/deltachat/turn", "/shared/comment",
	}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	get := func(k string) string {
		v := data.Entries[k]
		if v == nil {
			return "<nil>"
		}
		return string(*v)
	}
	if got := get("/shared/admin"); got != "mailto:admin@localhost" {
		t.Errorf("admin %q", got)
	}
	if got := get("/shared/vendor/deltachat/maxsmtprecipients"); got != "1000" {
		t.Errorf("maxsmtprecipients %q", got)
	}
	if got := get("/shared/comment"); got != "<nil>" {
		t.Errorf("unset comment %q, want NIL", got)
	}
	// host:port:expiry:password, password = base64 HMAC-SHA1(secret, expiry).
	turn := strings.Split(get("/shared/vendor/deltachat/turn"), ":")
	if len(turn) != 4 || turn[0] != "turn.localhost" || turn[1] != "3478" {
		t.Fatalf("turn %v", turn)
	}
	expiry, _ := strconv.ParseInt(turn[2], 10, 64)
	if d := time.Until(time.Unix(expiry, 0)); d < 50*time.Minute || d > 61*time.Minute {
		t.Errorf("turn expiry in %v, want about an hour", d)
	}
	mac := hmac.New(sha1.New, []byte("shared-secret"))
	mac.Write([]byte(turn[2]))
	if turn[3] != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
		t.Errorf("turn password does not verify")
	}
	// Clients cannot write server entries.
	v := []byte("x")
	if err := c.SetMetadata("", map[string]*[]byte{"/shared/comment": &v}).Wait(); err == nil {
		t.Error("client wrote /shared/comment")
	}
}

func TestPushTokenAndQuota(t *testing.T) {
	r := relaytest.Start(t, nil)
	const user = "abcdefghi@localhost"
	c := login(t, r, user)
	for _, tok := range []string{"token-one", "token-two", "token-one"} {
		v := []byte(tok)
		if err := c.SetMetadata("INBOX", map[string]*[]byte{"/private/devicetoken": &v}).Wait(); err != nil {
			t.Fatal(err)
		}
	}
	tokens, err := r.Store().PushTokens(user)
	if err != nil || len(tokens) != 2 || tokens[0] != "token-one" || tokens[1] != "token-two" {
		t.Fatalf("tokens %v %v, want newest first, no duplicates", tokens, err)
	}
	// Tokens expire 90 days after they were last set.
	r.Clock.Advance(91 * 24 * time.Hour)
	if tokens, _ := r.Store().PushTokens(user); len(tokens) != 0 {
		t.Fatalf("expired tokens still live: %v", tokens)
	}

	msg := testmsg.Encrypted(user, user, 5000)
	if err := submit(t, r, user, password, user, []string{user}, msg); err != nil {
		t.Fatal(err)
	}
	quotas, err := c.GetQuotaRoot("INBOX").Wait()
	if err != nil || len(quotas) != 1 {
		t.Fatalf("quota root: %v %v", quotas, err)
	}
	st := quotas[0].Resources[imap.QuotaResourceStorage]
	used, _, _ := r.Store().Quota(user)
	if st.Usage != (used+1023)/1024 || st.Limit != 500*1024 || used < 5000 {
		t.Fatalf("STORAGE %d/%d KiB, store says %d bytes", st.Usage, st.Limit, used)
	}
}

// appversions comes from config; an entry for a file in the downloads
// folder points at this relay and shows only while the file is there.
func TestMetadataAppVersions(t *testing.T) {
	dir := t.TempDir()
	r := relaytest.Start(t, func(c *relaytest.Cfg) {
		c.DownloadsDir = dir
		c.AppVersions = []relay.AppVersion{
			{ClientID: "deltachat-android", VersionInteger: 3062, VersionString: "2.62.0", File: "deltachat-2.62.0.apk"},
			{ClientID: "deltachat-android", SourceID: "mirror", VersionInteger: 3062, VersionString: "2.62.0", DownloadURL: "https://mirror.test/dc.apk"},
			{ClientID: "deltachat-desktop", VersionInteger: 262, VersionString: "2.62.0", File: "deltachat-desktop.AppImage"},
		}
	})
	const entry = "/shared/vendor/deltachat/appversions"
	get := func() string {
		t.Helper()
		c := login(t, r, "abcdefghi@localhost")
		defer c.Close()
		data, err := c.GetMetadata("", []string{entry}, nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		if v := data.Entries[entry]; v != nil {
			return string(*v)
		}
		return ""
	}
	if got, want := get(), `{"clients":[{"clientId":"deltachat-android","sources":[{"sourceId":"mirror","versionInteger":3062,"versionString":"2.62.0","downloadUrl":"https://mirror.test/dc.apk"}]}]}`; got != want {
		t.Errorf("without the files:\n got %s\nwant %s", got, want)
	}
	os.WriteFile(filepath.Join(dir, "deltachat-2.62.0.apk"), []byte("apk"), 0o644)
	os.WriteFile(filepath.Join(dir, "deltachat-desktop.AppImage"), []byte("appimage"), 0o644)
	var got struct {
		Clients []struct {
			ClientID string `json:"clientId"`
			Sources  []struct {
				SourceID       string `json:"sourceId"`
				VersionInteger int64  `json:"versionInteger"`
				VersionString  string `json:"versionString"`
				DownloadURL    string `json:"downloadUrl"`
			} `json:"sources"`
		} `json:"clients"`
	}
	if err := json.Unmarshal([]byte(get()), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Clients) != 2 || got.Clients[0].ClientID != "deltachat-android" || len(got.Clients[0].Sources) != 2 ||
		got.Clients[1].ClientID != "deltachat-desktop" {
		t.Fatalf("appversions %+v", got)
	}
	s := got.Clients[0].Sources[0]
	if s.SourceID != "relay" || s.VersionInteger != 3062 || s.VersionString != "2.62.0" || !strings.HasPrefix(s.DownloadURL, "https://") || !strings.HasSuffix(s.DownloadURL, "/downloads/deltachat-2.62.0.apk") {
		t.Errorf("android from the relay: %+v", s)
	}
	// The URL is one the relay serves.
	resp, body := fetch(t, r, s.DownloadURL[strings.Index(s.DownloadURL, "/downloads/"):])
	if resp.StatusCode != 200 || body != "apk" {
		t.Errorf("download of the advertised file: %d %q", resp.StatusCode, body)
	}
}
