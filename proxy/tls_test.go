package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/certs/certstest"
	"github.com/sluice-lb/sluice/proxy/metrics"
)

// testCA is a certificate authority made for one test.
// testCA is certstest's CA with the shorthands these tests use.
type testCA struct{ *certstest.CA }

func newCA(t testing.TB) *testCA { return &testCA{certstest.NewCA(t, "sluice test CA")} }

// pool is a pool holding only the CA.
func (ca *testCA) pool() *x509.CertPool { return ca.Pool() }

// leaf returns a certificate for names (IP literals go to the IP SANs)
// signed by ca.
func (ca *testCA) leaf(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	return ca.Issue(t, certstest.LeafOptions{Names: names, CommonName: names[0]}).TLS(t)
}

// tlsBackend is an HTTPS httptest server with a certificate of ca for
// 127.0.0.1 and localhost; it counts its connections and answers its
// name, the protocol and whether the request came over TLS.
func tlsBackend(t *testing.T, ca *testCA, name string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Strict-Transport-Security", "max-age=1")
		w.Header().Set("X-Seen-Proto", r.Header.Get("X-Forwarded-Proto"))
		fmt.Fprintf(w, "%s %s tls=%v", name, r.Proto, r.TLS != nil)
	}))
	s.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "127.0.0.1", "localhost")}, NextProtos: []string{"h2", "http/1.1"}}
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s, &conns
}

func tlsHostOf(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "https://") }

