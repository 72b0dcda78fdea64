package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAtk8bH2BrokenAnswers: an instance's malformed, cut or stalled answer
// to an h2 request: 502 before the head, the stream reset after it; the
// instance blamed; in-flight back to 0.
func TestAtk8bH2BrokenAnswers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		answer   string // written after the request head
		close    bool   // close after the answer; else stall
		headSent bool
	}{
		{"garbage status line", "HTTP/1.1 abc\r\n\r\n", true, false},
		{"garbage then stall", "HTTP/1.1 abc\r\n", false, false},
		{"stall before the head", "", false, false},
		{"short body then close", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", true, true},
		{"short body then stall", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", false, true},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", false, true},
		{"chunked cut", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", true, true},
		{"chunked stall", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawBackend(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, tc.answer)
				if !tc.close {
					c.SetReadDeadline(time.Now().Add(10 * time.Second))
					io.Copy(io.Discard, c)
				}
			})
			p := pool(t, "round_robin", m("a", addr, 1))
			f := front(t, ServiceOptions{Name: "web", Pool: p, ResponseHeaderTimeout: 300 * time.Millisecond, ResponseBodyTimeout: 300 * time.Millisecond})
			client := h2cClient()
			defer client.CloseIdleConnections()
			resp, err := client.Get(f.URL + "/x")
			if tc.headSent {
				if err != nil {
					t.Fatalf("head: %v", err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Errorf("want the stream reset, have a whole body %q", b)
				}
			} else {
				if err != nil {
					t.Fatalf("want 502, have %v", err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusGatewayTimeout {
					t.Errorf("want 502 or 504, have %d", resp.StatusCode)
				}
			}
			waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
			if n := failures(p, "a"); n != 1 {
				t.Errorf("instance blamed %d times, want 1", n)
			}
		})
	}
}

// TestAtk8bH2Trailers: the instance's trailers reach an h2 client, declared
// or not.
func TestAtk8bH2Trailers(t *testing.T) {
	addr := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Late: def\r\n\r\n")
		}
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	client := h2cClient()
	defer client.CloseIdleConnections()
	resp, err := client.Get(f.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hello" || err != nil || resp.Trailer.Get("X-Sum") != "abc" || resp.Trailer.Get("X-Late") != "def" {
		t.Errorf("body %q %v, trailers %v", b, err, resp.Trailer)
	}
}

// TestAtk8bH2StrayBytes: bytes an instance sends after a complete answer to
// an h2 request never reach another h2 client.
func TestAtk8bH2StrayBytes(t *testing.T) {
	sent := make(chan struct{}, 16)
	addr := rawRequests(t, func(c net.Conn, req *http.Request) {
		path := req.URL.Path
		switch {
		case strings.HasPrefix(path, "/stray"):
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"+path[:6])
		case strings.HasPrefix(path, "/head"):
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
		case strings.HasPrefix(path, "/204"):
			io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
		default:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(path))+"\r\n\r\n"+path)
			return
		}
		go func() {
			time.Sleep(30 * time.Millisecond)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nLEAK!")
			sent <- struct{}{}
		}()
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	a, b := h2cClient(), h2cClient()
	defer a.CloseIdleConnections()
	defer b.CloseIdleConnections()
	for _, first := range []string{"/stray", "/head", "/204"} {
		method := http.MethodGet
		if first == "/head" {
			method = http.MethodHead
		}
		req, _ := http.NewRequest(method, f.URL+first, nil)
		resp, err := a.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		<-sent
		for i := 0; i < 5; i++ {
			path := "/b" + first + "/" + strconv.Itoa(i)
			resp, err := b.Get(f.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(got) != path {
				t.Errorf("%s: got %q", path, got)
			}
			if strings.Contains(string(got), "LEAK") {
				t.Errorf("%s: got the stray answer %q", path, got)
			}
		}
	}
}

// TestAtk8bH2ClientFaults: over raw h2, forwarding headers in any spelling
// are replaced, and a body shorter or longer than its content-length is the
// client's fault (400 or a reset stream), never the instance's.
func TestAtk8bH2ClientFaults(t *testing.T) {
	seen := make(chan string, 16)
	addr := rawRequests(t, func(c net.Conn, req *http.Request) {
		var b strings.Builder
		req.Header.Write(&b)
		seen <- b.String()
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})

	h := dialH2Raw(t, f.URL)
	h.headers(1, true, ":method", "GET", ":scheme", "http", ":path", "/fwd", ":authority", "x",
		"x_forwarded_for", "6.6.6.6", "x-forwarded-for", "6.6.6.7", "forwarded", "for=6.6.6.8",
		"x_forwarded_host", "evil", "x-forwarded_proto", "https", "x-forwarded-host", "evil")
	if r := h.result(1); r.status != 200 {
		t.Fatalf("forwarding: %+v", r)
	}
	if s := <-seen; strings.Contains(s, "6.6.6") || strings.Contains(s, "evil") || strings.Contains(s, "_") ||
		strings.Contains(s, "https") || !strings.Contains(s, "X-Forwarded-For: 127.0.0.1\r\n") {
		t.Errorf("the instance saw forwarding headers from the client:\n%s", s)
	}

	h.headers(3, false, ":method", "POST", ":scheme", "http", ":path", "/short", ":authority", "x", "content-length", "10")
	h.data(3, true, "abc")
	if r := h.result(3); r.status != http.StatusBadRequest {
		t.Errorf("short body: want 400, have %+v", r)
	}
	h.headers(5, false, ":method", "POST", ":scheme", "http", ":path", "/long", ":authority", "x", "content-length", "2")
	h.data(5, true, "abcdef")
	if r := h.result(5); !r.rst && r.status != http.StatusBadRequest {
		t.Errorf("long body: want a reset or 400, have %+v", r)
	}
	waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
	if n := failures(p, "a"); n != 0 {
		t.Errorf("instance blamed %d times for the client's bodies", n)
	}
}
