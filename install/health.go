package install

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"
)

// WaitIMAP waits until addr answers TLS with an IMAP greeting ("* OK"),
// trying every interval until ctx ends. The certificate is not checked:
// a fresh relay serves a self-signed one until ACME has a real one.
func WaitIMAP(ctx context.Context, addr, serverName string, interval time.Duration) error {
	var last error
	for {
		err := imapGreeting(ctx, addr, serverName)
		if err == nil {
			return nil
		}
		// An attempt cut short by the deadline says less than the one
		// before. (A dial can time out a moment before ctx.Err() is set.)
		if last == nil || !pastDeadline(ctx) {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no IMAP greeting on %s: %w", addr, last)
		case <-time.After(interval):
		}
	}
}

func imapGreeting(ctx context.Context, addr, serverName string) error {
	d := tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		Config: &tls.Config{
			ServerName:         serverName,
			InsecureSkipVerify: true, // see WaitIMAP
		},
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
	}
	return nil
}

func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ctx.Err() != nil || ok && !time.Now().Before(d)
}
