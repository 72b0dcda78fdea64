package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/h1"
)

// rawBackend accepts connections and runs serve on each; it is closed with
// the test, together with every connection it accepted.
func rawBackend(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// mu orders every wg.Add before the cleanup's wg.Wait: a connection
	// accepted after cleanup began is closed, not served.
	var mu sync.Mutex
	var conns []net.Conn
	var closed bool
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns = append(conns, c)
			wg.Add(1)
			mu.Unlock()
			go func() { defer wg.Done(); defer c.Close(); serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// rawRequests is rawBackend answering every request on each connection
// with answer, which writes the raw answer to c (it may leave the body
// unread); a connection ends when a request cannot be read.
func rawRequests(t *testing.T, answer func(c net.Conn, req *http.Request)) string {
	return rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			answer(c, req)
		}
	})
}

// rawClient sends req on a new connection and returns everything read
// until the connection closes or 5 s pass.
func rawClient(t *testing.T, url, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, req)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func inflight(p *balance.Pool) int64 {
	var n int64
	for _, m := range p.Load().Members {
		n += m.Stats.Inflight()
	}
	return n
}

// TestStrayBytesNeverReachAnotherClient: a backend that sends bytes after
// a complete answer (an extra answer, a body on HEAD or 204; at least 20 ms
// late, or in the same write) or cuts a body short must never make one
// client receive an answer meant for another. Requests go in waves and the
// late bytes of a wave are sent when it is over, so that they land while
// their connection is idle in sluice's pool: that is what the integrity
// rule covers (bytes that arrive after the last check before a write are
// the window documented on Upstream).
func TestStrayBytesNeverReachAnotherClient(t *testing.T) {
	var mu sync.Mutex
	owed := map[net.Conn][]string{} // late bytes per connection
	var nStray, nShort atomic.Int64
	serve := func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			id := strings.TrimPrefix(req.URL.Path, "/")
			body := "id=" + id
			extra := fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Id: %s\r\nContent-Length: %d\r\n\r\n%s", id, len(body), body)
			mode := int(hash(id) % 6)
			var late string
			switch {
			case req.Method == http.MethodHead:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Id: %s\r\nContent-Length: %d\r\n\r\n", id, len(body))
				late = body // the body of a HEAD answer, late
			case mode == 1:
				fmt.Fprintf(c, "HTTP/1.1 204 No Content\r\nX-Id: %s\r\n\r\n", id)
				late = body
			case mode == 2:
				// Short body, then close.
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Id: %s\r\nContent-Length: %d\r\n\r\n%s", id, len(body)+10, body)
				nShort.Add(1)
				return
			case mode == 3:
				io.WriteString(c, extra)
				late = extra // an unsolicited second answer, late
			case mode == 4:
				io.WriteString(c, extra+extra) // two answers in one write
				nStray.Add(1)
			default:
				io.WriteString(c, extra)
			}
			if late != "" {
				nStray.Add(1)
				mu.Lock()
				owed[c] = append(owed[c], late)
				mu.Unlock()
			}
		}
	}
	p := pool(t, "round_robin", m("a", rawBackend(t, serve), 1), m("b", rawBackend(t, serve), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, Attempts: 2})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	defer client.CloseIdleConnections()
	var ok, wrong atomic.Int64
	const waves, perWave = 50, 20
	for w := 0; w < waves; w++ {
		var wg sync.WaitGroup
		for i := 0; i < perWave; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("w%dc%d", w, i)
				method := http.MethodGet
				if i%5 == 0 {
					method = http.MethodHead
				}
				req, _ := http.NewRequest(method, f.URL+"/"+id, nil)
				resp, err := client.Do(req)
				if err != nil {
					return // a short body may end in an error; never a leak
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				have := resp.Header.Get("X-Id")
				if resp.StatusCode == 200 || resp.StatusCode == 204 {
					if have != id || (method == http.MethodGet && resp.StatusCode == 200 && len(b) > 0 && string(b) != "id="+id) {
						wrong.Add(1)
						t.Errorf("client %s received the answer for %q (body %q)", id, have, b)
						return
					}
					ok.Add(1)
				} else if have != "" || strings.Contains(string(b), "id=") {
					wrong.Add(1)
					t.Errorf("client %s received %d with foreign content %q %q", id, resp.StatusCode, have, b)
				}
			}()
		}
		wg.Wait()
		// The wave is over and its exchanges ended: its late bytes
		// arrive on connections that are idle.
		waitFor(t, "the wave's exchanges to end", func() bool { return inflight(p) == 0 })
		mu.Lock()
		for c, bytes := range owed {
			for _, b := range bytes {
				io.WriteString(c, b)
			}
		}
		clear(owed)
		mu.Unlock()
	}
	t.Logf("%d answers, %d stray answers, %d short bodies, %d wrong", ok.Load(), nStray.Load(), nShort.Load(), wrong.Load())
	if nStray.Load() < 100 || nShort.Load() < 50 {
		t.Fatalf("the backend misbehaved too rarely to test anything: %d strays, %d short", nStray.Load(), nShort.Load())
	}
	if ok.Load() < waves*perWave/2 {
		t.Fatalf("too few good answers: %d", ok.Load())
	}
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
}

