package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzWriteRequest checks that writeRequest writes byte for byte what
// Request.Write writes, and fails when it fails, for any method, Host,
// URL (path, raw path, opaque, query) and header fields.
func FuzzWriteRequest(f *testing.F) {
	f.Add("GET", "example.com", "/a b", "", "", "x=1", "Accept", " */* ", "User-Agent", "")
	f.Add("HEAD", "[::1]:80", "/a/b", "/a%2Fb", "", "", "X-A", "1\r\nX-B: 2", "user-agent", "x")
	f.Add("GET", "h\r\nX: y", "/", "", "", "", "A", "b", "B", "c")
	f.Add("GET", "h h", "/", "", "//x/y", "", "Bad Key", "b", "Host", "evil")
	f.Add("GET", "h", "/\x00", "", "", "a\nb", "Content-Length", "5", "Transfer-Encoding", "chunked")
	f.Add("get", "xn--bcher-kva.example", "", "", "", "", "Trailer", "X", "User-Agent", "a\nb")
	f.Add("GET", "[fe80::1%25en0]:80", "/", "", "", "", "K", "", "K2", "\x7f")
	f.Fuzz(func(t *testing.T, method, host, path, rawPath, opaque, query, k1, v1, k2, v2 string) {
		req := &http.Request{Method: method, Host: host, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			URL:    &url.URL{Scheme: "http", Host: "svc", Path: path, RawPath: rawPath, Opaque: opaque, RawQuery: query},
			Header: http.Header{}}
		req.Header[k1] = append(req.Header[k1], v1)
		req.Header[k2] = append(req.Header[k2], v2)
		req.Header.Add(k2, v1)
		var want, got bytes.Buffer
		werr := req.Write(&want)
		bw := bufio.NewWriter(&got)
		gerr := writeRequest(bw, req)
		bw.Flush()
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("Request.Write: %v, writeRequest: %v", werr, gerr)
		}
		if werr == nil && want.String() != got.String() {
			t.Fatalf("writeRequest wrote\n%q\nRequest.Write\n%q", got.String(), want.String())
		}
		if gerr == nil && strings.Count(got.String(), "\r\n\r\n") != 1 {
			t.Fatalf("more than one head: %q", got.String())
		}
	})
}