// TestHTTPSBackend: a service with TLS speaks HTTPS/1.1 to its instances,
// verifying them against its CA with the instance's IP as server name,
// and reuses one connection (one handshake) for many requests; an
// instance whose certificate does not verify fails as a refused
// connection would: blamed, counted as connect, retried elsewhere.
func TestHTTPSBackend(t *testing.T) {
	ca := newCA(t)
	be, conns := tlsBackend(t, ca, "a")
	p := pool(t, "round_robin", m("a", tlsHostOf(be), 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, TLS: &tls.Config{RootCAs: ca.pool()}})
	for i := 0; i < 20; i++ {
		resp, body := get(t, f.URL+"/x")
		if resp.StatusCode != 200 || body != "a HTTP/1.1 tls=true" {
			t.Fatalf("status %d, body %q", resp.StatusCode, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("want 1 connection (one handshake) for 20 requests, have %d", n)
	}

	// A wrong CA: the instance's failure, at connect; the good one serves.
	bad, _ := tlsBackend(t, newCA(t), "bad")
	p2 := pool(t, "round_robin", m("bad", tlsHostOf(bad), 1), m("good", tlsHostOf(be), 1))
	f2 := front(t, ServiceOptions{Name: "web", Pool: p2, Attempts: 2, TLS: &tls.Config{RootCAs: ca.pool()}})
	for i := 0; i < 4; i++ {
		resp, body := get(t, f2.URL+"/x")
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "a ") {
			t.Fatalf("status %d, body %q", resp.StatusCode, body)
		}
	}
	st := statsOf(p2, "bad")
	if st.Failures() == 0 || st.Errors(balance.ErrorConnect) == 0 {
		t.Errorf("wrong CA: want connect failures of the instance, have %d (connect %d)", st.Failures(), st.Errors(balance.ErrorConnect))
	}

	// Directly: the handshake failure is a dial error.
	u := NewUpstream()
	defer u.Close()
	req, _ := http.NewRequest(http.MethodGet, "https://"+tlsHostOf(bad)+"/", nil)
	if _, err := u.TryTLS(req, tlsHostOf(bad), &tls.Config{RootCAs: ca.pool()}, TryLimits{}); !isDialError(err) {
		t.Errorf("want a dial error, have %v", err)
	}
}

// rawTLSBackend is rawBackend over TLS with a certificate of ca.
func rawTLSBackend(t *testing.T, ca *testCA, serve func(net.Conn)) string {
	t.Helper()
	cert := ca.leaf(t, "127.0.0.1")
	return rawBackend(t, func(c net.Conn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		defer tc.Close()
		serve(tc)
	})
}

// TestTLSConnectionIntegrity: a TLS connection is reused at an exact
// message boundary only: bytes that an instance sends after its answer,
// late (on the socket), in the same write (held by crypto/tls as a whole
// record) or as part of a record, get the connection discarded, and the
// next request gets its own answer on a new connection.
func TestTLSConnectionIntegrity(t *testing.T) {
	ca := newCA(t)
	cases := []struct {
		name  string
		extra func(tc *tls.Conn, raw net.Conn, answer string) // writes the answer and what follows
		reuse bool
	}{
		{"clean", func(tc *tls.Conn, _ net.Conn, a string) { io.WriteString(tc, a) }, true},
		{"same write", func(tc *tls.Conn, _ net.Conn, a string) { io.WriteString(tc, a+a) }, false},
		{"late record", func(tc *tls.Conn, _ net.Conn, a string) { io.WriteString(tc, a); io.WriteString(tc, "X") }, false},
		{"part of a record", func(tc *tls.Conn, raw net.Conn, a string) { io.WriteString(tc, a); raw.Write([]byte{23, 3, 3}) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var conns atomic.Int64
			answered := make(chan struct{}, 16)
			cert := ca.leaf(t, "127.0.0.1")
			addr := rawBackend(t, func(c net.Conn) {
				conns.Add(1)
				s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				br := bufio.NewReader(s)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					id := strings.TrimPrefix(req.URL.Path, "/")
					tc.extra(s, c, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(id), id))
					answered <- struct{}{}
				}
			})
			u := NewUpstream()
			defer u.Close()
			conf := &tls.Config{RootCAs: ca.pool()}
			for i := 0; i < 3; i++ {
				id := fmt.Sprintf("req%d", i)
				req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/"+id, nil)
				resp, err := u.TryTLS(req, addr, conf, TryLimits{Header: 5 * time.Second})
				if err != nil {
					t.Fatalf("%s: %v", id, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != id {
					t.Fatalf("request %s got the answer %q", id, b)
				}
				// Written (on loopback: arrived) before the next request.
				<-answered
			}
			want := int64(3)
			if tc.reuse {
				want = 1
			}
			if n := conns.Load(); n != want {
				t.Errorf("want %d connections for 3 requests, have %d", want, n)
			}
		})
	}
}

// TestHTTPSProbe: http probes speak HTTPS with the service's TLS
// configuration and tcp probes complete a handshake; an instance whose
// certificate does not verify fails both.
func TestHTTPSProbe(t *testing.T) {
	ca := newCA(t)
	good, _ := tlsBackend(t, ca, "good")
	bad, _ := tlsBackend(t, newCA(t), "bad")
	for _, typ := range []ProbeType{ProbeHTTP, ProbeTCP} {
		t.Run(string(typ), func(t *testing.T) {
			p := pool(t, "round_robin", m("good", tlsHostOf(good), 1), m("bad", tlsHostOf(bad), 1))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			pr := NewProber(p, ProbeOptions{Type: typ, Path: "/", Interval: 20 * time.Millisecond, Timeout: time.Second,
				Rise: 1, Fall: 1, TLS: &tls.Config{RootCAs: ca.pool()}}, nil)
			go func() { pr.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			waitFor(t, "good passing", func() bool { return probeState(p, "good") == balance.ProbePassing })
			waitFor(t, "bad failing", func() bool { return probeState(p, "bad") == balance.ProbeFailing })
		})
	}
}

// TestMaxBodyBytes: a declared body beyond the route's limit is answered
// 413 without contacting an instance; a chunked body that grows beyond it
// fails with 413; neither blames the instance, both close the connection
// and count as max_body_bytes hits. A body at the limit passes.
func TestMaxBodyBytes(t *testing.T) {
	var hits atomic.Int64
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %d", len(b))
	}))
	defer be.Close()
	p := pool(t, "round_robin", m("a", hostOf(be), 1))
	reg := prometheus.NewRegistry()
	f := h1Front(t, HTTPOptions{Listener: "web", Metrics: metrics.New(reg),
		Routes: []Route{{PathPrefix: "/", MaxBodyBytes: 10, Service: ServiceOptions{Name: "web", Pool: p}}}})
	addr := strings.TrimPrefix(f.URL, "http://")

	resp := do(t, http.MethodPost, f.URL+"/", "0123456789")
	if resp.StatusCode != 200 {
		t.Fatalf("body at the limit: status %d", resp.StatusCode)
	}
	hits.Store(0)
	// Content-Length beyond the limit; the body is never sent.
	out := rawClient(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 413 ") || !strings.Contains(out, `"error":"request body too large"`) {
		t.Errorf("Content-Length 11: %q", out)
	}
	if hits.Load() != 0 {
		t.Error("the instance was contacted")
	}
	// Chunked, growing beyond the limit.
	out = rawClient(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n678901\r\n0\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 413 ") {
		t.Errorf("chunked: %q", out)
	}
	// rawClient read until the connection closed: it was closed.
	if st := statsOf(p, "a"); st.Failures() != 0 {
		t.Errorf("the instance was blamed: %d failures", st.Failures())
	}
	if n := gathered(t, reg, "sluice_limit_hits_total", "listener", "web", "limit", "max_body_bytes"); n != 2 {
		t.Errorf("want 2 max_body_bytes hits, have %v", n)
	}
	if n := gathered(t, reg, "sluice_requests_total", "listener", "web", "code", "413"); n != 2 {
		t.Errorf("want 2 requests counted 413, have %v", n)
	}
	waitFor(t, "nothing in flight", func() bool { return inflight(p) == 0 })
}