func hash(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

// TestClientFaultsAreNotBlamed: malformed or slow request bodies are the
// client's fault: 400 or 408, no retry, no failure counted, no ejection.
func TestClientFaultsAreNotBlamed(t *testing.T) {
	var hits atomic.Int64
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.Copy(io.Discard, r.Body)
	}))
	defer be.Close()
	p := pool(t, "round_robin", m("a", hostOf(be), 1))
	f := h1Front(t, HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{
		Name: "web", Pool: p, Attempts: 3, PerTryTimeout: 100 * time.Millisecond,
	}}}}, func(s *h1.Server) { s.BodyTimeout = 300 * time.Millisecond })
	for _, tc := range []struct {
		name, req, want string
	}{
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", "HTTP/1.1 400 "},
		{"more data than declared", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n", "HTTP/1.1 400 "},
		{"bare LF chunk line", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", "HTTP/1.1 400 "},
		{"chunk data not followed by CRLF", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcde1\r\nf\r\n0\r\n\r\n", "HTTP/1.1 400 "},
		{"slow chunked upload", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "HTTP/1.1 408 "},
		{"slow idempotent upload", "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhel", "HTTP/1.1 408 "},
		{"slow large upload", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nhel", "HTTP/1.1 408 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 3; i++ {
				if have := rawClient(t, f.URL, tc.req); !strings.HasPrefix(have, tc.want) || !strings.Contains(have, "Connection: close") {
					t.Fatalf("want %q with Connection: close, have %q", tc.want, have)
				}
			}
			if n := failures(p, "a"); n != 0 {
				t.Fatalf("the instance was blamed %d times for the client's fault", n)
			}
			waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
		})
	}
	if len(p.Load().Eligible) != 1 {
		t.Fatal("the instance is no longer eligible")
	}
}

// TestStalledAnswerIsAbortedAndBlamed: an instance that stalls mid-body is
// cut after the body timeout, the client connection is dropped (the answer
// is not ended as if whole) and the instance counts a failure.
func TestStalledAnswerIsAbortedAndBlamed(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	addr := rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		<-release
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, ResponseBodyTimeout: 200 * time.Millisecond})
	start := time.Now()
	have := rawClient(t, f.URL, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if !strings.HasSuffix(have, "partial") || !strings.Contains(have, "Content-Length: 100") {
		t.Fatalf("want the partial answer and a dropped connection, have %q", have)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatal("the stalled answer was not cut by the body timeout")
	}
	waitFor(t, "a failure counted", func() bool { return failures(p, "a") == 1 })
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
}

