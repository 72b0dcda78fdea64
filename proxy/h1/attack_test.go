package h1

// Attack tests, from an attacker's probe: each one failed on the code it
// was written against and now guards its fix; the comment above each test
// says what it showed. Raw sockets, loopback
// only.

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAttackLongTrailerLineRefused shows: README (Strict request framing)
// refuses chunk extensions and trailers only beyond 64 KiB in all, but
// body.crlfLine refuses any single chunk line or trailer line that does not
// fit the connection's 4 KiB read buffer ("chunk line too long"): a valid
// chunked upload with one 5 KiB trailer field (or chunk extension) gets a
// 400. Expected: accepted (limit is 64 KiB), as README says.
func TestAttackLongTrailerLineRefused(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo)})
	long := strings.Repeat("a", 5<<10)
	for _, tc := range []struct{ name, req string }{
		{"trailer", "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Sig: " + long + "\r\n\r\n"},
		{"extension", "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;sig=" + long + "\r\nhello\r\n0\r\n\r\n"},
	} {
		have := raw(t, addr, tc.req)
		if !strings.HasPrefix(have, "HTTP/1.1 200 ") || !strings.Contains(have, "POST /t hello") {
			t.Errorf("%s: a 5 KiB %s (of the 64 KiB allowed) was refused: %q", tc.name, tc.name, firstLine(have))
		}
	}
}

// TestAttackShutdownWaitsForSilentConnection shows: Shutdown closes only
// connections marked idle, and a connection that has not sent its first
// byte is never marked idle (c.idle is set only between keep-alive
// requests). A client that merely opened a connection (browsers
// pre-connect routinely) holds Shutdown until HeaderTimeout answers it
// with a 408, whose default (10 s) equals sluice's whole shutdown grace:
// with one such socket open, every SIGTERM waits the full grace and ends in
// Close. Expected: Shutdown returns at once when no request is in flight.
func TestAttackShutdownWaitsForSilentConnection(t *testing.T) {
	cc := &countConns{}
	s := &Server{Handler: http.HandlerFunc(echo), HeaderTimeout: 5 * time.Second, ConnCounter: cc}
	addr := serve(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitUntil(t, "the connection accepted", func() bool { return cc.opened.Load() == 1 }) // nothing sent
	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown with no request in flight: %v after %v", err, time.Since(start).Round(time.Millisecond))
	}
}

func firstLine(s string) string {
	if i := strings.Index(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}
