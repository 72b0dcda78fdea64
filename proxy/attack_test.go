package proxy

// Attack tests, from an attacker's probe: each one failed on the code it
// was written against and now guards its fix; the comment above each test
// says what it showed. Raw sockets on both
// sides, loopback only.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAttackStatusBelow100LeaksInflight shows: an instance that answers
// with a status code below 100 ("HTTP/1.1 000 OK", "099"), which
// http.ReadResponse accepts, makes ReverseProxy call WriteHeader(0), which
// panics in h1's response. The panic skips res.Body.Close(), so the pick is
// never ended (in-flight stays 1 for good, the instance is never blamed)
// and the upstream connection is never closed. Expected: a malformed status
// line is a 502 and a failure of the instance (README, Blame: "malformed
// answer head (bad status line ...)"), in-flight back to 0, the upstream
// connection closed.
func TestAttackStatusBelow100LeaksInflight(t *testing.T) {
	var upClosed atomic.Int64
	addr := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\nhi")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			upClosed.Add(1)
		}
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	have := rawClient(t, f.URL, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(have, "HTTP/1.1 502 ") {
		t.Errorf("want 502 for a status line with code 000, have %q", have)
	}
	deadline := time.Now().Add(2 * time.Second)
	for inflight(p) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := inflight(p); n != 0 {
		t.Errorf("in-flight stuck at %d after the answer", n)
	}
	if failures(p, "a") == 0 {
		t.Errorf("the instance was not blamed for a malformed status line")
	}
	waitFor(t, "sluice to close the upstream connection", func() bool { return upClosed.Load() != 0 })
}

// TestAttackAbsoluteFormHostBypassesValidation shows: the authority of an
// absolute-form request target replaces Host but is not checked like the
// Host header (a Host header "a<b" is a 400; README, Strict request
// framing). sluice routes by it and writes it into X-Forwarded-Host, while
// Request.Write, finding it invalid, blanks the Host line: the instance
// gets "Host: " (empty) plus "X-Forwarded-Host: a<b" (characters such as
// < > " reach every backend that trusts X-Forwarded-Host to build links),
// and the README promise that Host is passed unchanged no longer holds.
// Expected: 400, as for the same value in a Host header.
func TestAttackAbsoluteFormHostBypassesValidation(t *testing.T) {
	seen := make(chan string, 4)
	addr := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			seen <- fmt.Sprintf("Host=%q X-Forwarded-Host=%q", req.Host, req.Header.Get("X-Forwarded-Host"))
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	if have := rawClient(t, f.URL, "GET / HTTP/1.1\r\nHost: a<b\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(have, "HTTP/1.1 400 ") {
		t.Fatalf("control: a Host header a<b should be a 400, have %q", have)
	}
	have := rawClient(t, f.URL, "GET http://a<b\"'()/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(have, "HTTP/1.1 400 ") {
		select {
		case s := <-seen:
			t.Errorf("want 400 for an absolute-form target with an invalid authority, have %q; the instance saw %s", firstLine(have), s)
		default:
			t.Errorf("want 400 for an absolute-form target with an invalid authority, have %q", firstLine(have))
		}
	}
}