// TestClientGoneReleasesInflight: when the client goes away, the upstream
// exchange is cancelled at once and the in-flight count released, without
// blaming the instance, whether the instance stalls before its headers or
// in the middle of its body.
func TestClientGoneReleasesInflight(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	addr := rawBackend(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		if req.URL.Path == "/body" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		}
		<-release
	})
	p := pool(t, "least_connections", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	for _, path := range []string{"/head", "/body"} {
		c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		waitFor(t, "the request in flight", func() bool { return inflight(p) == 1 })
		if path == "/body" {
			br := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := http.ReadResponse(br, nil); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
		waitFor(t, "in-flight back to 0 after "+path, func() bool { return inflight(p) == 0 })
	}
	if n := failures(p, "a"); n != 0 {
		t.Fatalf("the instance was blamed %d times for clients that left", n)
	}
}

// TestMalformedAnswers: a malformed answer head is a 502; a chunked body
// that breaks after the head was forwarded ends in a dropped connection,
// never in a last chunk that would make the client take it as whole (or in
// a 502 when the head had not gone out yet). The instance is blamed each
// time.
func TestMalformedAnswers(t *testing.T) {
	addr := rawBackend(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		switch req.URL.Path {
		case "/bad-length":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx")
		case "/bad-status":
			io.WriteString(c, "HTTP/1.1 2000 OK\r\n\r\n")
		case "/early":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbroken\r\n")
		case "/late":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
			time.Sleep(30 * time.Millisecond)
			io.WriteString(c, "5\r\nhello world\r\n")
		}
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, Attempts: 1})
	for _, path := range []string{"/bad-length", "/bad-status"} {
		if have := rawClient(t, f.URL, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(have, "HTTP/1.1 502 ") {
			t.Fatalf("%s: want 502, have %q", path, have)
		}
	}
	for _, path := range []string{"/early", "/late"} {
		have := rawClient(t, f.URL, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		switch {
		case strings.HasPrefix(have, "HTTP/1.1 502 "):
		case strings.HasPrefix(have, "HTTP/1.1 200 ") && !strings.HasSuffix(have, "0\r\n\r\n"):
		default:
			t.Fatalf("%s: want 502 or a chunked answer cut without its last chunk, have %q", path, have)
		}
	}
	waitFor(t, "four failures", func() bool { return failures(p, "a") == 4 })
}

// TestUpgradeKeepsEarlyBytesAndInterimAnswers: bytes sent right after an
// Upgrade head reach the backend; 103 Early Hints are forwarded; Expect:
// 100-continue gets its 100 from sluice and the body goes through.
func TestUpgradeKeepsEarlyBytesAndInterimAnswers(t *testing.T) {
	addr := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/ws":
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
				buf := make([]byte, 5)
				if _, err := io.ReadFull(br, buf); err == nil {
					c.Write(buf)
				}
				return
			case "/hints":
				io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			case "/upload":
				if req.Header.Get("Expect") != "" {
					io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
					continue
				}
				b, _ := io.ReadAll(req.Body)
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
			}
		}
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	host := strings.TrimPrefix(f.URL, "http://")

	c, _ := net.Dial("tcp", host)
	defer c.Close()
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello")
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("the bytes sent with the Upgrade head did not reach the backend: %q %v", buf, err)
	}

	have := rawClient(t, f.URL, "GET /hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(have, "HTTP/1.1 103 Early Hints\r\n") || !strings.Contains(have, "Link: </s.css>; rel=preload") || !strings.Contains(have, "HTTP/1.1 200 OK") {
		t.Fatalf("103 not forwarded: %q", have)
	}

	c2, _ := net.Dial("tcp", host)
	defer c2.Close()
	io.WriteString(c2, "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
	br2 := bufio.NewReader(c2)
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, _ := br2.ReadString('\n'); line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("want 100 Continue, have %q", line)
	}
	br2.ReadString('\n')
	io.WriteString(c2, "data")
	resp, err = http.ReadResponse(br2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "data" {
		t.Fatalf("upload: %d %q", resp.StatusCode, b)
	}
}