// TestRedirectLocation: the Location of the https redirect keeps the
// request's host (lowercased, port dropped), path and query; a host that
// is not a DNS name or IP literal is refused.
func TestRedirectLocation(t *testing.T) {
	cases := []struct {
		host, port, path, query string
		want                    string // "" = refused
	}{
		{"Example.COM", "", "/a/b", "x=1", "https://example.com/a/b?x=1"},
		{"example.com:8080", ":8443", "/", "", "https://example.com:8443/"},
		{"example.com.", "", "/", "", "https://example.com./"},
		{"127.0.0.1:80", "", "/p", "", "https://127.0.0.1/p"},
		{"[::1]:80", "", "/", "", "https://[::1]/"},
		{"[0:0::1]", "", "/", "", "https://[::1]/"},
		{"example.com", "", "//evil.com/x", "", "https://example.com//evil.com/x"},
		{"under_score.example", "", "/", "", "https://under_score.example/"},
		{"", "", "/", "", ""},
		{"evil.com@example.com", "", "/", "", ""},
		{"user:pass@example.com", "", "/", "", ""},
		{"example.com/evil", "", "/", "", ""},
		{"example.com\r\nSet-Cookie: a=b", "", "/", "", ""},
		{"exa mple.com", "", "/", "", ""},
		{"example.com:", "", "/", "", ""},
		{"example.com:x", "", "/", "", ""},
		{"example.com:123456", "", "/", "", ""},
		{"::1", "", "/", "", ""},
		{"[fe80::1%25eth0]", "", "/", "", ""},
		{"[127.0.0.1]", "", "/", "", ""},
		{"-bad.example", "", "/", "", ""},
		{"a..b", "", "/", "", ""},
		{strings.Repeat("a", 64) + ".com", "", "/", "", ""},
		{"example.com", "", "*", "", ""},
		{"example.com", "", "", "", ""},
		{"example.com", "", "/a\r\nb", "", ""},
		{"example.com", "", "/", "a\nb", ""},
		{"ex\x00ample.com", "", "/", "", ""},
		{"exämple.com", "", "/", "", ""},
	}
	for _, tc := range cases {
		have, ok := redirectLocation(tc.host, tc.port, tc.path, tc.query)
		if tc.want == "" && ok {
			t.Errorf("%q %q: want refused, have %q", tc.host, tc.path, have)
		} else if tc.want != "" && have != tc.want {
			t.Errorf("%q %q: want %q, have %q (%v)", tc.host, tc.path, tc.want, have, ok)
		}
	}
}

