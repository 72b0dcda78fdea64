package proxy

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/h1"
)

// TestAtk8bH2ClosedWindow: an h2 client that never opens its stream's
// window for a large answer has the stream reset after the write timeout;
// the instance is not blamed, the exchange ends (in-flight 0), and its
// connection, cut mid-answer, never carries the rest of that answer to
// another client.
func TestAtk8bH2ClosedWindow(t *testing.T) {
	addr := rawRequests(t, func(c net.Conn, req *http.Request) {
		if req.URL.Path == "/big" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
			c.Write(make([]byte, 1<<20))
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nLEAK!")
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(req.URL.Path))+"\r\n\r\n"+req.URL.Path)
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := h1Front(t, HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}},
		func(s *h1.Server) { s.WriteTimeout = 300 * time.Millisecond })
	h := dialH2Raw(t, f.URL)
	h.headers(1, true, ":method", "GET", ":scheme", "http", ":path", "/big", ":authority", "x")
	start := time.Now()
	r := h.result(1)
	if !r.rst || r.status != 200 {
		t.Fatalf("want the stream reset after its head, have status %d, %d body bytes, rst %v", r.status, len(r.body), r.rst)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("reset after %v", d)
	}
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
	if n := failures(p, "a"); n != 0 {
		t.Errorf("instance blamed %d times for a client that took nothing", n)
	}
	client := h2cClient()
	defer client.CloseIdleConnections()
	for i := 0; i < 5; i++ {
		path := "/next/" + strconv.Itoa(i)
		resp, err := client.Get(f.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != path || strings.Contains(string(b), "LEAK") {
			t.Errorf("%s: got %q", path, b)
		}
	}
}
