package proxy

// Review tests of the shared chunked decoder (proxy/internal/wire) on the
// answer side. Raw sockets on both sides, loopback only.

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

// readChunks reads a chunked answer from br (after its head) and returns
// how many data chunks it came in and their bytes.
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

// TestRev8SmallChunksCoalesced: an answer of many small chunks that arrive
// in one read of the instance's socket goes to the client in a few writes,
// as net/http's chunked reader did (it went on to the next chunk while its
// size line was buffered). A reader that returns one chunk per Read makes
// sluice write and flush once per chunk: 200 client writes (syscalls, and
// 200 chunks for the client) for 1.2 KB the instance sent in one write; an
// instance sending "1\r\nx\r\n" forever gets a write to the client per 6
// bytes it sends.
func TestRev8SmallChunksCoalesced(t *testing.T) {
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
	c, err := net.Dial("tcp", strings.TrimPrefix(f.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
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
