package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// peakConns is a ConnCounter that keeps the most connections open at once.
type peakConns struct {
	countConns
	mu         sync.Mutex
	open, peak int
}

func (p *peakConns) ConnOpened() ConnCloser {
	p.countConns.ConnOpened()
	p.mu.Lock()
	p.open++
	p.peak = max(p.peak, p.open)
	p.mu.Unlock()
	return p
}

func (p *peakConns) ConnClosed() {
	p.countConns.ConnClosed()
	p.mu.Lock()
	p.open--
	p.mu.Unlock()
}

// peakListener keeps the most accepted connections open at once.
type peakListener struct {
	net.Listener
	mu         sync.Mutex
	open, peak int
}

func (l *peakListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.open++
	l.peak = max(l.peak, l.open)
	l.mu.Unlock()
	return &peakConn{Conn: c, l: l}, nil
}

type peakConn struct {
	net.Conn
	l    *peakListener
	once sync.Once
}

func (c *peakConn) Close() error {
	c.once.Do(func() { c.l.mu.Lock(); c.l.open--; c.l.mu.Unlock() })
	return c.Conn.Close()
}

// hitCounter counts LimitHit calls per limit.
type hitCounter struct {
	mu   sync.Mutex
	hits map[string]int
	ch   chan string
}

func newHitCounter() *hitCounter {
	return &hitCounter{hits: map[string]int{}, ch: make(chan string, 100)}
}

func (h *hitCounter) hit(l string) {
	h.mu.Lock()
	h.hits[l]++
	h.mu.Unlock()
	h.ch <- l
}

func (h *hitCounter) count(l string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hits[l]
}

// keepAlive is a raw HTTP/1.1 client on one connection.
type keepAlive struct {
	c  net.Conn
	br *bufio.Reader
}

func dialKeepAlive(t *testing.T, addr string) *keepAlive {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &keepAlive{c: c, br: bufio.NewReader(c)}
}

