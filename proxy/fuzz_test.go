package proxy

import (
	"bufio"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// FuzzUpstreamAnswer: whatever an instance answers, reading it never
// panics, and the connection is reused only when the answer ended at its
// boundary: the next request on the same client then gets exactly the next
// answer ("good"), never bytes left over from the fuzzed one.
func FuzzUpstreamAnswer(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 204 No Content\r\n\r\nbody",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nbody",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"garbage",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if a := req.Header.Get("X-Answer"); a != "" {
						b, _ := hex.DecodeString(a)
						c.Write(b)
					} else {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
					}
				}
			}()
		}
	}()
	addr := ln.Addr().String()
	f.Fuzz(func(t *testing.T, answer []byte, head bool) {
		u := NewUpstream()
		defer u.CloseIdleConnections()
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		if len(answer) == 0 {
			return
		}
		req, _ := http.NewRequest(method, "http://"+addr+"/fuzz", nil)
		req.Header.Set("X-Answer", hex.EncodeToString(answer))
		limits := TryLimits{Header: 50 * time.Millisecond, Write: 50 * time.Millisecond, Body: 50 * time.Millisecond}
		if resp, err := u.Try(req, req.URL.Host, limits); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		req, _ = http.NewRequest(http.MethodGet, "http://"+addr+"/next", nil)
		resp, err := u.Try(req, req.URL.Host, limits)
		if err != nil {
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && (resp.StatusCode != 200 || string(b) != "good") {
			t.Fatalf("after answer %q the next request read %d %q", answer, resp.StatusCode, b)
		}
	})
}
