package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
)

// backend is an httptest server that answers its name.
func backend(t testing.TB, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-XFF", r.Header.Get("X-Forwarded-For"))
		fmt.Fprintf(w, "%s %s %s", name, r.URL.Path, body)
	}))
	t.Cleanup(s.Close)
	return s
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// pool runs a pool with the given members (ID = Addr) until the test ends.
func pool(t testing.TB, strategy string, members ...balance.Member) *balance.Pool {
	t.Helper()
	build, _ := balance.Lookup(strategy)
	p := balance.NewPool(balance.PoolOptions{Service: "web", Strategy: strategy, Builder: build})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := p.SetMembers(context.Background(), 1, members); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !p.Load().Synced {
		if time.Now().After(deadline) {
			t.Fatal("pool not synced")
		}
		time.Sleep(time.Millisecond)
	}
	return p
}

func m(id, addr string, weight int) balance.Member {
	return balance.Member{ID: id, Addr: addr, Weight: weight, Consul: balance.HealthPassing}
}

func hostOf(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

func get(t *testing.T, url string, header ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestWeightedForwarding(t *testing.T) {
	a, b, c := backend(t, "a"), backend(t, "b"), backend(t, "c")
	p := pool(t, "weighted_round_robin", m("a", hostOf(a), 1), m("b", hostOf(b), 1), m("c", hostOf(c), 3))
	front := httptest.NewServer(NewHTTPHandler(HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}}))
	defer front.Close()
	var seq strings.Builder
	for i := 0; i < 10; i++ {
		resp, body := get(t, front.URL+"/x", "Host", "example.test")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		seq.WriteString(resp.Header.Get("X-Backend"))
		if have := resp.Header.Get("X-Seen-Host"); have != "example.test" {
			t.Errorf("Host not passed through: %q", have)
		}
		if have := resp.Header.Get("X-Seen-XFF"); have != "127.0.0.1" {
			t.Errorf("X-Forwarded-For: want 127.0.0.1, have %q", have)
		}
	}
	if have, want := seq.String(), "cacbccacbc"; have != want {
		t.Errorf("want %s, have %s", want, have)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var inflight int64
		for _, mem := range p.Load().Members {
			inflight += mem.Stats.Inflight()
		}
		if inflight == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inflight %d after all responses were read", inflight)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRouting(t *testing.T) {
	root, api, apiHost := backend(t, "root"), backend(t, "api"), backend(t, "apihost")
	svc := func(name string, s *httptest.Server) ServiceOptions {
		return ServiceOptions{Name: name, Pool: pool(t, "round_robin", m(name, hostOf(s), 1))}
	}
	h := NewHTTPHandler(HTTPOptions{Routes: []Route{
		{PathPrefix: "/", Service: svc("root", root)},
		{PathPrefix: "/api", Service: svc("api", api)},
		{Host: "api.example.com", PathPrefix: "/api", Service: svc("apihost", apiHost)},
		{Host: "only.example.com", PathPrefix: "/only", Service: svc("root", root)},
	}})
	front := httptest.NewServer(h)
	defer front.Close()
	for _, tc := range []struct {
		host, path string
		want       string
	}{
		{"x.test", "/", "root"},
		{"x.test", "/api/v1", "api"},
		{"api.example.com", "/api/v1", "apihost"},
		{"API.example.com:8080", "/api", "apihost"},
		{"api.example.com", "/other", "root"},
		{"x.test", "/only", "root"},
	} {
		resp, _ := get(t, front.URL+tc.path, "Host", tc.host)
		if have := resp.Header.Get("X-Backend"); have != tc.want {
			t.Errorf("%s%s: want %s, have %s", tc.host, tc.path, tc.want, have)
		}
	}
	// No route at all: 404 with JSON.
	only := httptest.NewServer(NewHTTPHandler(HTTPOptions{Routes: []Route{{Host: "a.test", PathPrefix: "/", Service: svc("root", root)}}}))
	defer only.Close()
	resp, body := get(t, only.URL+"/", "Host", "b.test")
	if resp.StatusCode != 404 || !strings.Contains(body, `"no route"`) {
		t.Errorf("want 404 JSON, have %d %s", resp.StatusCode, body)
	}
}

func TestDialFailureRetriedOnAnotherInstance(t *testing.T) {
	good := backend(t, "good")
	dead := deadAddr(t)
	p := pool(t, "round_robin", m("a-dead", dead, 1), m("b-good", hostOf(good), 1))
	front := httptest.NewServer(NewHTTPHandler(HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p, Attempts: 2}}}}))
	defer front.Close()
	for i := 0; i < 6; i++ {
		resp, err := http.Post(front.URL+"/p", "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "good /p payload" {
			t.Fatalf("request %d: want 200 from good with body, have %d %q", i, resp.StatusCode, body)
		}
	}
	var failures uint64
	for _, mem := range p.Load().Members {
		if mem.ID == "a-dead" {
			failures = mem.Stats.Failures()
		}
	}
	if failures == 0 {
		t.Error("dial failures not recorded against the dead instance")
	}
}

