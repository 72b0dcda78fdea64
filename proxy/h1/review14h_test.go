package h1

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Many clients pipeline requests of random sizes, written in random
// pieces, against a server whose idle connections give their buffers back
// to a shared pool: every answer carries exactly its own request's bytes,
// whatever was buffered beyond a head, whether the background read took a
// byte (handlers that run past clientGoneDelay) and however the answer was
// framed (write-through or not, with a length or chunked).
func TestPipelinedRandomNoCrossTalk(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("wt") == "1" {
			w.(WriteThrough).SetWriteThrough(true)
		}
		if d, _ := strconv.Atoi(q.Get("d")); d > 0 {
			<-time.After(time.Duration(d) * time.Millisecond)
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		out := append([]byte(r.URL.Path+"|"), b...)
		if q.Get("cl") == "1" {
			w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		}
		// In pieces, so that write-through sends several writes.
		for len(out) > 0 {
			n := min(len(out), 1+len(out)/3)
			w.Write(out[:n])
			out = out[n:]
		}
	})}
	addr := serve(t, s)
	const clients, perClient = 24, 30
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for id := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- pipelineClient(addr, id, perClient)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func pipelineClient(addr string, id, n int) error {
	rng := rand.New(rand.NewPCG(uint64(id), 14))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReaderSize(c, 64)
	for seq := 0; seq < n; {
		batch := min(n-seq, 1+rng.IntN(4))
		var wire bytes.Buffer
		var want []string
		for range batch {
			body := make([]byte, rng.IntN(3)*rng.IntN(6000))
			for i := range body {
				body[i] = byte('a' + (id+seq+i)%26)
			}
			path := fmt.Sprintf("/c%d/r%d", id, seq)
			q := fmt.Sprintf("?wt=%d&cl=%d", rng.IntN(2), rng.IntN(2))
			if rng.IntN(6) == 0 {
				q += "&d=" + strconv.Itoa(6+rng.IntN(4))
			}
			fmt.Fprintf(&wire, "POST %s%s HTTP/1.1\r\nHost: x\r\n", path, q)
			if rng.IntN(3) == 0 {
				wire.WriteString("Transfer-Encoding: chunked\r\n\r\n")
				for rest := body; len(rest) > 0; {
					k := min(len(rest), 1+rng.IntN(2000))
					fmt.Fprintf(&wire, "%x\r\n%s\r\n", k, rest[:k])
					rest = rest[k:]
				}
				wire.WriteString("0\r\n\r\n")
			} else {
				fmt.Fprintf(&wire, "Content-Length: %d\r\n\r\n%s", len(body), body)
			}
			want = append(want, path+"|"+string(body))
			seq++
		}
		// The batch in random pieces, written while answers come back.
		wrote := make(chan error, 1)
		go func() {
			p := wire.Bytes()
			for len(p) > 0 {
				k := min(len(p), 1+rng.IntN(3000))
				if _, err := c.Write(p[:k]); err != nil {
					wrote <- err
					return
				}
				p = p[k:]
			}
			wrote <- nil
		}()
		for _, w := range want {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return fmt.Errorf("client %d: %v (waiting for %.20q)", id, err, w)
			}
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				return fmt.Errorf("client %d: body: %v", id, err)
			}
			if string(got) != w {
				return fmt.Errorf("client %d: answer %.40q, want %.40q", id, got, w)
			}
			if resp.Close {
				return fmt.Errorf("client %d: connection closed after %.20q", id, w)
			}
		}
		if err := <-wrote; err != nil {
			return err
		}
	}
	return nil
}

// Keep-alive clients over MaxConns: idle connections are reaped for room
// while their goroutines move (closeLongestIdle's CAS against the moved
// goroutine's wait), then Shutdown: every client gets all its answers
// (retrying a request on a connection reaped before it was read), every
// connection is counted closed once, and Shutdown returns.
func TestReapAndShutdownWhileIdleMoves(t *testing.T) {
	cc := &countConns{}
	s := &Server{Handler: http.HandlerFunc(echo), MaxConns: 3, ConnCounter: cc}
	addr := serve(t, s)
	const clients, each = 12, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for id := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			var br *bufio.Reader
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for i := 0; i < each; {
				if c == nil {
					var err error
					if c, err = net.Dial("tcp", addr); err != nil {
						errs <- err
						return
					}
					c.SetDeadline(time.Now().Add(20 * time.Second))
					br = bufio.NewReader(c)
				}
				want := fmt.Sprintf("GET /c%d/%d ", id, i)
				fmt.Fprintf(c, "GET /c%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", id, i)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					c.Close()
					c = nil // reaped while idle: send it again
					continue
				}
				got, err := io.ReadAll(resp.Body)
				if err != nil || string(got) != want {
					errs <- fmt.Errorf("client %d: %q, %v; want %q", id, got, err, want)
					return
				}
				i++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v (opened %d, closed %d)", err, cc.opened.Load(), cc.closed.Load())
	}
	deadline := time.Now().Add(5 * time.Second)
	for cc.closed.Load() != cc.opened.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("opened %d, closed %d", cc.opened.Load(), cc.closed.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
