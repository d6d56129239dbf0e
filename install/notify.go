package install

import (
	"fmt"
	"net"
	"os"
)

// NotifyReady tells systemd that the service is up (sd_notify(3)
// "READY=1"), for a Type=notify unit. Call it once every listener is open.
// Without $NOTIFY_SOCKET (not started by systemd) it does nothing.
func NotifyReady() error {
	return Notify("READY=1")
}

// Notify sends one sd_notify state string, such as "STOPPING=1" or
// "STATUS=...", as a datagram to the socket named in $NOTIFY_SOCKET.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	// A leading '@' names a socket in the abstract namespace; the net
	// package maps it the same way systemd does.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}
