//go:build linux || darwin

package h1

import (
	"context"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// A hijacked (upgraded) connection has no idle timeout: on a listener
// without TCP keep-alive (sluice's), the probes are turned on when it is
// handed on, so that a peer gone without a FIN or RST does not hold it
// for good.
func TestHijackedConnectionProbesPeer(t *testing.T) {
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	probing := make(chan int, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			probing <- -1
			return
		}
		defer c.Close()
		rc, err := c.(*hijackedConn).Conn.(*net.TCPConn).SyscallConn()
		if err != nil {
			probing <- -1
			return
		}
		v := -1
		rc.Control(func(fd uintptr) {
			v, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		})
		probing <- v
	})}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
	select {
	case v := <-probing:
		if v == 0 || v == -1 {
			t.Fatalf("SO_KEEPALIVE on the hijacked connection: %d, want on", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not run")
	}
}
