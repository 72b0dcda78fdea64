package h1

// Review tests: each fails on the code it was written against and shows
// the finding described above it. Raw sockets, loopback only.

import (
	"net/http"
	"strings"
	"testing"
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
