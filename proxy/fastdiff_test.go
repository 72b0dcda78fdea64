package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/h1"
)

// diffBackend answers every request with the script the test set last
// (sentinel requests, GET /sentinel, with a fixed answer) and records each
// request head byte for byte.
type diffBackend struct {
	ln     net.Listener
	script atomic.Pointer[backendScript]
	mu     sync.Mutex
	heads  []string
}

type backendScript struct {
	answer string // written after the head
	close  bool   // close the connection after the answer
}

const sentinelAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

func newDiffBackend(t *testing.T) *diffBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &diffBackend{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.serve(c)
		}
	}()
	return b
}

func (b *diffBackend) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			head.WriteString(line)
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
		}
		h := head.String()
		if strings.HasPrefix(h, "GET /sentinel ") {
			io.WriteString(c, sentinelAnswer)
			continue
		}
		b.mu.Lock()
		b.heads = append(b.heads, h)
		b.mu.Unlock()
		s := b.script.Load()
		io.WriteString(c, s.answer)
		if s.close {
			return
		}
	}
}

func (b *diffBackend) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.heads
	b.heads = nil
	return h
}

var dateLine = regexp.MustCompile(`(?m)^Date: [^\r]*\r\n`)

// rawExchange sends req on a new connection to addr and returns every byte
// the client got, up to the end of the answer to a sentinel request sent
// after it when the connection stays open, with Date fields removed.
func rawExchange(t *testing.T, addr, req string) string {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	io.WriteString(c, req)
	method, _, _ := strings.Cut(req, " ")
	outcome := ""
	read := func(method string) bool {
		for {
			resp, err := http.ReadResponse(br, &http.Request{Method: method})
			if err != nil {
				outcome += " head: " + errClass(err)
				return false
			}
			_, err = io.Copy(io.Discard, resp.Body)
			if err != nil {
				outcome += " body: " + errClass(err)
				return false
			}
			if resp.StatusCode >= 200 {
				return !resp.Close
			}
		}
	}
	if read(method) {
		io.WriteString(c, "GET /sentinel HTTP/1.1\r\nHost: s\r\n\r\n")
		read("GET")
	}
	return sortHeads(dateLine.ReplaceAllString(raw.String(), "")) + "\n--" + outcome
}

// sortHeads orders the fields of every answer head in s by name, keeping
// the order of a name's values: the h1 server writes a header map in
// map order.
func sortHeads(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "HTTP/1.1 ")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		s = s[i:]
		end := strings.Index(s, "\r\n\r\n")
		if end < 0 {
			b.WriteString(s)
			return b.String()
		}
		lines := strings.Split(s[:end], "\r\n")
		fields := lines[1:]
		slices.SortStableFunc(fields, func(a, b string) int {
			ka, _, _ := strings.Cut(a, ":")
			kb, _, _ := strings.Cut(b, ":")
			return strings.Compare(strings.ToLower(ka), strings.ToLower(kb))
		})
		b.WriteString(strings.Join(lines, "\r\n"))
		b.WriteString("\r\n\r\n")
		s = s[end+4:]
	}
}

// goneExchange sends req and closes the connection once the instance has
// the request, before it answers.
func goneExchange(be *diffBackend) func(t *testing.T, addr, req string) string {
	return func(t *testing.T, addr, req string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, req)
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			be.mu.Lock()
			n := len(be.heads)
			be.mu.Unlock()
			if n > 0 || time.Now().After(deadline) {
				break
			}
		}
		c.Close()
		return ""
	}
}

func errClass(err error) string {
	switch {
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected EOF"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, net.ErrClosed):
		return "timeout/closed"
	}
	return "error"
}

var logVolatile = regexp.MustCompile(`(?m)(^[^ ]* | (client|duration_ms)=[^ \n]*)`)

