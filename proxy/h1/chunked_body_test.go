package h1

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestChunkedBodyTimeout: a chunked request body that stalls anywhere
// (in a size line, in a chunk's data, before a chunk's CRLF, in the
// trailer section) is answered 408 after BodyTimeout, the header timeout
// being far off: the chunked decoder's waits arm the body deadline.
func TestChunkedBodyTimeout(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(echo), HeaderTimeout: time.Hour, BodyTimeout: 200 * time.Millisecond})
	for _, body := range []string{"5", "5\r\nab", "5\r\nhello", "5\r\nhello\r", "5\r\nhello\r\n0\r\n", "5\r\nhello\r\n0\r\nT: v\r\n"} {
		have := raw(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+body)
		if !strings.HasPrefix(have, "HTTP/1.1 408 ") {
			t.Errorf("body %q stalled: want 408, have %q", body, have)
		}
	}
}