// TestForwardingHeaders: X-Forwarded-* from an untrusted peer are
// replaced; from a trusted one appended to (For) or kept, and the client
// address used for hashing is the first untrusted one from the right.
func TestForwardingHeaders(t *testing.T) {
	seen := make(chan http.Header, 1)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Clone() }))
	defer be.Close()
	p := pool(t, "round_robin", m("a", hostOf(be), 1))
	req := func(f *testFront, hdr string) http.Header {
		t.Helper()
		rawClient(t, f.URL, "GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n"+hdr+"\r\n")
		select {
		case h := <-seen:
			return h
		case <-time.After(5 * time.Second):
			t.Fatal("no request reached the backend")
		}
		return nil
	}
	spoof := "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nForwarded: for=6.6.6.6\r\n" +
		// CGI-style backends read these as the headers above.
		"X_Forwarded_For: 6.6.6.7\r\nx_forwarded_PROTO: https\r\nX-Forwarded_Host: evil.test\r\nFORWARDED: for=6.6.6.7\r\nX_Other: kept\r\n"
	untrusted := h1Front(t, HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}})
	h := req(untrusted, spoof)
	if h.Get("X-Forwarded-For") != "127.0.0.1" || h.Get("X-Forwarded-Proto") != "http" || h.Get("X-Forwarded-Host") != "site.test" || h.Get("Forwarded") != "" {
		t.Fatalf("untrusted peer: %v", h)
	}
	for k := range h {
		if strings.Contains(k, "_") && k != "X_other" {
			t.Errorf("untrusted peer: %s reached the instance", k)
		}
	}
	if h.Get("X_other") != "kept" {
		t.Errorf("untrusted peer: other fields with underscores are passed on: %v", h)
	}
	trusted := h1Front(t, HTTPOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")},
		Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}})
	h = req(trusted, "X-Forwarded-For: 203.0.113.7, 10.1.2.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: site.example\r\n")
	if h.Get("X-Forwarded-For") != "203.0.113.7, 10.1.2.3, 127.0.0.1" || h.Get("X-Forwarded-Proto") != "https" || h.Get("X-Forwarded-Host") != "site.example" {
		t.Fatalf("trusted peer: %v", h)
	}

	fwd := &forwarding{trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}}
	for _, tc := range []struct{ remote, xff, want string }{
		{"127.0.0.1:5", "203.0.113.7, 10.1.2.3, 127.0.0.1", "203.0.113.7"},
		{"127.0.0.1:5", "198.51.100.1, 203.0.113.7, 10.1.2.3, 127.0.0.1", "203.0.113.7"},
		{"127.0.0.1:5", "10.9.9.9, 127.0.0.1", "10.9.9.9"},
		{"127.0.0.1:5", "junk, 10.1.2.3, 127.0.0.1", "10.1.2.3"},
		{"192.0.2.1:5", "203.0.113.7, 192.0.2.1", "192.0.2.1"},
	} {
		r := &http.Request{RemoteAddr: tc.remote, Header: http.Header{"X-Forwarded-For": {tc.xff}}}
		if have := fwd.client(r); have.String() != tc.want {
			t.Errorf("client(%s, %q): want %s, have %s", tc.remote, tc.xff, tc.want, have)
		}
	}
}

