package h1

import (
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

type countConns struct{ opened, closed atomic.Int64 }

func (c *countConns) ConnOpened() ConnCloser { c.opened.Add(1); return c }
func (c *countConns) ConnClosed()            { c.closed.Add(1) }

// TestConnCounter: plain, hijacked and h2c connections are each counted
// once when opened and once when closed, however often the owner of a
// hijacked connection closes it.
func TestConnCounter(t *testing.T) {
	cc := &countConns{}
	s := &Server{ConnCounter: cc, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hijack" {
			c, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			c.Close()
			c.Close()
			return
		}
		echo(w, r)
	})}
	addr := serve(t, s)
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: opened %d, closed %d", what, cc.opened.Load(), cc.closed.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}
	raw(t, addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	raw(t, addr, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
	client := h2cClient()
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("h2c: %s", resp.Proto)
	}
	wait("three open, the h2c one still open", func() bool { return cc.opened.Load() == 3 && cc.closed.Load() == 2 })
	client.CloseIdleConnections()
	wait("three closed", func() bool { return cc.closed.Load() == 3 })
	if n := cc.opened.Load(); n != 3 {
		t.Errorf("opened %d, want 3", n)
	}
}
