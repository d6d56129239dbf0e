package shadowsocks

import (
	"io"
	"net"
	"testing"
)

// BenchmarkStream measures one direction of a proxied stream: the
// client's encryption and the server's decryption over loopback, 64 KiB
// writes.
func BenchmarkStream(b *testing.B) {
	for _, m := range Methods() {
		b.Run(m, func(b *testing.B) {
			k, _ := NewKey(m)
			done := make(chan int64, 1)
			srv := NewServer(Options{
				Keys: func() []Key { return []Key{k} },
				Route: func(Target) func(net.Conn) {
					return func(c net.Conn) {
						go func() { n, _ := io.Copy(io.Discard, c); c.Close(); done <- n }()
					}
				},
			})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go srv.Serve(ln)
			defer srv.Close()
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c, _ := Client(raw, k, Target{Host: "x", Port: 1}, nil)
			buf := make([]byte, 64<<10)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			raw.(*net.TCPConn).CloseWrite()
			<-done
		})
	}
}
