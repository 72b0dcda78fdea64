package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/h1"
)

// h2cClient speaks HTTP/2 with prior knowledge over plain TCP only.
func h2cClient() *http.Client {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protocols}}
}

// TestH2CBodyAndStreaming: through the h2c path a request body reaches the
// instance whole (streamed: it is larger than MaxReplayBody), and an
// answer that the instance flushes piece by piece reaches the client piece
// by piece.
func TestH2CBodyAndStreaming(t *testing.T) {
	next := make(chan struct{})
	back := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "part %d\n", i)
				w.(http.Flusher).Flush()
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%s %d %s %v", r.Method, n, hex.EncodeToString(h.Sum(nil)), err)
	}))
	defer back.Close()
	p := pool(t, "round_robin", m("a", hostOf(back), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	client := h2cClient()
	defer client.CloseIdleConnections()

	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	sum := sha256.Sum256(body)
	for _, method := range []string{http.MethodPost, http.MethodPut} {
		req, _ := http.NewRequest(method, f.URL+"/upload", io.MultiReader(bytes.NewReader(body))) // unknown length
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
			t.Fatalf("%s: want 200 over HTTP/2, have %d over %s", method, resp.StatusCode, resp.Proto)
		}
		if want := fmt.Sprintf("%s %d %s <nil>", method, len(body), hex.EncodeToString(sum[:])); string(got) != want {
			t.Fatalf("%s: instance saw %q, want %q", method, got, want)
		}
	}

	resp, err := client.Get(f.URL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 64)
	for i := 0; i < 3; i++ {
		// Each part arrives before the instance is let to write the next.
		n, err := io.ReadAtLeast(resp.Body, buf, len("part 0\n"))
		if want := fmt.Sprintf("part %d\n", i); err != nil || string(buf[:n]) != want {
			t.Fatalf("streamed part %d: have %q (%v), want %q", i, buf[:n], err, want)
		}
		next <- struct{}{}
	}
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("end of stream: %q %v", rest, err)
	}
	if n := failures(p, "a"); n != 0 {
		t.Fatalf("%d failures counted for good exchanges", n)
	}
}

// TestH2CStreamResetIsNotBlamed: an h2c client that resets its stream
// (RST_STREAM CANCEL, the connection stays up) while sending its request
// body, while the instance has not answered yet, or in the middle of the
// answer cancels the upstream exchange at once and is never counted as a
// failure of the instance; the connection goes on serving other streams.
func TestH2CStreamResetIsNotBlamed(t *testing.T) {
	var gotBody atomic.Int64
	back := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Body.Read(buf)
				gotBody.Add(int64(n))
				if err != nil {
					return
				}
			}
		case "/stall":
			<-r.Context().Done()
		case "/partial":
			w.Header().Set("Content-Length", "1000")
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			io.WriteString(w, "ok")
		}
	}))
	defer back.Close()
	p := pool(t, "least_connections", m("a", hostOf(back), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p})
	client := h2cClient()
	defer client.CloseIdleConnections()

	for _, method := range []string{http.MethodPost, http.MethodPut} {
		// Mid request body: PUT is idempotent but its body has no
		// length, so both stream to the instance.
		ctx, cancel := context.WithCancel(context.Background())
		pr, pw := io.Pipe()
		req, _ := http.NewRequestWithContext(ctx, method, f.URL+"/upload", pr)
		done := make(chan error, 1)
		go func() {
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		gotBody.Store(0)
		go pw.Write(make([]byte, 64<<10))
		waitFor(t, method+" body bytes at the instance", func() bool { return gotBody.Load() > 0 })
		if n := inflight(p); n != 1 {
			t.Fatalf("%s: want 1 in flight mid-body, have %d", method, n)
		}
		cancel()
		if err := <-done; err == nil {
			t.Fatalf("%s: want the reset request to fail", method)
		}
		pw.Close()
		waitFor(t, method+" in-flight back to 0 after a reset mid-body", func() bool { return inflight(p) == 0 })
	}

	// Before the answer's head.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.URL+"/stall", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, "/stall in flight", func() bool { return inflight(p) == 1 })
	cancel()
	if err := <-done; err == nil {
		t.Fatal("/stall: want the reset request to fail")
	}
	waitFor(t, "in-flight back to 0 after a reset awaiting the head", func() bool { return inflight(p) == 0 })

	// In the middle of the answer's body.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, f.URL+"/partial", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(io.LimitReader(resp.Body, 7)); err != nil || string(b) != "partial" {
		t.Fatalf("/partial: %q %v", b, err)
	}
	if n := inflight(p); n != 1 {
		t.Fatalf("/partial: want 1 in flight mid-answer, have %d", n)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, "in-flight back to 0 after a reset mid-answer", func() bool { return inflight(p) == 0 })

	if n := failures(p, "a"); n != 0 {
		t.Fatalf("the instance was blamed %d times for streams the client reset", n)
	}
	resp, err = client.Get(f.URL + "/after")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" || resp.ProtoMajor != 2 {
		t.Fatalf("after the resets: %q over %s", b, resp.Proto)
	}
}

// TestH2CStalledBodyKeepsConnection: over h2c a request body that stalls
// for the listener's body timeout is the client's fault as on HTTP/1.1
// (408, the instance not blamed), but it ends only its own stream: the
// answer carries no Connection: close, which would make net/http send
// GOAWAY and end every other stream's connection with it.
func TestH2CStalledBodyKeepsConnection(t *testing.T) {
	back := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	defer back.Close()
	p := pool(t, "round_robin", m("a", hostOf(back), 1))
	f := h1Front(t, HTTPOptions{Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}},
		func(s *h1.Server) { s.BodyTimeout = 200 * time.Millisecond })
	client := h2cClient()
	defer client.CloseIdleConnections()
	if resp, err := client.Get(f.URL + "/first"); err != nil {
		t.Fatal(err)
	} else {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for _, method := range []string{http.MethodPost, http.MethodPut} {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest(method, f.URL+"/stall", pr)
		req.ContentLength = 10 // PUT: buffered for replay, so read before any pick
		go io.WriteString(pw, "abc")
		resp, err := client.Do(req)
		pw.Close()
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("%s with a stalled body: want 408, have %d", method, resp.StatusCode)
		}
		var reused bool
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
		req, _ = http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, f.URL+"/next", nil)
		resp, err = client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !reused {
			t.Fatalf("after a stalled %s body the h2c connection was ended (GOAWAY)", method)
		}
	}
	if n := failures(p, "a"); n != 0 {
		t.Fatalf("the instance was blamed %d times for stalled client bodies", n)
	}
}
