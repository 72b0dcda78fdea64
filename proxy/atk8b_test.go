package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/h1"
)

// TestAtk8bH2RequestLineInjection: an h2 stream's :method and :authority
// are not held to HTTP/1.1's rules by net/http's HTTP/2 server. A method
// with a space ("GET /admin") was written into the request line to the
// instance ("GET /admin /public HTTP/1.1": routed by /public, read as
// /admin by a lenient server, and a 502 that blamed the instance for a
// strict one); an authority with a space was sent as an empty Host. Each
// is the client's fault: 400, nothing sent to the instance, not blamed.
func TestAtk8bH2RequestLineInjection(t *testing.T) {
	got := make(chan string, 16)
	addr := rawBackend(t, func(c net.Conn) {
		b := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := c.Read(b)
		got <- string(b[:n])
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"))
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	ca := newCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &h1.Server{TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "localhost")}, NextProtos: []string{"h2", "http/1.1"}},
		Handler: NewHTTPHandler(HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	for _, overTLS := range []bool{false, true} {
		for _, tc := range []struct{ name, method, authority string }{
			{"method with a space", "GET /admin", "x"},
			{"method with a tab", "GET\t/admin", "x"},
			{"method with a space, POST", "POST /admin", "x"},
			{"authority with a space", "GET", "x y"},
			{"authority with a slash", "GET", "x/y"},
			{"CONNECT", http.MethodConnect, "127.0.0.1:1"},
		} {
			t.Run(fmt.Sprintf("%s tls=%v", tc.name, overTLS), func(t *testing.T) {
				h := dialH2Raw(t, f.URL)
				if overTLS {
					h = dialH2RawTLS(t, ln.Addr().String(), ca.pool())
				}
				want := http.StatusBadRequest
				if tc.method == http.MethodConnect {
					want = http.StatusMethodNotAllowed
					h.headers(1, true, ":method", tc.method, ":authority", tc.authority)
				} else {
					h.headers(1, true, ":method", tc.method, ":scheme", "http", ":path", "/public", ":authority", tc.authority)
				}
				r := h.result(1)
				select {
				case s := <-got:
					t.Errorf("the instance was sent %q", s)
				default:
				}
				if r.status != want {
					t.Errorf("want %d, have %+v", want, r)
				}
				if n := failures(p, "a"); n != 0 {
					t.Errorf("instance blamed %d times", n)
				}
			})
		}
	}
}
