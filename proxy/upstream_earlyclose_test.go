package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// TestUpstreamAnswerClosedEarlyIsNotReused: an answer whose body is closed
// before its end (a retried 5xx that is not drained, a copy given up) ends
// its connection, even when nothing more has arrived yet: the rest of that
// body, sent once the next request is on the wire, must never be read as
// the next answer.
func TestUpstreamAnswerClosedEarlyIsNotReused(t *testing.T) {
	tail := "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nleak"
	body := "early" + tail
	var conns atomic.Int64
	addr := rawBackend(t, func(c net.Conn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		owed := ""
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/first":
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\nearly")
				owed = tail
			case "/second":
				// The rest of the first body arrives only now, after the
				// connection was checked and the request written on it.
				io.WriteString(c, owed+"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				owed = ""
			}
		}
	})
	u := NewUpstream()
	defer u.Close()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/first", nil)
	resp, err := u.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, len("early"))); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { resp.Body.Close(); close(closed) }() // before its end, without an error
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("closing a body before its end waits for the rest of it")
	}
	if _, have := upGet(t, u, http.MethodGet, addr, "/second", ""); have != "ok" {
		t.Fatalf("the next request got %q, the rest of an answer given up, want \"ok\"", have)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("want 2 connections (the first not reused), have %d", n)
	}
}
