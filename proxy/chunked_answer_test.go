package proxy

// Chunked answers from instances, decoded by proxy/internal/wire: stalls,
// steady streams, pass-through as bytes arrive, and coalescing. Raw sockets
// on both sides, loopback only.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// holdOpen blocks until the peer closes c (or the test's backend closes it).
func holdOpen(c net.Conn) { io.Copy(io.Discard, c) }

// getRaw sends "GET /" to the front on a new raw connection, closed when
// the test ends, whose reads time out after d.
func getRaw(t *testing.T, f *testFront, d time.Duration) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(d))
	return c
}

func readChunks(t *testing.T, br *bufio.Reader) (int, string) {
	t.Helper()
	var data strings.Builder
	for n := 0; ; n++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d chunks: %v", n, err)
		}
		size, err := strconv.ParseInt(strings.TrimRight(line, "\r\n"), 16, 64)
		if err != nil {
			t.Fatalf("chunk line %q: %v", line, err)
		}
		if size == 0 {
			return n, data.String()
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			t.Fatal(err)
		}
		data.Write(buf[:size])
	}
}

// TestChunkedAnswerStallIsCut: an instance that sends its answer's head
// with part of a chunk (a chunk line, part of one, or part of the data, in
// the same write) and then stalls is cut after response_body_timeout: the
// answer is never ended as if whole, in-flight goes back to 0 and the
// instance is blamed (README, Timeouts and limits).
func TestChunkedAnswerStallIsCut(t *testing.T) {
	for _, tc := range []struct{ name, head string }{
		{"part of a chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"},
		{"chunk line only", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"},
		{"part of a chunk line", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawBackend(t, func(c net.Conn) {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, tc.head)
				holdOpen(c)
			})
			p := pool(t, "round_robin", m("a", addr, 1))
			f := front(t, ServiceOptions{Name: "web", Pool: p, ResponseBodyTimeout: 200 * time.Millisecond})
			c := getRaw(t, f, 4*time.Second)
			b, err := io.ReadAll(c)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the answer stalled for 4 s with response_body_timeout 200ms; client got %q, in-flight %d", b, inflight(p))
			}
			if strings.Contains(string(b), "\r\n0\r\n\r\n") {
				t.Errorf("a stalled answer was ended as if whole: %q", b)
			}
			waitFor(t, "in-flight back to 0", func() bool { return inflight(p) == 0 })
			if failures(p, "a") == 0 {
				t.Errorf("the instance was not blamed for a stalled answer")
			}
		})
	}
}

// TestChunkedAnswerSteadyChunkIsNotCut: one large chunk that keeps
// arriving (1 KiB every 20 ms, each wait far below response_body_timeout)
// is a stream that keeps sending: the body timer bounds each wait for a
// byte, not the chunk, and never cuts it.
func TestChunkedAnswerSteadyChunkIsNotCut(t *testing.T) {
	const piece, pieces = 1 << 10, 64
	addr := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n", piece*pieces)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		data := strings.Repeat("x", piece)
		for range pieces {
			<-tick.C
			if _, err := io.WriteString(c, data); err != nil {
				return
			}
		}
		io.WriteString(c, "\r\n0\r\n\r\n")
		holdOpen(c)
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, ResponseBodyTimeout: 200 * time.Millisecond})
	c := getRaw(t, f, 10*time.Second)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != piece*pieces {
		t.Errorf("a steady stream was cut: got %d of %d bytes, err %v; instance failures %d", n, piece*pieces, err, failures(p, "a"))
	}
}

// TestChunkedAnswerPassesOnAsItComes: the bytes of a large chunk reach the
// client as they arrive (net/http's chunked reader held them until 32 KiB
// had come or the chunk ended). The instance sends 1 KiB of a 64 KiB chunk
// and waits, up to 3 s, for the client to have seen it.
func TestChunkedAnswerPassesOnAsItComes(t *testing.T) {
	seen := make(chan struct{})
	var gaveUp atomic.Bool // the instance sent the rest without the client having seen the start
	addr := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s", 64<<10, strings.Repeat("x", 1<<10))
		select {
		case <-seen:
		case <-time.After(3 * time.Second):
			gaveUp.Store(true)
		}
		io.WriteString(c, strings.Repeat("x", 63<<10)+"\r\n0\r\n\r\n")
		holdOpen(c)
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	c := getRaw(t, f, 10*time.Second)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<10)); err != nil {
		t.Fatal(err)
	}
	close(seen)
	if gaveUp.Load() {
		t.Errorf("the first 1 KiB of a chunk reached the client only after the instance sent the rest (it waited 3 s)")
	}
}

// TestChunkedAnswerSmallChunksCoalesced: many small chunks that arrive in
// one read of the instance's socket go to the client in a few writes, not a
// write and flush per chunk (an instance sending "1\r\nx\r\n" would
// otherwise get a client write per 6 bytes it sends).
func TestChunkedAnswerSmallChunksCoalesced(t *testing.T) {
	const chunks = 200
	addr := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"+strings.Repeat("1\r\nx\r\n", chunks)+"0\r\n\r\n")
		io.Copy(io.Discard, c)
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	c := getRaw(t, f, 10*time.Second)
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	n, data := readChunks(t, br)
	if data != strings.Repeat("x", chunks) {
		t.Fatalf("got %q", data)
	}
	if n > chunks/4 {
		t.Errorf("%d one-byte chunks sent in one write reached the client in %d chunks (a write and flush each)", chunks, n)
	}
}
