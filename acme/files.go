package acme

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// defaultReloadInterval bounds how often a handshake may stat the
// operator's certificate files. Polling on handshakes needs no watcher
// goroutine and no fsnotify, and a renewed certificate (certbot, a
// deploy hook) is picked up within seconds of the next connection.
const defaultReloadInterval = 5 * time.Second

// fileCert serves a certificate the operator manages in two PEM files and
// picks up replacements without a restart.
type fileCert struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger
	onChange          func()

	cur       atomic.Pointer[tls.Certificate]
	lastCheck atomic.Int64 // unix nanoseconds of the last stat

	mu                sync.Mutex // serialises reloads and guards the stamps
	certStat, keyStat os.FileInfo
}

func newFileCert(certFile, keyFile string, interval time.Duration, log *slog.Logger, onChange func()) (*fileCert, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("mode %q needs both CertFile and KeyFile", ModeFiles)
	}
	if interval == 0 {
		interval = defaultReloadInterval
	}
	f := &fileCert{certFile: certFile, keyFile: keyFile, interval: interval, log: log, onChange: onChange}
	f.mu.Lock()
	defer f.mu.Unlock()
	// At start a broken file is fatal: the operator is watching and a relay
	// with no usable certificate should not come up half working.
	if err := f.reloadLocked(true); err != nil {
		return nil, err
	}
	f.lastCheck.Store(time.Now().UnixNano())
	return f, nil
}

// get returns the current certificate, first reloading the files when the
// check interval has passed and they changed. Only one handshake per
// interval pays for the stat; the others are served the current one.
func (f *fileCert) get() *tls.Certificate {
	now := time.Now().UnixNano()
	last := f.lastCheck.Load()
	if now-last >= int64(f.interval) && f.lastCheck.CompareAndSwap(last, now) && f.mu.TryLock() {
		if err := f.reloadLocked(false); err != nil {
			// Keep serving the old pair: the operator may be half way
			// through replacing the two files. The stamps were not
			// advanced, so the next interval tries again.
			f.log.Warn("reload certificate files", "cert", f.certFile, "key", f.keyFile, "err", err)
		}
		f.mu.Unlock()
	}
	return f.cur.Load()
}

// reloadLocked loads the pair when either file differs from what was last
// loaded (or always, when force). A file counts as changed when it is a
// different file (renamed over), or its size or mtime moved: editors and
// deploy tools do one or the other.
func (f *fileCert) reloadLocked(force bool) error {
	cs, err := os.Stat(f.certFile)
	if err != nil {
		return fmt.Errorf("certificate file: %w", err)
	}
	ks, err := os.Stat(f.keyFile)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if !force && sameStat(cs, f.certStat) && sameStat(ks, f.keyStat) {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		return fmt.Errorf("load %s and %s: %w", f.certFile, f.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("parse %s: %w", f.certFile, err)
		}
	}
	old := f.cur.Swap(&cert)
	f.certStat, f.keyStat = cs, ks
	if old != nil {
		f.log.Info("reloaded certificate files", "cert", f.certFile, "names", cert.Leaf.DNSNames, "not_after", cert.Leaf.NotAfter)
		if f.onChange != nil {
			f.onChange()
		}
	}
	return nil
}

func sameStat(now, before os.FileInfo) bool {
	return before != nil && os.SameFile(now, before) &&
		now.Size() == before.Size() && now.ModTime().Equal(before.ModTime())
}
