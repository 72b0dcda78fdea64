package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serve starts a Server with h on a loopback port and returns its address.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ln.Addr().String()
}

// echo answers with the method, path and body it read; a body read error
// is answered with the *Error's status, as sluice's proxy does.
func echo(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	var e *Error
	if errors.As(err, &e) {
		if r.ProtoMajor == 1 {
			// Over HTTP/2 it would end the connection's other streams.
			w.Header().Set("Connection", "close")
		}
		w.WriteHeader(e.Status)
		io.WriteString(w, e.Reason)
		return
	}
	io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(b))
}

// raw sends req on a new connection and returns everything the server
// writes until it closes the connection (or 5 s pass).
func raw(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, req)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

func countAnswers(s string) int { return strings.Count(s, "HTTP/1.1 ") }

func TestStrictFraming(t *testing.T) {
	var served atomic.Int64
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		echo(w, r)
	})})
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	bodyFault := map[string]bool{"bad chunk size": true, "chunk longer than declared": true,
		"bare LF chunk line": true, "bare LF after data": true, "huge chunk size": true,
		"chunk data not followed by CRLF": true}
	for _, tc := range []struct {
		name, req string
		want      string // status line prefix of the only answer
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"TE and CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"HTTP/1.0 with TE", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"obs-fold TE", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"obs-fold other", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"conflicting CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab" + smuggled, "HTTP/1.1 400 "},
		{"signed CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na" + smuggled, "HTTP/1.1 400 "},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"TE not chunked last", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"TE gzip, chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 501 "},
		{"no Host", "GET / HTTP/1.1\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"bare CR", "GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"HTTP/2.0 line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", "HTTP/1.1 505 "},
		{"garbage", "HELLO\r\n\r\n", "HTTP/1.1 400 "},
		{"CONNECT", "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", "HTTP/1.1 405 "},
		{"Expect other", "GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n" + smuggled, "HTTP/1.1 417 "},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"chunk longer than declared", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"bare LF chunk line", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		// The two bytes after the data are not CRLF, and what follows them
		// parses as chunks: only the CRLF rule refuses it.
		{"chunk data not followed by CRLF", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcde1\r\nf\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"bare LF after data", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
		{"huge chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n" + smuggled, "HTTP/1.1 400 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := served.Load()
			have := raw(t, addr, tc.req)
			if !strings.HasPrefix(have, tc.want) {
				t.Fatalf("want %q..., have %q", tc.want, have)
			}
			if n := countAnswers(have); n != 1 {
				t.Fatalf("want exactly one answer and a close (nothing smuggled), have %d: %q", n, have)
			}
			if strings.Contains(have, "smuggled") {
				t.Fatalf("the bytes after the bad request were served: %q", have)
			}
			if !strings.Contains(have, "Connection: close") {
				t.Fatalf("the answer does not say Connection: close: %q", have)
			}
			// A bad head never reaches the handler; a bad body does, once
			// (the handler's body read fails with the 400).
			if bodyFault[tc.name] {
				if served.Load() != before+1 {
					t.Fatalf("body errors reach the handler once")
				}
			} else if served.Load() != before {
				t.Fatalf("a refused head reached the handler")
			}
		})
	}
}

func TestValidRequestsKeepAlive(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo)})
	reqs := "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" +
		"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nde\r\n1\r\nf\r\n0\r\nX-Trailer: 1\r\n\r\n" +
		"\r\nGET /c HTTP/1.1\r\nhost: x\r\nX-Empty:\r\n\r\n" +
		"GET /e HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" // no length: ends with the connection
	have := raw(t, addr, reqs)
	for _, want := range []string{"POST /a abc", "POST /b def", "GET /c ", "GET /d ", "GET /e "} {
		if !strings.Contains(have, want) {
			t.Errorf("missing %q in %q", want, have)
		}
	}
	if n := countAnswers(have); n != 5 {
		t.Fatalf("want 5 pipelined answers, have %d: %q", n, have)
	}
}

func TestHeaderTimeoutAnswers408(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo), HeaderTimeout: 200 * time.Millisecond})
	have := raw(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n")
	if !strings.HasPrefix(have, "HTTP/1.1 408 ") || !strings.Contains(have, "Connection: close") {
		t.Fatalf("want 408 and close, have %q", have)
	}
}

