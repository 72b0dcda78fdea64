package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"
)

// TestWriteRequestSameAsWrite compares writeRequest with Request.Write.
func TestWriteRequestSameAsWrite(t *testing.T) {
	type hdr = map[string][]string
	cases := []struct {
		method, url, host string
		h                 hdr
	}{
		{"GET", "http://svc/", "example.com", nil},
		{"GET", "http://svc/a%2Fb/c d?x=1&y=%20", "example.com:8080", hdr{"User-Agent": {""}, "Accept": {" */* "}, "X-B": {"1", "2"}, "X-A": {"z"}}},
		{"HEAD", "http://svc/p", "[::1]:80", hdr{"User-Agent": {" curl/8 "}, "Content-Length": {"5"}, "Trailer": {"x"}}},
		{"GET", "http://svc/", "bad host", hdr{"A": {"b"}}},
		{"GET", "http://svc/", "h", hdr{"A": {"b\r\nc"}}},
		{"GET", "http://svc/", "h", hdr{"Bad Key": {"b"}, "Ok": {"v"}}},
		{"POST", "http://svc/", "h", hdr{"A": {"b"}}},
		{"GET", "http://svc/?q", "h", hdr{"User-Agent": {}}},
	}
	for i, c := range cases {
		req, err := http.NewRequest(c.method, c.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = c.host
		for k, v := range c.h {
			req.Header[k] = v
		}
		var want, got bytes.Buffer
		werr := req.Write(&want)
		bw := bufio.NewWriter(&got)
		gerr := writeRequest(bw, req)
		bw.Flush()
		if (werr == nil) != (gerr == nil) || want.String() != got.String() {
			t.Errorf("case %d: writeRequest wrote %q (%v), Request.Write %q (%v)", i, got.String(), gerr, want.String(), werr)
		}
	}
}
