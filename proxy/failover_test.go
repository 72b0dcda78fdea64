package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/h1"
)

// statusBackend answers every request with code after delay, counting requests.
func statusBackend(t *testing.T, name string, code int, delay time.Duration, hits *atomic.Int64) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		hits.Add(1)
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Backend", name)
		w.WriteHeader(code)
		io.WriteString(w, name)
	}))
	t.Cleanup(s.Close)
	return s
}

// testFront is a proxy behind sluice's own HTTP/1.1 server (proxy/h1).
type testFront struct{ URL string }

func front(t *testing.T, svc ServiceOptions) *testFront {
	t.Helper()
	return h1Front(t, HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: svc}}})
}

// h1Front serves a proxy with opts on a loopback port with sluice's server.
func h1Front(t *testing.T, opts HTTPOptions, tune ...func(*h1.Server)) *testFront {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &h1.Server{Handler: NewHTTPHandler(opts)}
	for _, f := range tune {
		f(s)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return &testFront{URL: "http://" + ln.Addr().String()}
}

func do(t *testing.T, method, url, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func failures(p *balance.Pool, id string) uint64 {
	for _, m := range p.Load().Members {
		if m.ID == id {
			return m.Stats.Failures()
		}
	}
	return 0
}

func TestRetryOn503OnlyWhenIdempotent(t *testing.T) {
	var hitsA, hitsB atomic.Int64
	a := statusBackend(t, "a", http.StatusServiceUnavailable, 0, &hitsA)
	b := statusBackend(t, "b", http.StatusOK, 0, &hitsB)
	p := pool(t, "round_robin", m("a", hostOf(a), 1), m("b", hostOf(b), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, Attempts: 2})
	for i := 0; i < 6; i++ {
		if resp := do(t, http.MethodGet, f.URL, ""); resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "b" {
			t.Fatalf("GET %d: want 200 from b, have %d from %s", i, resp.StatusCode, resp.Header.Get("X-Backend"))
		}
		if resp := do(t, http.MethodPut, f.URL, "small body"); resp.StatusCode != 200 {
			t.Fatalf("PUT %d with a replayable body: want 200, have %d", i, resp.StatusCode)
		}
	}
	posts503 := 0
	for i := 0; i < 6; i++ {
		if resp := do(t, http.MethodPost, f.URL, "x"); resp.StatusCode == http.StatusServiceUnavailable {
			posts503++
		}
	}
	if posts503 == 0 {
		t.Error("POST answered 503 was retried")
	}
	if failures(p, "a") == 0 {
		t.Error("5xx answers not counted as failures")
	}
}

func TestLargeBodyNotReplayed(t *testing.T) {
	var hitsA, hitsB atomic.Int64
	a := statusBackend(t, "a", http.StatusServiceUnavailable, 0, &hitsA)
	b := statusBackend(t, "b", http.StatusOK, 0, &hitsB)
	p := pool(t, "round_robin", m("a", hostOf(a), 1), m("b", hostOf(b), 1))
	f := httptest.NewServer(NewHTTPHandler(HTTPOptions{MaxReplayBody: 16,
		Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p, Attempts: 2}}}}))
	defer f.Close()
	saw503 := false
	for i := 0; i < 4; i++ {
		resp := do(t, http.MethodPut, f.URL, strings.Repeat("x", 17))
		saw503 = saw503 || resp.StatusCode == http.StatusServiceUnavailable
	}
	if !saw503 || hitsA.Load()+hitsB.Load() != 4 {
		t.Errorf("a PUT above MaxReplayBody was replayed: 503 seen %v, backend hits %d", saw503, hitsA.Load()+hitsB.Load())
	}
}

func TestPerTryTimeout(t *testing.T) {
	var hitsA, hitsB atomic.Int64
	slow := statusBackend(t, "slow", http.StatusOK, 2*time.Second, &hitsA)
	fast := statusBackend(t, "fast", http.StatusOK, 0, &hitsB)
	p := pool(t, "round_robin", m("a-slow", hostOf(slow), 1), m("b-fast", hostOf(fast), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, Attempts: 2, PerTryTimeout: 100 * time.Millisecond})
	for i := 0; i < 4; i++ {
		if resp := do(t, http.MethodGet, f.URL, ""); resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "fast" {
			t.Fatalf("GET %d: want 200 from fast, have %d %s", i, resp.StatusCode, resp.Header.Get("X-Backend"))
		}
	}
	if failures(p, "a-slow") == 0 {
		t.Error("per-try timeouts not counted as failures")
	}
	// A body that streams longer than the per-try timeout is not cut: the
	// timeout ends with the headers.
	stream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		for i := 0; i < 3; i++ {
			io.WriteString(w, "chunk ")
			w.(http.Flusher).Flush()
			time.Sleep(80 * time.Millisecond)
		}
	}))
	defer stream.Close()
	sp := pool(t, "round_robin", m("s", hostOf(stream), 1))
	sf := front(t, ServiceOptions{Name: "stream", Pool: sp, PerTryTimeout: 100 * time.Millisecond})
	resp, err := http.Get(sf.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "chunk chunk chunk " {
		t.Fatalf("streamed body: %q %v", body, err)
	}
}

func TestClientCancelIsNotAFailure(t *testing.T) {
	var hits atomic.Int64
	slow := statusBackend(t, "slow", http.StatusOK, 5*time.Second, &hits)
	p := pool(t, "round_robin", m("slow", hostOf(slow), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	go func() {
		for hits.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("want the cancelled request to fail")
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Load().Members[0].Stats.Inflight() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if s := p.Load().Members[0].Stats; s.Failures() != 0 || s.Inflight() != 0 {
		t.Fatalf("client cancel: want no failure and nothing in flight, have %d failures, %d in flight", s.Failures(), s.Inflight())
	}
}

func TestAccessLogLine(t *testing.T) {
	var buf bytes.Buffer
	l := NewAccessLog(&buf)
	e := &logEntry{listener: "public", service: "web", instance: "web-1", client: "127.0.0.1:5555",
		method: "GET", path: "/a b", status: 200, bytes: 12, start: time.Now(), attempts: 2}
	l.write(e)
	line := buf.String()
	for _, want := range []string{" listener=public service=web instance=web-1 client=127.0.0.1:5555 method=GET path=\"/a b\" status=200 bytes=12 duration_ms=", " attempts=2\n"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	l.w = io.Discard
	if allocs := testing.AllocsPerRun(1000, func() { l.write(e) }); allocs != 0 {
		t.Errorf("access log line: want 0 allocs, have %v", allocs)
	}
}
