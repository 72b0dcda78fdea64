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
	more := make(chan struct{})
	addr := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfirst")
		select {
		case <-more:
		case <-time.After(5 * time.Second):
		}
		io.WriteString(c, "!")
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	part := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, part); err != nil || string(part) != "first" {
		t.Fatalf("have %q, %v before the instance sent the rest", part, err)
	}
	close(more)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "!" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}
