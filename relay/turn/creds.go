package turn

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/internal/safeio"
)

// Credentials are TURN REST credentials (SPEC section 2): the user name is
// the expiry in unix seconds, the password the base64 HMAC-SHA1 of the
// user name under the secret shared with the TURN server.
func Credentials(secret []byte, expiry time.Time) (user, password string) {
	user = strconv.FormatInt(expiry.Unix(), 10)
	return user, password64(secret, user)
}

func password64(secret []byte, user string) string {
	mac := hmac.New(sha1.New, secret)
	mac.Write([]byte(user))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Why a user name is refused before its password is looked at.
var (
	errUserName = errors.New("user name is not an expiry time")
	errExpired  = errors.New("credentials expired")
	errTooLong  = errors.New("credentials valid for longer than the relay hands out")
)

// checkUser parses a REST user name and refuses expired ones, and ones
// that expire later than any the relay hands out (with a minute's slack
// for a clock step): only the holder of the secret can make those, and
// the relay never does.
func checkUser(user string, now time.Time, maxTTL time.Duration) error {
	if user == "" || len(user) > 19 || strings.TrimLeft(user, "0123456789") != "" {
		return errUserName
	}
	exp, err := strconv.ParseInt(user, 10, 64)
	if err != nil {
		return errUserName
	}
	if exp <= now.Unix() {
		return errExpired
	}
	if maxTTL > 0 && exp > now.Add(maxTTL+time.Minute).Unix() {
		return errTooLong
	}
	return nil
}

// SecretFile is the name of the TURN secret in the data directory.
const SecretFile = "turn.secret"

// LoadOrCreateSecret reads the TURN secret at path, or makes a random one
// (32 bytes, hex) and writes it there with mode 0600. The secret is the
// file's text without surrounding white space, so an operator may also
// hand the same text to another TURN server as its static-auth-secret.
func LoadOrCreateSecret(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(data))
		if len(s) < 16 {
			return nil, fmt.Errorf("turn secret %s: shorter than 16 characters; delete it to make a new one", path)
		}
		return []byte(s), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("turn secret: %w", err)
	}
	raw := make([]byte, 32)
	rand.Read(raw)
	s := hex.EncodeToString(raw)
	if err := safeio.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("turn secret: %w", err)
	}
	return []byte(s), nil
}
