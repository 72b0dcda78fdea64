package h1

// Review tests: each fails on the code it was written against and shows
// the finding described above it. Raw sockets, loopback only.

import (
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestReviewManyChunksRefused shows: body.crlfLine adds every chunk-size
// line (digits and CRLF included) to b.trailer, the 64 KiB budget that
// README ("Strict request framing") and maxTrailerBytes describe as being
// for chunk extensions and trailers only. A valid chunked upload without a
// single extension or trailer is refused with 400 "chunk metadata too
// large" once its chunk-size lines add up to 64 KiB: about 11,000 chunks,
// i.e. ~350 MB sent by a client that writes 32 KiB chunks, ~175 MB with
// curl's 16 KiB chunks, or a long-lived stream of small chunks after a
// few thousand messages. Expected: any number of chunks is accepted; only
// extension and trailer bytes count.
func TestReviewManyChunksRefused(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo)})
	const chunks = 30000 // "1\r\n" is 3 bytes: 90,000 bytes of size lines
	var b strings.Builder
	b.WriteString("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
	for range chunks {
		b.WriteString("1\r\nx\r\n")
	}
	b.WriteString("0\r\n\r\n")
	have := raw(t, addr, b.String())
	if !strings.HasPrefix(have, "HTTP/1.1 200 ") || !strings.Contains(have, "POST /up "+strings.Repeat("x", chunks)) {
		t.Errorf("a chunked body of %d chunks with no extension or trailer was refused: %q", chunks, firstLine(have))
	}
}

// TestReviewShutdownDropsRequestOnNewConn shows: since the attacker's fix,
// Shutdown closes a connection that has not sent its first byte at once
// (c.idle is set before the first Peek). A client that connected just
// before SIGTERM and whose request is still on the wire (one RTT; a
// client's request normally follows its connect immediately) gets its
// connection closed with no answer; a non-idempotent request cannot be
// retried safely by the client. net/http's Shutdown closes a StateNew
// connection only after it has been silent for 5 s, which both lets such a
// request be served and keeps pre-connected sockets from holding Shutdown
// for the header timeout. Expected: a request sent within a moment of the
// shutdown on an already accepted connection is answered (with
// Connection: close).
func TestReviewShutdownDropsRequestOnNewConn(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(echo)}
	addr := serve(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Wait until the server holds the connection (accepted, nothing read).
	for deadline := time.Now().Add(2 * time.Second); ; {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("connection not accepted")
		}
		runtime.Gosched()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	// The request arrives shortly after the shutdown began: at most 200 ms,
	// or as soon as Shutdown has returned.
	select {
	case <-done:
	case <-time.After(200 * time.Millisecond):
	}
	io.WriteString(c, "POST /order HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 200 ") {
		t.Errorf("a request on a connection accepted before Shutdown got no answer: %q", firstLine(string(b)))
	}
}
