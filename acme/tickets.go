package acme

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/safeio"
)

// Session tickets are encrypted with keys the relay keeps in a file
// (DataDir/tls/ticket-keys, mode 0600), so that clients reconnecting after
// a restart resume their TLS session instead of paying for a full
// handshake: after a restart every client reconnects at once. TLS 1.3
// resumption in crypto/tls always runs a fresh ECDHE exchange
// (psk_dhe_ke), so a stolen ticket key does not open recorded traffic.
const (
	ticketKeysName = "ticket-keys"
	// A key encrypts new tickets for a day, then decrypts for two more.
	ticketKeyEncrypt = 24 * time.Hour
	ticketKeyKeep    = 72 * time.Hour
	ticketKeyLen     = 32
	ticketRecordLen  = 8 + ticketKeyLen // unix seconds, key
	ticketNonceLen   = 12
)

type ticketKey struct {
	created time.Time
	raw     [ticketKeyLen]byte
	aead    cipher.AEAD
}

// ticketKeys wraps and unwraps session tickets (tls.Config.WrapSession and
// UnwrapSession) for every listener of a Manager.
type ticketKeys struct {
	path string // "" keeps the keys in memory only
	now  func() time.Time
	log  *slog.Logger

	mu   sync.Mutex
	keys []*ticketKey // newest first
}

func newTicketKeys(dir string, now func() time.Time, log *slog.Logger) *ticketKeys {
	t := &ticketKeys{now: now, log: log}
	if dir == "" {
		return t
	}
	t.path = filepath.Join(dir, ticketKeysName)
	data, err := os.ReadFile(t.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		log.Warn("cannot read TLS ticket keys; making new ones", "err", err)
	case len(data)%ticketRecordLen != 0:
		log.Warn("TLS ticket key file has a bad length; making new keys", "path", t.path)
	default:
		for len(data) > 0 {
			k := &ticketKey{created: time.Unix(int64(binary.BigEndian.Uint64(data)), 0)}
			copy(k.raw[:], data[8:ticketRecordLen])
			data = data[ticketRecordLen:]
			if err := k.init(); err == nil {
				t.keys = append(t.keys, k)
			}
		}
	}
	return t
}

func (k *ticketKey) init() error {
	block, err := aes.NewCipher(k.raw[:])
	if err != nil {
		return err
	}
	k.aead, err = cipher.NewGCM(block)
	return err
}

// current returns the key that encrypts new tickets, making and storing a
// new one once a day, and drops keys past their time.
func (t *ticketKeys) current() (*ticketKey, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.dropExpired(now)
	if len(t.keys) > 0 && now.Sub(t.keys[0].created) < ticketKeyEncrypt && !now.Before(t.keys[0].created) {
		return t.keys[0], nil
	}
	k := &ticketKey{created: now}
	rand.Read(k.raw[:])
	if err := k.init(); err != nil {
		return nil, err
	}
	t.keys = append([]*ticketKey{k}, t.keys...)
	if err := t.save(); err != nil {
		// The key still serves until the next restart.
		t.log.Warn("cannot store TLS ticket keys; sessions will not resume after a restart", "err", err)
	}
	return k, nil
}

func (t *ticketKeys) dropExpired(now time.Time) {
	keep := t.keys[:0]
	for _, k := range t.keys {
		if age := now.Sub(k.created); age < ticketKeyKeep && age > -time.Hour {
			keep = append(keep, k)
		}
	}
	t.keys = keep
}

func (t *ticketKeys) save() error {
	if t.path == "" {
		return nil
	}
	buf := make([]byte, 0, len(t.keys)*ticketRecordLen)
	for _, k := range t.keys {
		buf = binary.BigEndian.AppendUint64(buf, uint64(k.created.Unix()))
		buf = append(buf, k.raw[:]...)
	}
	if err := os.MkdirAll(filepath.Dir(t.path), 0o700); err != nil {
		return err
	}
	return safeio.WriteFile(t.path, buf, 0o600)
}

// wrap is tls.Config.WrapSession: the session state sealed with the
// current key, its nonce in front.
func (t *ticketKeys) wrap(_ tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	plain, err := ss.Bytes()
	if err != nil {
		return nil, err
	}
	k, err := t.current()
	if err != nil {
		return nil, fmt.Errorf("ticket key: %w", err)
	}
	out := make([]byte, ticketNonceLen, ticketNonceLen+len(plain)+k.aead.Overhead())
	rand.Read(out)
	return k.aead.Seal(out, out, plain, nil), nil
}

// unwrap is tls.Config.UnwrapSession. A ticket no kept key opens is
// ignored (nil, nil): the client gets a full handshake.
func (t *ticketKeys) unwrap(identity []byte, _ tls.ConnectionState) (*tls.SessionState, error) {
	if len(identity) < ticketNonceLen {
		return nil, nil
	}
	t.mu.Lock()
	t.dropExpired(t.now())
	keys := append([]*ticketKey(nil), t.keys...)
	t.mu.Unlock()
	nonce, sealed := identity[:ticketNonceLen], identity[ticketNonceLen:]
	for _, k := range keys {
		plain, err := k.aead.Open(nil, nonce, sealed, nil)
		if err != nil {
			continue
		}
		ss, err := tls.ParseSessionState(plain)
		if err != nil {
			return nil, nil
		}
		return ss, nil
	}
	return nil, nil
}
