package admin

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
)

// TestDashboardStreamChurn: dashboardMaxStreams pages may be connected at
// once and one more is refused; after 200 streams opened and closed the
// sampling loop has stopped, no subscriber is left and the goroutines are
// back to what they were before the first page.
func TestDashboardStreamChurn(t *testing.T) {
	build, _ := balance.Lookup("round_robin")
	events := balance.NewEventLog(0, nil)
	web := balance.NewPool(balance.PoolOptions{Service: "web", Strategy: "round_robin", Builder: build, Events: events})
	ctx, cancel := context.WithCancel(context.Background())
	poolDone := make(chan struct{})
	go func() { web.Run(ctx); close(poolDone) }()
	defer func() { cancel(); <-poolDone }()
	web.SetMembers(ctx, 1, []balance.Member{{ID: "a", Addr: "127.0.0.1:9001", Weight: 1, Consul: balance.HealthPassing}})
	opts := Options{Pools: func() []*balance.Pool { return []*balance.Pool{web} }, Events: events}
	h := newHub(&opts)
	srv := httptest.NewServer(http.HandlerFunc(h.serveStream))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	// open returns once the stream has sent its first frame.
	open := func() (*http.Response, context.CancelFunc) {
		t.Helper()
		sctx, sclose := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(sctx, http.MethodGet, srv.URL, nil)
		resp, err := client.Do(req)
		if err != nil {
			sclose()
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			return resp, sclose
		}
		lines := bufio.NewScanner(resp.Body)
		lines.Buffer(nil, 1<<20)
		for lines.Scan() && !strings.HasPrefix(lines.Text(), "data: ") {
		}
		if lines.Err() != nil {
			t.Fatalf("stream: %v", lines.Err())
		}
		return resp, sclose
	}
	idle := func(what string) {
		t.Helper()
		stopped := make(chan struct{})
		go func() { h.running.Wait(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second): // a hang, not a speed limit
			t.Fatalf("%s: the sampling loop still runs", what)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			h.mu.Lock()
			n, running := len(h.subs), h.stop != nil
			h.mu.Unlock()
			if n == 0 && !running {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d subscribers left, loop running %v", what, n, running)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	client.CloseIdleConnections()
	base := runtime.NumGoroutine()

	var closers []func()
	for range dashboardMaxStreams {
		resp, sclose := open()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d of %d refused: %d", len(closers)+1, dashboardMaxStreams, resp.StatusCode)
		}
		closers = append(closers, func() { sclose(); resp.Body.Close() })
	}
	resp, sclose := open()
	resp.Body.Close()
	sclose()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("stream %d: %d, want 503", dashboardMaxStreams+1, resp.StatusCode)
	}
	for _, c := range closers {
		c()
	}
	idle("after the limit")

	for i := range 200 {
		resp, sclose := open()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %d", i, resp.StatusCode)
		}
		sclose()
		resp.Body.Close()
	}
	idle("after 200 streams")

	deadline := time.Now().Add(10 * time.Second)
	for {
		client.CloseIdleConnections()
		n := runtime.NumGoroutine()
		if n <= base {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the first stream:\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
