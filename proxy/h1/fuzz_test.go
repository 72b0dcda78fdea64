package h1

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/proxy/internal/wire"
)

// FuzzReadHead: the request head reader never panics, and what it accepts
// has one framing: never both a length and chunked, never chunked on
// HTTP/1.0, no CR or LF inside a header value, no folded line.
func FuzzReadHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
		"GET http://h/p HTTP/1.1\r\nHost: y\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\nHost: x\n\n",
		"\r\nGET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET / HTTP/9.9\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHead(bufio.NewReaderSize(bytes.NewReader(data), 4096), 16<<10)
		if err != nil {
			return
		}
		r := h.req
		if h.chunked && h.contentLength >= 0 {
			t.Fatalf("both chunked and Content-Length %d", h.contentLength)
		}
		if h.chunked && r.ProtoMinor == 0 {
			t.Fatal("chunked on HTTP/1.0")
		}
		if _, ok := r.Header["Transfer-Encoding"]; ok {
			t.Fatal("Transfer-Encoding left for the handler to misread")
		}
		if r.ProtoMinor == 1 && len(r.Header["Host"]) != 1 {
			t.Fatal("HTTP/1.1 without exactly one Host")
		}
		for k, vv := range r.Header {
			if !wire.IsToken(k) {
				t.Fatalf("bad field name %q", k)
			}
			for _, v := range vv {
				if strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("header %s has a control character: %q", k, v)
				}
			}
		}
		if r.URL == nil || r.Method == "" {
			t.Fatal("accepted without a method or URL")
		}
	})
}