func TestErrorsAreJSON(t *testing.T) {
	dead1, dead2 := deadAddr(t), deadAddr(t)
	empty := pool(t, "round_robin")
	deadPool := pool(t, "round_robin", m("a", dead1, 1), m("b", dead2, 1))
	front := httptest.NewServer(NewHTTPHandler(HTTPOptions{Routes: []Route{
		{PathPrefix: "/empty", Service: ServiceOptions{Name: "empty", Pool: empty}},
		{PathPrefix: "/dead", Service: ServiceOptions{Name: "deadsvc", Pool: deadPool}},
	}}))
	defer front.Close()
	for _, tc := range []struct {
		path    string
		status  int
		service string
	}{
		{"/empty", 503, "empty"},
		{"/dead", 502, "deadsvc"},
	} {
		resp, body := get(t, front.URL+tc.path)
		var have struct{ Error, Service string }
		if err := json.Unmarshal([]byte(body), &have); err != nil {
			t.Fatalf("%s: body is not JSON: %q", tc.path, body)
		}
		if resp.StatusCode != tc.status || have.Service != tc.service || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: want %d naming %s, have %d %+v", tc.path, tc.status, tc.service, resp.StatusCode, have)
		}
	}
}

func TestRequestHost(t *testing.T) {
	for in, want := range map[string]string{
		"example.com": "example.com", "example.com:80": "example.com",
		"[::1]:8080": "[::1]", "[::1]": "[::1]", "": "",
	} {
		if have := requestHost(in); have != want {
			t.Errorf("requestHost(%q): want %q, have %q", in, want, have)
		}
	}
}

// echoServer echoes each connection until EOF, then half-closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTCPProxyEchoHalfCloseAndFailover(t *testing.T) {
	p := pool(t, "round_robin", m("a-dead", deadAddr(t), 1), m("b-echo", echoServer(t), 1))
	tp := NewTCPProxy(TCPOptions{Service: ServiceOptions{Name: "echo", Pool: p, Attempts: 2}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { tp.Serve(ctx, ln); close(served) }()
	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("hello %d\n", i)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite() // half-close: the echo must still arrive
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		have, err := io.ReadAll(bufio.NewReader(c))
		c.Close()
		if err != nil || string(have) != msg {
			t.Fatalf("conn %d: want %q, have %q (%v)", i, msg, have, err)
		}
	}
	ln.Close()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the listener closed")
	}
}

func TestCookieValue(t *testing.T) {
	for _, tc := range []struct {
		lines []string
		want  string
	}{
		{nil, ""},
		{[]string{"a=1; sluice_web=abc; b=2"}, "abc"},
		{[]string{"a=1", `sluice_web="q"`}, "q"},
		{[]string{"sluice_webx=1; xsluice_web=2"}, ""},
		{[]string{"sluice_web"}, ""},
		{[]string{"sluice_web=first; sluice_web=second"}, "first"},
	} {
		if have := cookieValue(tc.lines, "sluice_web"); have != tc.want {
			t.Errorf("%q: want %q, have %q", tc.lines, tc.want, have)
		}
	}
}

func TestStickyCookieThroughProxy(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	build, err := balance.NewBuilder("web", "round_robin", &balance.StickyOptions{
		Mode: balance.StickyCookie, CookieName: "sluice_web", TTL: time.Hour, Secret: []byte("k"),
	})
	if err != nil {
		t.Fatal(err)
	}
	p := balance.NewPool(balance.PoolOptions{Service: "web", Builder: build})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	p.SetMembers(ctx, 1, []balance.Member{m("a", hostOf(a), 1), m("b", hostOf(b), 1)})
	deadline := time.Now().Add(5 * time.Second)
	for !p.Load().Synced && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	front := httptest.NewServer(NewHTTPHandler(HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p, StickyCookie: "sluice_web"}}}}))
	defer front.Close()
	resp, _ := get(t, front.URL+"/")
	set := resp.Header.Get("Set-Cookie")
	pinned := resp.Header.Get("X-Backend")
	if !strings.HasPrefix(set, "sluice_web=") {
		t.Fatalf("want a sluice_web cookie, have %q", set)
	}
	cookie, _, _ := strings.Cut(set, ";")
	for i := 0; i < 10; i++ {
		resp, _ := get(t, front.URL+"/", "Cookie", "other=1; "+cookie)
		if resp.Header.Get("X-Backend") != pinned || resp.Header.Get("Set-Cookie") != "" {
			t.Fatalf("request %d: want %s without Set-Cookie, have %s %q", i, pinned, resp.Header.Get("X-Backend"), resp.Header.Get("Set-Cookie"))
		}
	}
}
