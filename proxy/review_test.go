package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// startTCPProxy serves a tcp proxy to the instance at addr with the given idle timeout.
func startTCPProxy(t *testing.T, idle time.Duration, addr string) (string, *TCPProxy) {
	t.Helper()
	p := pool(t, "round_robin", m("up", addr, 1))
	tp := NewTCPProxy(TCPOptions{Service: ServiceOptions{Name: "up", Pool: p}, IdleTimeout: idle})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tp.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { ln.Close(); cancel(); <-done })
	return ln.Addr().String(), tp
}

// serveOneConn listens on loopback, hands the first connection to serve and
// closes it afterwards; it returns the address.
func serveOneConn(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return ln.Addr().String()
}

// TestTCPSlowStreamNotCut: a one-way stream slower than a byte per idle
// period in the other direction keeps flowing.
func TestTCPSlowStreamNotCut(t *testing.T) {
	backend := serveOneConn(t, func(c net.Conn) {
		for i := 0; i < 30; i++ {
			c.Write([]byte{'x'})
			time.Sleep(50 * time.Millisecond)
		}
	})
	addr, _ := startTCPProxy(t, 300*time.Millisecond, backend)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(c)
	if len(got) != 30 {
		t.Fatalf("slow stream cut: got %d of 30 bytes", len(got))
	}
}

// TestTCPIdleClosesStuckConnection: a client that half-closes and stops
// reading does not hold the connection past the idle timeout.
func TestTCPIdleClosesStuckConnection(t *testing.T) {
	backend := serveOneConn(t, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for { // floods the client, which never reads
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	addr, tp := startTCPProxy(t, 300*time.Millisecond, backend)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	c.(*net.TCPConn).CloseWrite()
	st := tp.cfg.Load().opts.Service.Pool
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ms := st.Load().Members; len(ms) == 1 && ms[0].Stats.Requests() == 1 && ms[0].Stats.Inflight() == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("stuck connection still held 10 s after the 300 ms idle timeout")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRetried503WithEndlessBodyDoesNotHang: an answer to be retried is not
// drained when its body has no known short length.
func TestRetried503WithEndlessBodyDoesNotHang(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var hits atomic.Int64
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.(http.Flusher).Flush()
		select { // a body that never completes
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer bad.Close()
	good := statusBackend(t, "good", http.StatusOK, 0, &hits)
	p := pool(t, "round_robin", m("a-bad", hostOf(bad), 1), m("b-good", hostOf(good), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, Attempts: 2})
	client := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 4; i++ {
		resp, err := client.Get(f.URL)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: want 200 from good, have %d", i, resp.StatusCode)
		}
	}
}
