package proxy

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/h1"
)

// TestAtk8bH2StalledBodies: an h2 stream that leaves its body open and
// stalls, for any method (a GET or HEAD whose HEADERS lacked END_STREAM
// too), gets 408 after the body timeout on that stream only; the instance
// is not blamed and nothing stays in flight.
func TestAtk8bH2StalledBodies(t *testing.T) {
	addr := rawRequests(t, func(c net.Conn, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := h1Front(t, HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}},
		func(s *h1.Server) { s.BodyTimeout = 200 * time.Millisecond })
	h := dialH2Raw(t, f.URL)
	id := uint32(1)
	for _, method := range []string{"GET", "HEAD", "POST", "PATCH"} {
		for _, withData := range []bool{method == "GET", true} {
			h.headers(id, false, ":method", method, ":scheme", "http", ":path", "/s", ":authority", "x")
			if withData {
				h.data(id, false, "abc")
			}
			r := h.result(id)
			if r.status != http.StatusRequestTimeout || r.goaway {
				t.Errorf("%s, data %v: want 408 on the stream, have %+v", method, withData, r)
			}
			id += 2
		}
	}
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
	if n := failures(p, "a"); n != 0 {
		t.Errorf("instance blamed %d times for stalled bodies", n)
	}
}