// TestFastPathEquivalence sends the same raw requests through a fast
// handler and a ReverseProxyOnly one, both in front of the same raw
// instance, and compares byte for byte what the instance got, what the
// client got (Date aside) and the access log lines (client port and
// duration aside).
func TestFastPathEquivalence(t *testing.T) {
	be := newDiffBackend(t)
	plain := pool(t, "round_robin", m("a", be.ln.Addr().String(), 1))
	build, err := balance.NewBuilder("web", "round_robin", &balance.StickyOptions{
		Mode: balance.StickyCookie, CookieName: "sluice_web", TTL: time.Hour, Secret: []byte("k"),
	})
	if err != nil {
		t.Fatal(err)
	}
	sticky := balance.NewPool(balance.PoolOptions{Service: "web", Builder: build})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sticky.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sticky.SetMembers(ctx, 1, []balance.Member{m("a", be.ln.Addr().String(), 1)})
	for deadline := time.Now().Add(5 * time.Second); !sticky.Load().Synced; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pool not synced")
		}
	}

	type front struct {
		addr string
		log  *syncBuffer
	}
	mk := func(rpOnly, trusted bool) front {
		lb := &syncBuffer{}
		opts := HTTPOptions{Listener: "l", ReverseProxyOnly: rpOnly, AccessLog: NewAccessLog(lb),
			Routes: []Route{
				{PathPrefix: "/sticky", Service: ServiceOptions{Name: "svc", Pool: sticky, StickyCookie: "sluice_web"}},
				{PathPrefix: "/", Service: ServiceOptions{Name: "svc", Pool: plain}},
			}}
		if trusted {
			opts.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &h1.Server{Handler: NewHTTPHandler(opts)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return front{ln.Addr().String(), lb}
	}
	fast, slow := mk(false, false), mk(true, false)
	fastT, slowT := mk(false, true), mk(true, true)

	const ok5 = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
	long := "/" + strings.Repeat("a%2Fb", 1500)
	cases := []struct {
		name, req, answer string
		close, trusted    bool
	}{
		{"plain", "GET /p?q=1&r=%20 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n", ok5, false, false},
		{"headers", "GET / HTTP/1.1\r\nHost: h\r\nX-B: 2\r\nx-a: 1\r\nX-B: 1\r\nUser-Agent:  curl/8 \r\nCookie: a=1\r\nCookie: b=2\r\n\r\n", ok5, false, false},
		{"empty UA", "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent:\r\n\r\n", ok5, false, false},
		{"two UA", "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: a\r\nUser-Agent: b\r\n\r\n", ok5, false, false},
		{"odd path", "GET /a%2Fb/c%20d/%7e/%C3%BC/!$&'()*+,;=:@~/.. HTTP/1.1\r\nHost: h\r\n\r\n", ok5, false, false},
		{"double slash", "GET //evil.example/x HTTP/1.1\r\nHost: h\r\n\r\n", ok5, false, false},
		{"absolute", "GET http://example.com/p?x=1 HTTP/1.1\r\nHost: other\r\n\r\n", ok5, false, false},
		{"absolute https", "GET https://example.com:8443/p HTTP/1.1\r\nHost: example.com:8443\r\n\r\n", ok5, false, false},
		{"absolute no path", "GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", ok5, false, false},
		{"asterisk", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", ok5, false, false},
		{"long", "GET " + long + " HTTP/1.1\r\nHost: h\r\n\r\n", ok5, false, false},
		{"ipv6 host", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", ok5, false, false},
		{"host underscore", "GET / HTTP/1.1\r\nHost: a_b.example\r\n\r\n", ok5, false, false},
		{"no host", "GET / HTTP/1.1\r\n\r\n", ok5, false, false},
		{"query semicolon", "GET /?a=1;b=2 HTTP/1.1\r\nHost: h\r\n\r\n", ok5, false, false},
		{"xff untrusted", "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nForwarded: for=x\r\n\r\n", ok5, false, false},
		{"xff trusted", "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: fh\r\nForwarded: for=x\r\n\r\n", ok5, false, true},
		{"trusted nothing", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", ok5, false, true},
		{"lower hop fields", "GET / HTTP/1.1\r\nHost: h\r\nkeep-alive: 1\r\nte: trailers\r\nproxy-authorization: x\r\n\r\n", ok5, false, false},
		{"connection keep-alive", "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Y\r\nX-Y: 1\r\n\r\n", ok5, false, false},
		{"expect", "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", ok5, false, false},
		{"content-length 0", "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", ok5, false, false},
		{"GET with body", "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", ok5, false, false},
		{"GET chunked", "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", ok5, false, false},
		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: h\r\n\r\n", ok5, false, false},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", ok5, false, false},
		{"HEAD", "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, false},
		{"HEAD with body bytes", "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", ok5, true, false},
		{"hop fields", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nConnection: X-Hop, x-other\r\nX-Hop: 1\r\nX-Other: 2\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nProxy-Connection: keep-alive\r\nTe: trailers\r\nUpgrade: h2c\r\nX-End: e\r\nContent-Length: 5\r\n\r\nhello", false, false},
		{"duplicates", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Z: 1\r\nSet-Cookie: b=2\r\nX-Z: 2\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nServer: be\r\nContent-Length: 5\r\n\r\nhello", false, false},
		{"sticky", "GET /sticky HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Length: 5\r\n\r\nhello", false, false},
		{"sticky no cookie", "GET /sticky HTTP/1.1\r\nHost: h\r\n\r\n", ok5, false, false},
		{"1xx", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\nLink: </b>\r\nConnection: X-H\r\nX-H: 1\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + ok5, false, false},
		{"101 unasked", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nbytes", true, false},
		{"204 with body", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", true, false},
		{"304 with body", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\nhello", true, false},
		{"close delimited", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\nhello", true, false},
		{"chunked", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false, false},
		{"trailers announced", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", false, false},
		{"trailers unannounced", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-U: 1\r\nX-U: 2\r\n\r\n", false, false},
		{"trailer also header", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nX-T: h\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: t\r\n\r\n", false, false},
		{"event stream", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello", false, false},
		{"502", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad", false, false},
		{"503", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 503 Busy\r\nRetry-After: 5\r\nContent-Length: 3\r\n\r\nbad", false, false},
		{"garbage", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n", true, false},
		{"reset before answer", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "", true, false},
		{"short body", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", true, false},
		{"bad chunk", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", true, false},
		{"smuggle cl te", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", true, false},
		{"bad header name", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nX Bad: 1\r\nContent-Length: 5\r\n\r\nhello", true, false},
		{"client gone", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "", false, false},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 5\r\n\r\nhello", true, false},
	}
	for _, c := range cases {
		be.script.Store(&backendScript{answer: c.answer, close: c.close})
		f, s := fast, slow
		if c.trusted {
			f, s = fastT, slowT
		}
		be.take()
		exchange := rawExchange
		if c.name == "client gone" {
			exchange = goneExchange(be)
		}
		fGot := exchange(t, f.addr, c.req)
		fSent := be.take()
		sGot := exchange(t, s.addr, c.req)
		sSent := be.take()
		if strings.Join(fSent, "") != strings.Join(sSent, "") {
			t.Errorf("%s: instance got\n%q\nfast, and\n%q\nslow", c.name, fSent, sSent)
		}
		if fGot != sGot {
			t.Errorf("%s: client got\n%q\nfast, and\n%q\nslow", c.name, fGot, sGot)
		}
		// The access log line is written when the answer is done, which
		// may be after the client has it: poll for both.
		// A request h1 refused (400, nothing sent upstream) never reached
		// the handler: no line comes, nothing to wait for.
		refused := len(fSent) == 0 && strings.HasPrefix(fGot, "HTTP/1.1 400 ")
		var fl, sl string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			fl, sl = logVolatile.ReplaceAllString(f.log.String(), ""), logVolatile.ReplaceAllString(s.log.String(), "")
			if (fl == sl && (fl != "" || refused)) || time.Now().After(deadline) {
				break
			}
		}
		if fl != sl {
			t.Errorf("%s: access log\n%q\nfast, and\n%q\nslow", c.name, fl, sl)
		}
		f.log.Reset()
		s.log.Reset()
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (b *syncBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b.Reset()
}

// TestFastPathFailoverEquivalence compares the two paths when one of two
// instances answers 502 and the other is down: the answer, the retries
// and the access log lines must be the same.
func TestFastPathFailoverEquivalence(t *testing.T) {
	bad := newDiffBackend(t)
	bad.script.Store(&backendScript{answer: "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad"})
	good := newDiffBackend(t)
	good.script.Store(&backendScript{answer: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"})
	down := deadAddr(t)
	run := func(rpOnly bool, members ...balance.Member) (string, string) {
		lb := &syncBuffer{}
		p := pool(t, "round_robin", members...)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &h1.Server{Handler: NewHTTPHandler(HTTPOptions{Listener: "l", ReverseProxyOnly: rpOnly, AccessLog: NewAccessLog(lb),
			Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "svc", Pool: p, Attempts: 3}}}})}
		go srv.Serve(ln)
		defer srv.Close()
		var got strings.Builder
		for range 4 {
			got.WriteString(rawExchange(t, ln.Addr().String(), "GET /f HTTP/1.1\r\nHost: h\r\n\r\n"))
		}
		var lines []string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			lines = strings.Split(strings.TrimSpace(logVolatile.ReplaceAllString(lb.String(), "")), "\n")
			if len(lines) >= 8 || time.Now().After(deadline) {
				break
			}
		}
		slices.Sort(lines)
		return got.String(), strings.Join(lines, "\n")
	}
	for _, members := range [][]balance.Member{
		{m("bad", bad.ln.Addr().String(), 1), m("good", good.ln.Addr().String(), 1)},
		{m("down", down, 1), m("good", good.ln.Addr().String(), 1)},
		{m("down", down, 1), m("bad", bad.ln.Addr().String(), 1)},
	} {
		fGot, fLog := run(false, members...)
		sGot, sLog := run(true, members...)
		if fGot != sGot {
			t.Errorf("%s: client got\n%q\nfast, and\n%q\nslow", members[0].ID+"+"+members[1].ID, fGot, sGot)
		}
		if fLog != sLog {
			t.Errorf("%s: access log\n%s\nfast, and\n%s\nslow", members[0].ID+"+"+members[1].ID, fLog, sLog)
		}
	}
}