// TestUpstreamReusedOnlyAtBoundary: keep-alive to the instance stays on for
// well-behaved answers (one connection for many requests of every kind).
func TestUpstreamReusedOnlyAtBoundary(t *testing.T) {
	var conns atomic.Int64
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/204" {
			w.WriteHeader(204)
			return
		}
		io.WriteString(w, "ok")
	}))
	be.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	be.Start()
	defer be.Close()
	p := pool(t, "round_robin", m("a", hostOf(be), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	client := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 30; i++ {
		for _, r := range []struct{ method, path string }{{"GET", "/"}, {"HEAD", "/"}, {"GET", "/204"}, {"POST", "/"}} {
			req, _ := http.NewRequestWithContext(context.Background(), r.method, f.URL+r.path, strings.NewReader("x"))
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("want 1 upstream connection for 120 sequential requests, have %d", n)
	}
}

// TestClientThatStopsReading: a client that stops reading a long answer is
// cut after the write timeout; the upstream exchange ends, in-flight is
// released and the instance is not blamed.
func TestClientThatStopsReading(t *testing.T) {
	upstreamDone := make(chan struct{})
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(upstreamDone)
		chunk := make([]byte, 64<<10)
		for i := 0; i < 4096; i++ { // 256 MiB: far more than socket buffers hold
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer be.Close()
	p := pool(t, "round_robin", m("a", hostOf(be), 1))
	f := h1Front(t, HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}},
		func(s *h1.Server) { s.WriteTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case <-upstreamDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the answer to a client that stopped reading was not cut")
	}
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
	if n := failures(p, "a"); n != 0 {
		t.Fatalf("the instance was blamed %d times for a client that stopped reading", n)
	}
}

// TestSlowStreamsAreNotCut: an answer that keeps sending, each byte within
// the body timeout, runs as long as it likes.
func TestSlowStreamsAreNotCut(t *testing.T) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 20; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
	}))
	defer be.Close()
	p := pool(t, "round_robin", m("a", hostOf(be), 1))
	f := h1Front(t, HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{
		Name: "web", Pool: p, ResponseBodyTimeout: 200 * time.Millisecond, PerTryTimeout: 200 * time.Millisecond,
	}}}}, func(s *h1.Server) { s.WriteTimeout = 200 * time.Millisecond })
	resp, err := http.Get(f.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || strings.Count(string(b), "data: ") != 20 {
		t.Fatalf("want 20 events over 1 s, have %d (%v)", strings.Count(string(b), "data: "), err)
	}
	if n := failures(p, "a"); n != 0 {
		t.Fatalf("a healthy stream counted %d failures", n)
	}
}

// TestHashingUsesForwardedClient: behind a trusted proxy, ip_hash picks by
// the client address found in X-Forwarded-For (the first untrusted one from
// the right), not by the proxy's; from an untrusted peer the header is
// ignored and every request hashes the peer.
func TestHashingUsesForwardedClient(t *testing.T) {
	a, b, c := backend(t, "a"), backend(t, "b"), backend(t, "c")
	p := pool(t, "ip_hash", m("a", hostOf(a), 1), m("b", hostOf(b), 1), m("c", hostOf(c), 1))
	routes := []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}
	trusted := h1Front(t, HTTPOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}, Routes: routes})
	untrusted := h1Front(t, HTTPOptions{Routes: routes})
	pick := func(f *testFront, xff string) string {
		t.Helper()
		resp, _ := get(t, f.URL, "X-Forwarded-For", xff)
		return resp.Header.Get("X-Backend")
	}
	seen := map[string]bool{}
	viaUntrusted := map[string]bool{}
	for i := 1; i <= 32; i++ {
		client := fmt.Sprintf("203.0.113.%d", i)
		want := pick(trusted, client)
		seen[want] = true
		// The same client through one more trusted hop, behind a spoofed
		// entry on the left: the same instance.
		if have := pick(trusted, "198.51.100.9, "+client+", 10.1.2.3"); have != want {
			t.Fatalf("client %s: %s directly, %s through a trusted hop", client, want, have)
		}
		viaUntrusted[pick(untrusted, client)] = true
	}
	if len(seen) < 2 {
		t.Fatalf("32 forwarded clients all hashed to %v: the proxy's address was hashed, not theirs", seen)
	}
	if len(viaUntrusted) != 1 {
		t.Fatalf("an untrusted peer's X-Forwarded-For steered the hash: %v", viaUntrusted)
	}
}
