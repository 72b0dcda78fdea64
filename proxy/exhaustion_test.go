package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// heldBackend is a loopback instance that reads one line per connection
// and answers "ok " and the line once released, then closes. It records
// the most connections it held at once.
type heldBackend struct {
	addr    string
	release chan struct{}
	mu      sync.Mutex
	open    int
	peak    int
}

func startHeldBackend(t *testing.T, release chan struct{}) *heldBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	b := &heldBackend{addr: ln.Addr().String(), release: release}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.open++
			b.peak = max(b.peak, b.open)
			b.mu.Unlock()
			go func() {
				defer func() {
					c.Close()
					b.mu.Lock()
					b.open--
					b.mu.Unlock()
				}()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				<-b.release
				io.WriteString(c, "ok "+line)
			}()
		}
	}()
	return b
}

func (b *heldBackend) peakConns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// TestTCPFDExhaustionBlamesNoInstance runs a TCP proxy in a child process
// whose descriptors allow 3 proxied connections (plus one accepted
// client), with passive ejection at the first failure, in front of two
// healthy instances that hold every connection until released, and sends
// 10 clients at once. Running out of descriptors must eject no instance
// and count no failure; the clients beyond capacity wait (in the listen
// backlog, or accepted and waiting for a descriptor) and are served in
// full once the instances answer and descriptors free up, except that a
// client accepted before the exhaustion showed may be refused (closed
// without a byte) to free a descriptor; none is half-served.
func TestTCPFDExhaustionBlamesNoInstance(t *testing.T) {
	const capacity, clients = 3, 10
	release := make(chan struct{})
	a, b := startHeldBackend(t, release), startHeldBackend(t, release)
	h := startProxyHelper(t, capacity, a.addr, b.addr)

	type result struct {
		i   int
		got string
		err error
	}
	results := make(chan result, clients)
	for i := range clients {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if _, err := fmt.Fprintf(c, "hello %d\n", i); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		go func() {
			// Close once answered: the proxy holds the connection's two
			// descriptors until both sides have closed.
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(c)
			results <- result{i, string(got), err}
		}()
	}

	deadline := time.Now().Add(10 * time.Second)
	for h.status(t).Pressure == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the helper never ran out of descriptors")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if peak := a.peakConns() + b.peakConns(); peak > capacity {
		t.Fatalf("instances held %d connections, more than the %d the descriptors allow", peak, capacity)
	}
	var early []result // refused before the instances answered
	for len(results) > 0 {
		r := <-results
		if r.got != "" {
			t.Fatalf("client %d answered before any instance did: %q %v", r.i, r.got, r.err)
		}
		early = append(early, r)
	}
	close(release)
	served := 0
	for n := range clients {
		var r result
		if n < len(early) {
			r = early[n]
		} else {
			r = <-results
		}
		switch want := fmt.Sprintf("ok hello %d\n", r.i); {
		case r.got == want && r.err == nil:
			served++
		case r.got == "" && !errors.Is(r.err, os.ErrDeadlineExceeded):
			// Refused: closed without a byte. Only a client accepted in
			// the first burst, before the exhaustion showed, can be shed.
		default:
			t.Errorf("client %d: got %q (%v), want %q or nothing", r.i, r.got, r.err, want)
		}
	}
	if served < capacity {
		t.Errorf("%d of %d clients served", served, clients)
	}

	st := h.status(t)
	if len(st.Members) != 2 {
		t.Fatalf("members: %+v", st.Members)
	}
	for _, m := range st.Members {
		if m.Ejected || !m.Eligible || m.Failures != 0 {
			t.Errorf("instance %s blamed for sluice's exhaustion: %+v", m.ID, m)
		}
	}
	if !strings.Contains(h.stderr.String(), "out of local resources") {
		t.Errorf("no Warn line about the exhaustion:\n%s", h.stderr.String())
	}
	t.Logf("%d of %d clients served, %d local exhaustions reported", served, clients, st.Pressure)
}

// TestHTTPFDExhaustionBlamesNoInstance is the HTTP listener's version:
// with descriptors for 3 proxied connections and 10 clients at once, no
// instance is blamed or ejected; every client gets the instance's whole
// answer, a 503 from sluice, or a close without a byte.
func TestHTTPFDExhaustionBlamesNoInstance(t *testing.T) {
	const capacity, clients = 3, 10
	release := make(chan struct{})
	be := func() string {
		var held sync.WaitGroup
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-release
			io.WriteString(w, "ok "+r.URL.Path)
		})}
		held.Add(1)
		go func() { defer held.Done(); srv.Serve(ln) }()
		t.Cleanup(func() { srv.Close(); held.Wait() })
		return ln.Addr().String()
	}
	h := startHelper(t, "http", capacity, be(), be())
	type result struct {
		i    int
		have string
	}
	results := make(chan result, clients)
	for i := range clients {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		fmt.Fprintf(c, "GET /c%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", i)
		go func() {
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			b, _ := io.ReadAll(c)
			results <- result{i, string(b)}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.status(t).Pressure == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the helper never ran out of descriptors")
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	served := 0
	for range clients {
		r := <-results
		switch {
		case strings.HasPrefix(r.have, "HTTP/1.1 200 ") && strings.HasSuffix(r.have, fmt.Sprintf("ok /c%d", r.i)):
			served++
		case strings.HasPrefix(r.have, "HTTP/1.1 503 ") && strings.Contains(r.have, "out of resources"):
		case r.have == "":
		default:
			t.Errorf("client %d: %q", r.i, r.have)
		}
	}
	if served == 0 {
		t.Error("no client was served")
	}
	st := h.status(t)
	for _, m := range st.Members {
		if m.Ejected || !m.Eligible || m.Failures != 0 {
			t.Errorf("instance %s blamed for sluice's exhaustion: %+v", m.ID, m)
		}
	}
	t.Logf("%d of %d clients served, %d local exhaustions reported", served, clients, st.Pressure)
}
