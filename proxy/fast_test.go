package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/h1"
)

// SLUICE_NO_FASTPATH=1 runs the package's tests with every request on the
// ReverseProxy path.
func init() {
	if os.Getenv("SLUICE_NO_FASTPATH") != "" {
		reverseProxyOnly = true
	}
}

func TestFastEligible(t *testing.T) {
	mk := func(method, target string, hdr map[string]string) *http.Request {
		r, err := http.NewRequest(method, "http://x"+target, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		return r
	}
	cases := []struct {
		r    *http.Request
		want bool
	}{
		{mk("GET", "/a?b=c&d=%20", nil), true},
		{mk("HEAD", "/", nil), true},
		{mk("POST", "/", nil), false},
		{mk("GET", "/?a;b", nil), false},
		{mk("GET", "/?a=%2", nil), false},
		{mk("GET", "/", map[string]string{"Connection": "keep-alive"}), false},
		{mk("GET", "/", map[string]string{"Upgrade": "websocket"}), false},
		{mk("GET", "/", map[string]string{"Te": "trailers"}), false},
		{mk("GET", "/", map[string]string{"Expect": "100-continue"}), false},
	}
	for i, c := range cases {
		if got := fastEligible(c.r); got != c.want {
			t.Errorf("case %d (%s %s %v): %v, want %v", i, c.r.Method, c.r.URL, c.r.Header, got, c.want)
		}
	}
}

// TestFastPathSameAsReverseProxy sends the same request with the fast path
// on and off and compares what the instance received and what the client
// got.
func TestFastPathSameAsReverseProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	heads := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					var b strings.Builder
					req.Header.Write(&b)
					heads <- req.Method + " " + req.RequestURI + " " + req.Host + "\n" + b.String()
					body := "hello"
					io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"+
						"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"+
						"Strict-Transport-Security: max-age=1\r\nX-End: e\r\nContent-Length: 5\r\n\r\n"+body)
				}
			}(c)
		}
	}()
	defer ln.Close()
	p := pool(t, "round_robin", m("a", ln.Addr().String(), 1))
	front := func(reverseProxyOnly bool) string {
		h := NewHTTPHandler(HTTPOptions{Listener: "l", ReverseProxyOnly: reverseProxyOnly,
			Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "svc", Pool: p}}}})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &h1.Server{Handler: h}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	fastAddr, slowAddr := front(false), front(true)

	exchange := func(addr string) (sent, got string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 10.0.0.1\r\n"+
			"Forwarded: for=x\r\nX-Forwarded-Host: evil\r\nAccept: */*\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		var b strings.Builder
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			resp.Header.Del("Date")
			b.WriteString(resp.Status + "\n")
			resp.Header.Write(&b)
			b.Write(body)
			if resp.StatusCode >= 200 {
				break
			}
		}
		select {
		case sent = <-heads:
		case <-time.After(10 * time.Second):
			t.Fatal("instance got nothing")
		}
		return sent, b.String()
	}
	fastSent, fastGot := exchange(fastAddr)
	slowSent, slowGot := exchange(slowAddr)
	if fastSent != slowSent {
		t.Errorf("instance got\n%s\nfast, and\n%s\nslow", fastSent, slowSent)
	}
	if fastGot != slowGot {
		t.Errorf("client got\n%s\nfast, and\n%s\nslow", fastGot, slowGot)
	}
	if strings.Contains(fastGot, "X-Hop") || strings.Contains(fastGot, "Keep-Alive") || !strings.Contains(fastGot, "103") {
		t.Errorf("client got\n%s", fastGot)
	}
	if strings.Contains(fastSent, "evil") || strings.Contains(fastSent, "Forwarded:") || strings.Contains(fastSent, "User-Agent") {
		t.Errorf("instance got\n%s", fastSent)
	}
}