// TestRedirectHTTPS: every request gets 308 to https on HTTPSPort, its
// body unread (the connection is closed after), and a hostile Host 400.
func TestRedirectHTTPS(t *testing.T) {
	f := h1Front(t, HTTPOptions{Listener: "plain", RedirectHTTPS: true, HTTPSPort: 8443})
	addr := strings.TrimPrefix(f.URL, "http://")
	out := rawClient(t, addr, "GET /a%20b?q=1 HTTP/1.1\r\nHost: WWW.Example.com:8080\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 308 ") || !strings.Contains(out, "\r\nLocation: https://www.example.com:8443/a%20b?q=1\r\n") {
		t.Errorf("GET: %q", out)
	}
	// A pending body is not read: the answer comes at once, then the close.
	out = rawClient(t, addr, "POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 308 ") || !strings.Contains(out, "\r\nLocation: https://example.com:8443/x\r\n") {
		t.Errorf("POST: %q", out)
	}
	// An absolute-form target without a path redirects to "/".
	out = rawClient(t, addr, "GET http://example.com?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 308 ") || !strings.Contains(out, "\r\nLocation: https://example.com:8443/?q=1\r\n") {
		t.Errorf("absolute form without a path: %q", out)
	}
	out = rawClient(t, addr, "GET / HTTP/1.1\r\nHost: evil.com@example.com\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 400 ") || strings.Contains(out, "Location") {
		t.Errorf("hostile host: %q", out)
	}
	f443 := h1Front(t, HTTPOptions{RedirectHTTPS: true})
	out = rawClient(t, strings.TrimPrefix(f443.URL, "http://"), "GET /p HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
	if !strings.Contains(out, "\r\nLocation: https://example.com/p\r\n") {
		t.Errorf("port 443: %q", out)
	}
}

// TestHSTS: Strict-Transport-Security is on every answer to a request over
// TLS (the instance's, which it replaces, a 404 and a 502), never on plain
// ones (but the instance's own); X-Forwarded-Proto says https over TLS.
func TestHSTS(t *testing.T) {
	ca := newCA(t)
	be, _ := tlsBackend(t, ca, "a")
	p := pool(t, "round_robin", m("a", tlsHostOf(be), 1))
	dead := pool(t, "round_robin", m("dead", deadAddr(t), 1))
	opts := HTTPOptions{HSTSMaxAge: 24 * time.Hour, Routes: []Route{
		{PathPrefix: "/ok", Service: ServiceOptions{Name: "web", Pool: p, TLS: &tls.Config{RootCAs: ca.pool()}}},
		{PathPrefix: "/dead", Service: ServiceOptions{Name: "dead", Pool: dead, Attempts: 1}},
	}}
	secure := httptest.NewUnstartedServer(NewHTTPHandler(opts))
	secure.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "127.0.0.1")}}
	secure.StartTLS()
	defer secure.Close()
	plain := httptest.NewServer(NewHTTPHandler(opts))
	defer plain.Close()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool()}}}
	defer client.CloseIdleConnections()
	for _, path := range []string{"/ok", "/none", "/dead"} {
		for _, base := range []string{secure.URL, plain.URL} {
			resp, err := client.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			have := resp.Header.Values("Strict-Transport-Security")
			if base == secure.URL && (len(have) != 1 || have[0] != "max-age=86400") {
				t.Errorf("TLS %s (%d): Strict-Transport-Security %q", path, resp.StatusCode, have)
			}
			if base == plain.URL && len(have) != 0 && path != "/ok" {
				t.Errorf("plain %s (%d): Strict-Transport-Security %q", path, resp.StatusCode, have)
			}
			if proto := resp.Header.Get("X-Seen-Proto"); path == "/ok" && (base == secure.URL) != (proto == "https") {
				t.Errorf("%s: X-Forwarded-Proto %q", base, proto)
			}
		}
	}
}

