package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sluice-lb/sluice/proxy/h1"
)

// serveHandler serves h with sluice's server on a loopback port until the
// test ends and returns its base URL.
func serveHandler(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &h1.Server{Handler: h}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return "http://" + ln.Addr().String()
}

// TestHTTPHandlerUpdateUnderLoad: tables swapped while clients keep
// sending are never seen half-built (every answer comes whole from one of
// the tables' services), and the table of the last Update serves the next
// request: its routes and its services' options.
func TestHTTPHandlerUpdateUnderLoad(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	pa := pool(t, "round_robin", m("a", hostOf(a), 1))
	pb := pool(t, "round_robin", m("b", hostOf(b), 1))
	svcA := ServiceOptions{Name: "a", Pool: pa}
	svcB := ServiceOptions{Name: "b", Pool: pb}
	tableA := HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: svcA}}}
	tableB := HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: svcB}}}
	h := NewHTTPHandler(tableA)
	url := serveHandler(t, h)

	stop := make(chan struct{})
	errs := make(chan string, 64)
	var served atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(url + "/x")
				if err != nil {
					errs <- err.Error()
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || (string(body) != "a /x " && string(body) != "b /x ") {
					errs <- resp.Status + " " + string(body)
					return
				}
				served.Add(1)
			}
		}()
	}
	// Requests are answered between updates.
	for i := range 50 {
		if i%2 == 0 {
			h.Update(tableB)
		} else {
			h.Update(tableA)
		}
		n := served.Load()
		waitFor(t, "requests between updates", func() bool { return served.Load() >= n+4 || len(errs) > 0 })
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("during updates: %s", e)
	}

	// The next request sees the last table: /b/ now goes to b.
	h.Update(HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: svcA}, {PathPrefix: "/b/", Service: svcB}}})
	if resp, body := get(t, url+"/b/x"); resp.StatusCode != 200 || body != "b /b/x " {
		t.Errorf("after update: /b/x: want b, have %d %q", resp.StatusCode, body)
	}
	if resp, body := get(t, url+"/x"); resp.StatusCode != 200 || body != "a /x " {
		t.Errorf("after update: /x: want a, have %d %q", resp.StatusCode, body)
	}
}

// TestHTTPHandlerUpdateServiceOptions: a service's options (here Attempts)
// apply from the next request.
func TestHTTPHandlerUpdateServiceOptions(t *testing.T) {
	good := backend(t, "good")
	p := pool(t, "round_robin", m("a-dead", deadAddr(t), 1), m("b-good", hostOf(good), 1))
	opts := func(attempts int) HTTPOptions {
		return HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p, Attempts: attempts}}}}
	}
	h := NewHTTPHandler(opts(1))
	url := serveHandler(t, h)
	// Round robin over two instances: of two requests one meets the dead
	// instance, and with one attempt it fails.
	codes := map[int]int{}
	for range 2 {
		resp, _ := get(t, url+"/")
		codes[resp.StatusCode]++
	}
	if codes[http.StatusBadGateway] != 1 || codes[http.StatusOK] != 1 {
		t.Fatalf("attempts 1: want one 502 and one 200, have %v", codes)
	}
	h.Update(opts(2))
	for i := range 4 {
		if resp, body := get(t, url+"/"); resp.StatusCode != 200 {
			t.Fatalf("attempts 2, request %d: %d %q", i, resp.StatusCode, body)
		}
	}
}

// tcpBanner listens on loopback and writes name to every connection, then
// closes it.
func tcpBanner(t *testing.T, name string) string {
	return rawBackend(t, func(c net.Conn) { io.WriteString(c, name) })
}

// TestTCPProxyUpdate: connections accepted after Update use the new
// service; Update is safe while connections are being handled.
func TestTCPProxyUpdate(t *testing.T) {
	pa := pool(t, "round_robin", m("a", tcpBanner(t, "A"), 1))
	pb := pool(t, "round_robin", m("b", tcpBanner(t, "B"), 1))
	tp := NewTCPProxy(TCPOptions{Listener: "t", Service: ServiceOptions{Name: "a", Pool: pa}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tp.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { ln.Close(); cancel(); <-done })
	read := func() string {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Error(err)
			return ""
		}
		defer c.Close()
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if have := read(); have != "A" {
		t.Fatalf("before update: want A, have %q", have)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if have := read(); have != "A" && have != "B" {
					t.Errorf("during updates: %q", have)
					return
				}
			}
		}()
	}
	for i := range 100 {
		svc := ServiceOptions{Name: "a", Pool: pa}
		if i%2 == 0 {
			svc = ServiceOptions{Name: "b", Pool: pb}
		}
		tp.Update(TCPOptions{Listener: "t", Service: svc})
	}
	close(stop)
	wg.Wait()
	tp.Update(TCPOptions{Listener: "t", Service: ServiceOptions{Name: "b", Pool: pb}})
	if have := read(); have != "B" {
		t.Fatalf("after update: want B, have %q", have)
	}
}