// TestAttackEarlyAnswerToUploadBecomes502 shows: an instance that answers
// a large upload before reading it (413, 401: common for a Go net/http
// handler that does not read the body; the server then closes the
// connection) gets its answer replaced by a 502, and is blamed for it.
// Upstream.exchange writes the whole body before it reads anything, so the
// instance's close fails the write (EPIPE/ECONNRESET) and the answer
// already waiting in the socket is never read. http.Transport and HAProxy
// pass such an early answer on. Expected: the client gets the 413, the
// instance is not blamed.
func TestAttackEarlyAnswerToUploadBecomes502(t *testing.T) {
	addr := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big\n")
		// Like net/http's server: close without reading the body.
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 64 << 20
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
	go func() {
		chunk := make([]byte, 64<<10)
		for n := 0; n < size; n += len(chunk) {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 413 {
		t.Errorf("want the instance's 413, have %d", resp.StatusCode)
	}
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
	if n := failures(p, "a"); n != 0 {
		t.Errorf("the instance was blamed %d times for answering early", n)
	}
}

// TestAttackUpgradeWithBodyLosesEarlyByte shows: for an Upgrade request
// with a body, reading the body to its end starts h1's background read
// (client-gone detection). A byte the client sends before the instance's
// 101 is taken by that read into connReader.byteBuf, but Hijack hands over
// only what the bufio.Reader buffered: the first byte of the upgraded
// stream is lost. Expected (README: upgrades pass "any bytes the client
// sends right after the upgrade request"): the backend gets all of them.
func TestAttackUpgradeWithBodyLosesEarlyByte(t *testing.T) {
	// The order: sluice has forwarded the whole request (body read to its
	// end, so the background read is armed) before the client sends its
	// early bytes, and they are in sluice's socket (written over loopback)
	// before the 101 answer.
	forwarded, early := make(chan struct{}), make(chan struct{})
	addr := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.ReadAll(req.Body)
		close(forwarded)
		select {
		case <-early:
		case <-time.After(5 * time.Second):
			return
		}
		// A bound, not a synchronisation: h1's background read starts
		// clientGoneDelay (5 ms) after the body's end, an event it does
		// not expose; 20 times that lets it run and take a byte, as it
		// would have without noWatch, before the 101 ends it.
		time.Sleep(100 * time.Millisecond)
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		buf := make([]byte, 5)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _ := io.ReadFull(br, buf)
		c.Write(buf[:n])
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\nContent-Length: 3\r\n\r\nabc")
	select {
	case <-forwarded:
	case <-time.After(5 * time.Second):
		t.Fatal("the upgrade request never reached the backend")
	}
	io.WriteString(c, "hello")
	close(early)
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	got, _ := io.ReadAll(br)
	if string(got) != "hello" {
		t.Errorf("the backend got %q of the client's early bytes, want %q", got, "hello")
	}
}

// TestAttackUnaskedUpgradeLeaksUpstreamConn shows: an instance that
// answers 101 to a request that asked for no upgrade gets a 502 from
// ReverseProxy's handleUpgradeResponse, which returns without closing the
// response body: the upstream connection (deadlines cleared, context watch
// detached by Upstream.wrap) stays open for good. Expected: 502 and the
// upstream connection closed.
func TestAttackUnaskedUpgradeLeaksUpstreamConn(t *testing.T) {
	var upClosed atomic.Int64
	addr := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			upClosed.Add(1)
		}
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	have := rawClient(t, f.URL, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(have, "HTTP/1.1 502 ") {
		t.Errorf("want 502, have %q", firstLine(have))
	}
	waitFor(t, "sluice to close the upstream connection of the refused 101", func() bool { return upClosed.Load() != 0 })
}

func firstLine(s string) string {
	if i := strings.Index(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// TestAttackPerTryTimeoutCutsUploadWrites shows: retry.per_try_timeout,
// documented as the bound from "the request sent (body included) until
// the response headers", also becomes the bound of each write of the
// request (newServiceProxy folds it into TryLimits.Header, which
// Upstream uses as writeWait). An instance that pauses reading a large
// upload for longer than per_try_timeout (but far less than
// response_header_timeout, which README names as the per-write bound) has
// the upload cut, answers 502 to the client and is blamed. Expected: the
// upload completes and the instance's 200 reaches the client.
func TestAttackPerTryTimeoutCutsUploadWrites(t *testing.T) {
	const size = 32 << 20
	addr := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		time.Sleep(600 * time.Millisecond) // busy before it reads the body
		n, _ := io.Copy(io.Discard, req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(fmt.Sprint(n)))
		fmt.Fprint(c, n)
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, PerTryTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
	go func() {
		chunk := make([]byte, 64<<10)
		for n := 0; n < size; n += len(chunk) {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != fmt.Sprint(size) {
		t.Errorf("want 200 %d, have %d %q", size, resp.StatusCode, b)
	}
	if n := failures(p, "a"); n != 0 {
		t.Errorf("the instance was blamed %d times for a pause shorter than response_header_timeout", n)
	}
}

// TestHalfClosedClientIsGone: a client that half-closes its connection
// after a request cannot be told from one that closed it (both send a
// FIN), so sluice treats it as gone, as net/http, nginx and Envoy do: the
// upstream exchange is cancelled at once, in-flight is released, the
// instance is not blamed and the client gets nothing. (HAProxy without
// abortonclose would still answer it.) Documented in the README's blame
// table.
func TestHalfClosedClientIsGone(t *testing.T) {
	addr := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		// The answer goes out once sluice has cut the exchange (the read
		// ends), or after 2 s if it never does: then it reaches the
		// client, whose read waits 3 s, and the test fails.
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		br.ReadByte()
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(c)
	if len(b) != 0 {
		t.Errorf("a half-closed client got %q, want nothing", b)
	}
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
	if n := failures(p, "a"); n != 0 {
		t.Errorf("the instance was blamed %d times", n)
	}
}