func TestIdleKeepAliveClosesSilently(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo), IdleTimeout: 200 * time.Millisecond})
	have := raw(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if n := countAnswers(have); n != 1 || strings.Contains(have, "408") {
		t.Fatalf("want one answer and a silent close, have %q", have)
	}
}

func TestRequestBodyTimeout(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo), BodyTimeout: 200 * time.Millisecond})
	have := raw(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	if !strings.HasPrefix(have, "HTTP/1.1 408 ") {
		t.Fatalf("want 408, have %q", have)
	}
}

func TestClientGoneCancelsRequest(t *testing.T) {
	var started, cancelled chan struct{}
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		close(started)
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(10 * time.Second):
		}
	})})
	for _, req := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"} {
		started, cancelled = make(chan struct{}), make(chan struct{})
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, req)
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatalf("%q: the handler did not start", req)
		}
		c.Close()
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Fatalf("%q: the request was not cancelled when the client went away", req)
		}
	}
}

func TestExpectContinue(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo)})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("want 100 Continue before the body, have %q %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "data")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "PUT /up data" {
		t.Fatalf("body %q", b)
	}
}

func TestHijackKeepsBufferedBytes(t *testing.T) {
	got := make(chan string, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			got <- err.Error()
			return
		}
		defer conn.Close()
		io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		buf := make([]byte, 5)
		io.ReadFull(conn, buf)
		got <- string(buf)
	})})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nhello")
	select {
	case s := <-got:
		if s != "hello" {
			t.Fatalf("want the bytes sent with the head, have %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the bytes sent right after the Upgrade head were lost")
	}
}

func TestResponseFraming(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "ab")
			w.(http.Flusher).Flush()
			io.WriteString(w, "cd")
			w.Header().Set("X-Sum", "7")
		case "/cl":
			w.Header().Set("Content-Length", "3")
			io.WriteString(w, "xyz")
		case "/short":
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "xyz")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/103":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "final")
		case "/newline":
			w.Header().Set("X-Bad", "a\r\nInjected: yes")
		}
	})})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(method, path string) *http.Response {
		t.Helper()
		io.WriteString(c, method+" "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp
	}
	resp := get("GET", "/chunked")
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "abcd" || resp.Trailer.Get("X-Sum") != "7" || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("chunked: %q %v %v", b, resp.Trailer, resp.TransferEncoding)
	}
	resp = get("GET", "/cl")
	if b, _ := io.ReadAll(resp.Body); string(b) != "xyz" || resp.ContentLength != 3 {
		t.Fatalf("cl: %q", b)
	}
	resp = get("HEAD", "/cl")
	if resp.ContentLength != 3 {
		t.Fatalf("HEAD keeps Content-Length: %d", resp.ContentLength)
	}
	resp = get("GET", "/204")
	if resp.StatusCode != 204 {
		t.Fatalf("204: %d", resp.StatusCode)
	}
	resp = get("GET", "/nothing")
	if resp.ContentLength != 0 || resp.StatusCode != 200 {
		t.Fatalf("empty answer: %d %d", resp.StatusCode, resp.ContentLength)
	}
	resp = get("GET", "/newline")
	if resp.Header.Get("Injected") != "" {
		t.Fatalf("a header value started a header line: %v", resp.Header)
	}
	io.WriteString(c, "GET /103 HTTP/1.1\r\nHost: x\r\n\r\n")
	tp, _ := br.ReadString('\n')
	if tp != "HTTP/1.1 103 Early Hints\r\n" {
		t.Fatalf("want 103 first, have %q", tp)
	}
	for l, _ := br.ReadString('\n'); l != "\r\n"; l, _ = br.ReadString('\n') {
	}
	resp, err = http.ReadResponse(br, nil)
	if b, _ := io.ReadAll(resp.Body); err != nil || string(b) != "final" || resp.Header.Get("Link") != "" {
		t.Fatalf("after 103: %v %q %v", err, b, resp.Header)
	}
	// A body shorter than its Content-Length ends the connection.
	resp = get("GET", "/short")
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("want an error reading a short body (the connection closed)")
	}
}

