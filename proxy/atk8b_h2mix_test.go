package proxy

import (
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestAtk8bH2MixedStray: 4 h2 clients, 400 concurrent requests; the
// instance appends stray bytes (a forged answer) in the same write as a
// random third of its answers: after a Content-Length body, after the last
// chunk, as a body on HEAD and on 204. No client ever receives an answer
// meant for another, or the forged one.
func TestAtk8bH2MixedStray(t *testing.T) {
	const forged = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nLEAK!"
	addr := rawRequests(t, func(c net.Conn, req *http.Request) {
		path := req.URL.Path
		var ans string
		switch {
		case req.Method == http.MethodHead:
			ans = "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(path)) + "\r\n\r\n"
		case strings.HasSuffix(path, "/204"):
			ans = "HTTP/1.1 204 No Content\r\nX-Path: " + path + "\r\n\r\n"
		case strings.HasSuffix(path, "/chunked"):
			ans = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(path)), 16) + "\r\n" + path + "\r\n0\r\n\r\n"
		default:
			ans = "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(path)) + "\r\n\r\n" + path
		}
		if rand.IntN(3) == 0 {
			ans += forged
		}
		if _, err := io.WriteString(c, ans); err != nil {
			return
		}
	})
	p := pool(t, "round_robin", m("a", addr, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	var wg sync.WaitGroup
	errs := make(chan string, 400)
	for cl := 0; cl < 4; cl++ {
		client := h2cClient()
		defer client.CloseIdleConnections()
		for i := 0; i < 100; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				kind := []string{"/cl", "/chunked", "/204", "/head"}[i%4]
				path := "/c" + strconv.Itoa(cl) + "/r" + strconv.Itoa(i) + kind
				method := http.MethodGet
				if kind == "/head" {
					method = http.MethodHead
				}
				req, _ := http.NewRequest(method, f.URL+path, nil)
				resp, err := client.Do(req)
				if err != nil {
					errs <- path + ": " + err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode >= 500 {
					return // a broken exchange may fail; it must not cross
				}
				switch {
				case strings.Contains(string(b), "LEAK"):
					errs <- path + ": got the forged answer"
				case kind == "/204":
					if resp.StatusCode != 204 || resp.Header.Get("X-Path") != path {
						errs <- path + ": got " + resp.Status + " X-Path " + resp.Header.Get("X-Path")
					}
				case kind == "/head":
					if resp.ContentLength != int64(len(path)) {
						errs <- path + ": HEAD got length " + strconv.Itoa(int(resp.ContentLength))
					}
				case string(b) != path:
					errs <- path + ": got " + string(b)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	n := 0
	for e := range errs {
		if n++; n <= 10 {
			t.Error(e)
		}
	}
}
