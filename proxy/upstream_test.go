package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func upGet(t *testing.T, u *Upstream, method, addr, path, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://"+addr+path, rd)
	resp, err := u.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestUpstreamReusesConnections(t *testing.T) {
	var conns atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "part1 ")
			w.(http.Flusher).Flush()
			io.WriteString(w, "part2")
			w.Header().Set("X-Sum", "42")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			io.WriteString(w, "hello "+r.Method)
		}
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	defer s.Close()
	u := NewUpstream()
	addr := hostOf(s)
	for i := 0; i < 5; i++ {
		if _, body := upGet(t, u, http.MethodGet, addr, "/", ""); body != "hello GET" {
			t.Fatalf("body %q", body)
		}
		if resp, body := upGet(t, u, http.MethodGet, addr, "/chunked", ""); body != "part1 part2" || resp.Trailer.Get("X-Sum") != "42" {
			t.Fatalf("chunked: %q trailer %v", body, resp.Trailer)
		}
		if resp, _ := upGet(t, u, http.MethodHead, addr, "/", ""); resp.StatusCode != 200 {
			t.Fatalf("HEAD: %d", resp.StatusCode)
		}
		if resp, _ := upGet(t, u, http.MethodGet, addr, "/empty", ""); resp.StatusCode != 204 {
			t.Fatalf("204: %d", resp.StatusCode)
		}
		if _, body := upGet(t, u, http.MethodPost, addr, "/", "data"); body != "hello POST" {
			t.Fatalf("POST: %q", body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("want 1 connection for 25 sequential requests, have %d", n)
	}
}

// closingServer answers each request on a connection with a keep-alive
// response, then closes the connection anyway after `after` requests.
// closingServer serves after requests on each connection and closes it;
// it returns its address, the count of connections accepted and the count
// of connections it closed.
func closingServer(t *testing.T, after int) (string, *atomic.Int64, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns, closed atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer closed.Add(1)
				defer c.Close()
				br := bufio.NewReader(c)
				for i := 0; i < after; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	return ln.Addr().String(), &conns, &closed
}

func TestUpstreamReplacesStaleConnections(t *testing.T) {
	addr, conns, closed := closingServer(t, 1)
	u := NewUpstream()
	for i := 0; i < 6; i++ {
		method, body := http.MethodGet, ""
		if i%2 == 1 {
			method, body = http.MethodPost, "payload"
		}
		// The server has closed the previous connection: over loopback its
		// FIN is queued on the pooled connection when close returns.
		waitFor(t, "the server's close", func() bool { return closed.Load() == int64(i) })
		if resp, got := upGet(t, u, method, addr, "/", body); resp.StatusCode != 200 || got != "ok" {
			t.Fatalf("request %d (%s): %d %q", i, method, resp.StatusCode, got)
		}
	}
	if conns.Load() != 6 {
		t.Errorf("want a fresh connection per request, have %d", conns.Load())
	}
}

func TestUpstreamEOFDelimitedNotReused(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	var conns atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err == nil {
					io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\nuntil close")
				}
				c.Close()
			}()
		}
	}()
	u := NewUpstream()
	for i := 0; i < 3; i++ {
		if _, body := upGet(t, u, http.MethodGet, ln.Addr().String(), "/", ""); body != "until close" {
			t.Fatalf("body %q", body)
		}
	}
	if conns.Load() != 3 {
		t.Errorf("want 3 connections, have %d", conns.Load())
	}
}

func TestUpstreamEarlyCloseDoesNotDrain(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 32<<10)
		for r.Context().Err() == nil { // endless body
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	defer s.Close()
	u := NewUpstream()
	req, _ := http.NewRequest(http.MethodGet, s.URL, nil)
	resp, err := u.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 1000))
	done := make(chan struct{})
	go func() { resp.Body.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("closing a partly read endless body hangs")
	}
}

func TestUpstreamCancelAndTimeout(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(10 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer s.Close()
	u := NewUpstream()
	cause := errors.New("my cause")
	ctx, cancel := context.WithCancelCause(context.Background())
	time.AfterFunc(50*time.Millisecond, func() { cancel(cause) })
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	start := time.Now()
	if _, err := u.RoundTrip(req); !errors.Is(err, cause) {
		t.Fatalf("cancelled: want the context's cause, have %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("cancel did not interrupt the wait")
	}
	u.defaults.Header = 50 * time.Millisecond
	req, _ = http.NewRequest(http.MethodGet, s.URL, nil)
	if _, err := u.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "timeout awaiting response headers") {
		t.Fatalf("header timeout: %v", err)
	}
	// The dial error of a dead address is a dial error for failover.
	req, _ = http.NewRequest(http.MethodGet, "http://"+deadAddr(t)+"/", nil)
	if _, err := u.RoundTrip(req); !isDialError(err) {
		t.Fatalf("want a dial error, have %v", err)
	}
}

func TestUpstreamHeaderLimit(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Big: " + strings.Repeat("a", 1000) + "\r\n"
		for i := 0; i < 2000; i++ { // 2 MB of headers
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	}()
	u := NewUpstream()
	req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
	if _, err := u.RoundTrip(req); !errors.Is(err, errHeaderTooLarge) {
		t.Fatalf("want errHeaderTooLarge, have %v", err)
	}
}

// TestUpstreamForgetsAddressesThatLeave: when an address is in no tracked
// service any more, its idle connections close at once and its entry goes;
// an address shared by two services stays until both drop it.
func TestUpstreamForgetsAddressesThatLeave(t *testing.T) {
	var open atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	s.Start()
	defer s.Close()
	addr := hostOf(s)
	u := NewUpstream()
	defer u.Close()
	u.Track("a", []string{addr})
	u.Track("b", []string{addr})
	upGet(t, u, http.MethodGet, addr, "/", "")
	if n := open.Load(); n != 1 {
		t.Fatalf("want 1 pooled connection, have %d", n)
	}
	u.Track("a", nil)
	if _, ok := u.hosts.Load(poolKey{addr: addr}); !ok || open.Load() != 1 {
		t.Fatal("an address still tracked by b was forgotten")
	}
	u.Track("b", []string{})
	deadline := time.Now().Add(5 * time.Second)
	for open.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the idle connection of a forgotten address stayed open")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, ok := u.hosts.Load(poolKey{addr: addr}); ok {
		t.Fatal("the forgotten address keeps its entry")
	}
	// A request in flight when its address is forgotten closes its
	// connection at the end instead of pooling it.
	u.Track("a", []string{addr})
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	resp, err := u.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	u.Track("a", nil)
	io.ReadAll(resp.Body)
	resp.Body.Close()
	for open.Load() != 0 {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("a connection returned to a forgotten pool stayed open")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
