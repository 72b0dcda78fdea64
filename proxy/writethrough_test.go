package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// An answer with a Content-Length whose body the instance sends in parts
// reaches the client part by part: sluice's writer sends each Write as it
// comes (h1.WriteThrough), with no timer and no flush of the head alone.
func TestAnswerWithLengthPassesOnAsItComes(t *testing.T) {
	resp, release := heldAnswer(t, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfirst", "!")
	part := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, part); err != nil || string(part) != "first" {
		t.Fatalf("have %q, %v before the instance sent the rest", part, err)
	}
	release()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "!" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

// heldAnswer sends GET / through a front to an instance that answers
// first, then holds the rest until release is called (or 5 s), and
// returns the answer as soon as its head has come (within 3 s).
func heldAnswer(t *testing.T, first, rest string) (resp *http.Response, release func()) {
	t.Helper()
	more := make(chan struct{})
	addr := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, first)
		select {
		case <-more:
		case <-time.After(5 * time.Second):
		}
		io.WriteString(c, rest)
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err = http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no head while the instance holds the rest: %v", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return resp, func() { close(more) }
}