// tcpFront serves a TCPProxy with opts on a loopback port until the test
// ends.
func tcpFront(t *testing.T, opts TCPOptions) (string, *TCPProxy) {
	t.Helper()
	tp := NewTCPProxy(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tp.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { ln.Close(); cancel(); <-done })
	return ln.Addr().String(), tp
}

// readAllTimeout reads c until EOF or 5 s.
func readAllTimeout(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestTCPTerminateTLS: a TCP listener with TLS decrypts and forwards plain
// bytes; a client that fails the handshake is closed and no instance is
// contacted.
func TestTCPTerminateTLS(t *testing.T) {
	ca := newCA(t)
	p := pool(t, "round_robin", m("echo", echoServer(t), 1))
	addr, _ := tcpFront(t, TCPOptions{Service: ServiceOptions{Name: "echo", Pool: p},
		TLS: &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "localhost")}}, HandshakeTimeout: 2 * time.Second})
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.pool(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "hello")
	c.CloseWrite()
	if out, err := readAllTimeout(c); out != "hello" {
		t.Fatalf("echo %q, %v", out, err)
	}
	c.Close()
	if st := statsOf(p, "echo"); st.Requests() != 1 {
		t.Errorf("want 1 connection to the instance, have %d", st.Requests())
	}
	// Plain bytes instead of a handshake.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	io.WriteString(raw, "GET / HTTP/1.0\r\n\r\n")
	if out, err := readAllTimeout(raw); err != nil || strings.Contains(out, "GET") {
		t.Errorf("a failed handshake: read %q, %v; want a close", out, err)
	}
	if st := statsOf(p, "echo"); st.Requests() != 1 || st.Failures() != 0 {
		t.Errorf("the instance was contacted or blamed: %d connections, %d failures", st.Requests(), st.Failures())
	}
}

// sniBackend is a TLS server (certificate for every name the test uses)
// that writes its name, then echoes.
func sniBackend(t *testing.T, ca *testCA, name string) string {
	t.Helper()
	cert := ca.leaf(t, "a.example", "x.wild.example", "deep.x.wild.example", "other.example")
	return rawBackend(t, func(c net.Conn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		defer tc.Close()
		if err := tc.Handshake(); err != nil {
			return
		}
		io.WriteString(tc, name+":")
		io.Copy(tc, tc)
	})
}