// do sends a GET for path and returns the answer's body, or the error.
func (k *keepAlive) do(path string) (string, error) {
	k.c.SetDeadline(time.Now().Add(10 * time.Second)) // catches a hang, not a speed
	if _, err := io.WriteString(k.c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// closedByServer reports whether the server closed the connection (EOF
// within 10 s).
func (k *keepAlive) closedByServer() bool {
	k.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := k.br.ReadByte()
	return errors.Is(err, io.EOF)
}

// TestMaxConnsServesEveryClient: with MaxConns 2, four keep-alive clients
// that keep their connections open are all served: each one beyond the
// bound is held (one at a time, LimitHit told) while the longest-idle
// connection is closed to make room. At most 2 connections are served at
// once and at most 3 accepted.
func TestMaxConnsServesEveryClient(t *testing.T) {
	conns := &peakConns{}
	hits := newHitCounter()
	s := &Server{Handler: http.HandlerFunc(echo), MaxConns: 2, ConnCounter: conns, LimitHit: hits.hit}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := &peakListener{Listener: ln}
	go s.Serve(pl)
	t.Cleanup(func() { s.Close() })
	addr := ln.Addr().String()

	clients := make([]*keepAlive, 4)
	var wg sync.WaitGroup
	for i := range clients {
		clients[i] = dialKeepAlive(t, addr)
		wg.Go(func() {
			if have, err := clients[i].do("/c"); err != nil || have != "GET /c " {
				t.Errorf("client %d: %q, %v", i, have, err)
			}
		})
	}
	wg.Wait()
	if n := hits.count(LimitMaxConnections); n != 2 {
		t.Errorf("LimitHit(max_connections) %d times, want 2", n)
	}
	waitUntil(t, "two idle connections closed for room", func() bool { return conns.opened.Load() == 4 && conns.closed.Load() == 2 })
	// The two open connections serve another request, the two closed
	// ones fail it.
	closed := 0
	for _, c := range clients {
		if _, err := c.do("/again"); err != nil {
			closed++
		}
	}
	if closed != 2 {
		t.Errorf("%d clients closed by the server, want 2", closed)
	}
	if n := hits.count(LimitMaxConnections); n != 2 {
		t.Errorf("LimitHit(max_connections) %d times after the second requests, want 2", n)
	}
	conns.mu.Lock()
	served := conns.peak
	conns.mu.Unlock()
	pl.mu.Lock()
	accepted := pl.peak
	pl.mu.Unlock()
	if served > 2 || accepted > 3 {
		t.Errorf("at most %d connections served and %d accepted at once, want 2 and 3", served, accepted)
	}
}

// TestMaxConnsWaitsForRoom: a connection held at MaxConns is not served
// while the only connection is busy; when that one's request ends and it
// goes idle, it is closed for room and the held one is served. Raising
// the bound with SetLimits serves a held connection at once.
func TestMaxConnsWaitsForRoom(t *testing.T) {
	hits := newHitCounter()
	arrived := make(chan string, 4)
	release, release2 := make(chan struct{}), make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.URL.Path
		switch r.URL.Path {
		case "/block":
			<-release
		case "/block2":
			<-release2
		}
		echo(w, r)
	}), MaxConns: 1, LimitHit: hits.hit}
	addr := serve(t, s)

	a := dialKeepAlive(t, addr)
	aDone := make(chan error, 1)
	go func() { _, err := a.do("/block"); aDone <- err }()
	<-arrived
	b := dialKeepAlive(t, addr)
	bDone := make(chan string, 1)
	go func() { have, err := b.do("/b"); bDone <- have + errString(err) }()
	if l := <-hits.ch; l != LimitMaxConnections {
		t.Fatalf("LimitHit(%q)", l)
	}
	// b is held: its request cannot have reached the handler, which a
	// itself still occupies.
	select {
	case p := <-arrived:
		t.Fatalf("%s served beyond MaxConns", p)
	default:
	}
	close(release)
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
	if have := <-bDone; have != "GET /b " {
		t.Errorf("held client: %q", have)
	}
	<-arrived // b's
	if !a.closedByServer() {
		t.Error("the idle connection was not closed for room")
	}

	// b is the only connection; busy, it is not closed for room, and c
	// is held until SetLimits.
	bDone2 := make(chan error, 1)
	go func() { _, err := b.do("/block2"); bDone2 <- err }()
	<-arrived
	c := dialKeepAlive(t, addr)
	cDone := make(chan string, 1)
	go func() { have, err := c.do("/c"); cDone <- have + errString(err) }()
	<-hits.ch
	s.SetLimits(Limits{MaxConns: 2})
	if have := <-cDone; have != "GET /c " {
		t.Errorf("after SetLimits: %q", have)
	}
	close(release2)
	if err := <-bDone2; err != nil {
		t.Error(err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return " error: " + err.Error()
}

// TestMaxConnsCountsH2: an HTTP/2 connection takes a slot too and is not
// closed for room; the held client is served once it closes.
func TestMaxConnsCountsH2(t *testing.T) {
	hits := newHitCounter()
	pki := newPKI(t)
	addr := serve(t, &Server{Handler: http.HandlerFunc(tlsInfo), TLSConfig: pki.serverConfig(), MaxConns: 1, LimitHit: hits.hit})
	h2 := pki.httpsClient(true)
	if have, _ := get(t, h2, "https://"+addr+"/"); !strings.HasPrefix(have, "HTTP/2.0 tls") {
		t.Fatalf("h2: %q", have)
	}
	h1c := pki.httpsClient(false)
	defer h1c.CloseIdleConnections()
	done := make(chan string, 1)
	go func() {
		resp, err := h1c.Get("https://" + addr + "/")
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- string(b)
	}()
	<-hits.ch
	h2.CloseIdleConnections()
	if have := <-done; !strings.HasPrefix(have, "HTTP/1.1 tls") {
		t.Errorf("held client: %q", have)
	}
}

// TestMaxConnsShutdownEndsWait: Shutdown closes a held connection without
// an answer and lets the request in flight finish.
func TestMaxConnsShutdownEndsWait(t *testing.T) {
	hits := newHitCounter()
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		echo(w, r)
	}), MaxConns: 1, LimitHit: hits.hit}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	defer s.Close()
	a := dialKeepAlive(t, ln.Addr().String())
	aDone := make(chan string, 1)
	go func() { have, err := a.do("/a"); aDone <- have + errString(err) }()
	<-arrived
	b := dialKeepAlive(t, ln.Addr().String())
	io.WriteString(b.c, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
	<-hits.ch
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	// A close (a reset: the request was not read) without an answer.
	b.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if rest, err := io.ReadAll(b.br); len(rest) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("held connection: %q, %v; want a close without an answer", rest, err)
	}
	close(release)
	if have := <-aDone; have != "GET /a " {
		t.Errorf("request in flight: %q", have)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestMaxHeaderBytes: a head of DefaultMaxHeaderBytes is served, one byte
// more is answered 431 and LimitHit told; SetLimits changes the bound for
// the next request.
func TestMaxHeaderBytes(t *testing.T) {
	hits := newHitCounter()
	s := &Server{Handler: http.HandlerFunc(echo), LimitHit: hits.hit}
	addr := serve(t, s)
	headOf := func(n int) string {
		const pre, post = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: ", "\r\n\r\n"
		return pre + strings.Repeat("p", n-len(pre)-len(post)) + post
	}
	if have := raw(t, addr, headOf(DefaultMaxHeaderBytes)); !strings.HasPrefix(have, "HTTP/1.1 200 ") {
		t.Errorf("a head of %d bytes: %q", DefaultMaxHeaderBytes, firstLine(have))
	}
	if n := hits.count(LimitMaxHeaderBytes); n != 0 {
		t.Errorf("LimitHit %d times for a head within the bound", n)
	}
	if have := raw(t, addr, headOf(DefaultMaxHeaderBytes+1)); !strings.HasPrefix(have, "HTTP/1.1 431 ") {
		t.Errorf("a head of %d bytes: %q", DefaultMaxHeaderBytes+1, firstLine(have))
	}
	if l := <-hits.ch; l != LimitMaxHeaderBytes {
		t.Errorf("LimitHit(%q)", l)
	}
	s.SetLimits(Limits{MaxHeaderBytes: 1 << 10})
	if have := raw(t, addr, headOf(1<<10+1)); !strings.HasPrefix(have, "HTTP/1.1 431 ") {
		t.Errorf("after SetLimits: %q", firstLine(have))
	}
	if have := raw(t, addr, headOf(1<<10)); !strings.HasPrefix(have, "HTTP/1.1 200 ") {
		t.Errorf("after SetLimits, within: %q", firstLine(have))
	}
}

func TestLimitsDefaults(t *testing.T) {
	s := &Server{MaxConns: 5}
	s.init()
	defer s.Close()
	if have, want := *s.currentLimits(), (Limits{MaxConns: 5, MaxHeaderBytes: DefaultMaxHeaderBytes}); have != want {
		t.Errorf("fields: want %+v, have %+v", want, have)
	}
	s.SetLimits(Limits{MaxHeaderBytes: 100})
	if have, want := *s.currentLimits(), (Limits{MaxHeaderBytes: 100}); have != want {
		t.Errorf("after SetLimits: want %+v, have %+v", want, have)
	}
}
