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
	return waitGreeting(ctx, "IMAP", "* OK", addr, serverName, interval)
}

// WaitSubmission waits until addr (submission with implicit TLS) answers
// with an SMTP greeting ("220"), as WaitIMAP.
func WaitSubmission(ctx context.Context, addr, serverName string, interval time.Duration) error {
	return waitGreeting(ctx, "submission", "220", addr, serverName, interval)
}

func waitGreeting(ctx context.Context, proto, want, addr, serverName string, interval time.Duration) error {
	var last error
	for {
		err := tlsGreeting(ctx, addr, serverName, want)
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
			return fmt.Errorf("no %s greeting on %s: %w", proto, addr, last)
		case <-time.After(interval):
		}
	}
}

func tlsGreeting(ctx context.Context, addr, serverName, want string) error {
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
	if !strings.HasPrefix(line, want) {
		return fmt.Errorf("unexpected greeting %q", strings.TrimSpace(line))
	}
	return nil
}

func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ctx.Err() != nil || ok && !time.Now().Before(d)
}