// TestSNIPassthrough: the ClientHello's server name picks the service
// (exact, then a one-label wildcard, then the default), the TLS session is
// the instance's own (sluice does not terminate it); without a default an
// unknown name is closed, and so is a client that sends no hello in time.
func TestSNIPassthrough(t *testing.T) {
	ca := newCA(t)
	pa := pool(t, "round_robin", m("a", sniBackend(t, ca, "A"), 1))
	pw := pool(t, "round_robin", m("w", sniBackend(t, ca, "W"), 1))
	pd := pool(t, "round_robin", m("d", sniBackend(t, ca, "D"), 1))
	log := &lockedBuffer{}
	al := NewAccessLog(log)
	routes := []SNIRoute{
		{ServerName: "A.example", Service: ServiceOptions{Name: "a", Pool: pa}},
		{ServerName: "*.wild.example", Service: ServiceOptions{Name: "w", Pool: pw}},
		{ServerName: "*", Service: ServiceOptions{Name: "d", Pool: pd}},
	}
	addr, _ := tcpFront(t, TCPOptions{Listener: "sni", SNIRoutes: routes, HandshakeTimeout: 200 * time.Millisecond, AccessLog: al})
	try := func(addr, name string) (string, error) {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.pool(), ServerName: name})
		if err != nil {
			return "", err
		}
		defer c.Close()
		io.WriteString(c, "ping")
		c.CloseWrite()
		return readAllTimeout(c)
	}
	for name, want := range map[string]string{"a.example": "A:ping", "x.wild.example": "W:ping",
		"deep.x.wild.example": "D:ping", "other.example": "D:ping"} {
		if have, err := try(addr, name); have != want {
			t.Errorf("%s: want %q, have %q (%v)", name, want, have, err)
		}
	}
	// The line is written once both directions ended, after the client's EOF.
	waitFor(t, "the access log line with the server name", func() bool {
		return strings.Contains(log.String(), "server_name=a.example")
	})

	// No default: an unknown name is closed.
	addr2, _ := tcpFront(t, TCPOptions{SNIRoutes: routes[:2], HandshakeTimeout: time.Second})
	if have, err := try(addr2, "other.example"); err == nil {
		t.Errorf("unknown name: want a closed connection, have %q", have)
	}
	// A client that sends nothing is closed after the handshake timeout.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if out, err := readAllTimeout(c); err != nil || out != "" {
		t.Errorf("silent client: read %q, %v; want EOF", out, err)
	}
	for _, p := range []*balance.Pool{pa, pw, pd} {
		for _, mem := range p.Load().Members {
			if mem.Stats.Failures() != 0 {
				t.Errorf("%s blamed", mem.ID)
			}
		}
	}
}

// TestTCPMaxConns: with MaxConns 2 and 4 clients, 2 are served and the
// others wait (the accept loop counts a limit hit); each close lets one
// more in, and every client is served in turn, never more than 2 at once.
func TestTCPMaxConns(t *testing.T) {
	var open, peak atomic.Int64
	backendAddr := rawBackend(t, func(c net.Conn) {
		n := open.Add(1)
		defer open.Add(-1)
		for {
			if p := peak.Load(); n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		io.Copy(c, c)
	})
	p := pool(t, "round_robin", m("echo", backendAddr, 1))
	reg := prometheus.NewRegistry()
	addr, _ := tcpFront(t, TCPOptions{Listener: "db", MaxConns: 2, Metrics: metrics.New(reg), Service: ServiceOptions{Name: "echo", Pool: p}})
	echo := func(c net.Conn, s string) error {
		if _, err := io.WriteString(c, s); err != nil {
			return err
		}
		buf := make([]byte, len(s))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != s {
			return errors.New("echo " + string(buf))
		}
		return nil
	}
	var clients []net.Conn
	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", addr) // the backlog takes it
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	// Two are served; which two is the accept order's.
	served := make(chan int, 4)
	for i, c := range clients {
		go func() {
			if err := echo(c, fmt.Sprintf("c%d", i)); err == nil {
				served <- i
			} else {
				served <- -1 - i
			}
		}()
	}
	first := []int{<-served, <-served}
	for _, i := range first {
		if i < 0 {
			t.Fatalf("client %d failed", -1-i)
		}
	}
	waitFor(t, "a max_connections hit", func() bool {
		return gathered(t, reg, "sluice_limit_hits_total", "listener", "db", "limit", "max_connections") >= 1
	})
	select {
	case i := <-served:
		t.Fatalf("client %d served beyond the limit", i)
	default:
	}
	for _, i := range first {
		clients[i].Close()
		if j := <-served; j < 0 {
			t.Fatalf("client %d failed", -1-j)
		}
	}
	if n := peak.Load(); n > 2 {
		t.Errorf("want at most 2 connections at once, have %d", n)
	}
}