func TestH2CPriorKnowledge(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	})})
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Protocols: &protocols}}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "HTTP/2.0" {
		t.Fatalf("want HTTP/2.0, have %q", b)
	}
}

func TestShutdownFinishesRequestsInFlight(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "done")
	})}
	addr := serve(t, s)
	// An idle keep-alive connection is closed by Shutdown.
	idle, _ := net.Dial("tcp", addr)
	defer idle.Close()
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	idleR := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(idleR, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
	}
	answer := make(chan string, 1)
	go func() { answer <- raw(t, addr, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n") }()
	<-started
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idleR.ReadByte(); err == nil {
		t.Fatal("idle connection not closed by Shutdown")
	}
	select {
	case <-shut:
		t.Fatal("Shutdown returned with a request in flight")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if a := <-answer; !strings.Contains(a, "done") || !strings.Contains(a, "Connection: close") {
		t.Fatalf("the request in flight: %q", a)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

func TestHandlerPanicDropsConnection(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})})
	have := raw(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if countAnswers(have) != 1 || !strings.HasSuffix(have, "partial") {
		t.Fatalf("want the partial answer then a close, have %q", have)
	}
}

func h2cClient() *http.Client {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Protocols: &protocols}}
}

// TestH2CBodyTimeout: BodyTimeout holds for an h2c request body too: a
// stream whose body stalls fails with the 408 *Error of HTTP/1.1, while a
// body that keeps coming, however long it takes, is read whole.
func TestH2CBodyTimeout(t *testing.T) {
	// BodyTimeout is 5 times the steady body's gap, so that a loaded
	// machine does not turn a gap into a stall.
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo), BodyTimeout: 500 * time.Millisecond})
	client := h2cClient()
	defer client.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", pr)
	go io.WriteString(pw, "abc")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || resp.ProtoMajor != 2 {
		t.Fatalf("stalled body: want 408 over HTTP/2, have %d over %s after %v", resp.StatusCode, resp.Proto, time.Since(start))
	}

	// 8 pieces 100 ms apart: 700 ms in all, longer than BodyTimeout, never
	// 500 ms without a byte.
	pr, pw = io.Pipe()
	req, _ = http.NewRequest(http.MethodPost, "http://"+addr+"/", pr)
	go func() {
		for i := 0; i < 8; i++ {
			io.WriteString(pw, "x")
			time.Sleep(100 * time.Millisecond)
		}
		pw.Close()
	}()
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasSuffix(string(b), "xxxxxxxx") {
		t.Fatalf("slow but steady body: %d %q", resp.StatusCode, b)
	}
}

// TestH2CWriteTimeout: WriteTimeout holds for an h2c answer too: a stream
// whose client stops reading (its flow-control window stays shut) is reset
// and the handler's write fails, while the connection's other streams go
// on; an answer that keeps being read is never cut.
func TestH2CWriteTimeout(t *testing.T) {
	writeErr := make(chan error, 1)
	addr := serve(t, &Server{WriteTimeout: 300 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "small")
			return
		}
		// 16 MiB, beyond the windows of Go's client (4 MiB a stream);
		// /steady sends 1 MiB in 640 ms.
		chunk, n := make([]byte, 16<<10), 1024
		if r.URL.Path == "/steady" {
			n = 64
		}
		for i := 0; i < n; i++ {
			if _, err := w.Write(chunk); err != nil {
				writeErr <- err
				return
			}
			if r.URL.Path == "/steady" {
				time.Sleep(10 * time.Millisecond)
			}
		}
		writeErr <- nil
	})})
	client := h2cClient()
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + addr + "/stuck")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() // never read
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("a write to a client that stopped reading succeeded")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a write to a client that stopped reading was not timed out")
	}
	resp2, err := client.Get("http://" + addr + "/small")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if string(b) != "small" {
		t.Fatalf("another stream after the reset: %q", b)
	}
	resp3, err := client.Get("http://" + addr + "/steady") // ~640 ms in all
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp3.Body)
	resp3.Body.Close()
	if err != nil || n != 1<<20 || <-writeErr != nil {
		t.Fatalf("steady answer: %d bytes, %v", n, err)
	}
}
