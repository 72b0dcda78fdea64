package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/h1"
	"github.com/sluice-lb/sluice/proxy/metrics"
)

// gathered sums the series of family name whose labels include the given
// name/value pairs: counter and gauge values, histogram sample counts.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func statsOf(p *balance.Pool, id string) *balance.Stats {
	for _, mem := range p.Load().Members {
		if mem.ID == id {
			return mem.Stats
		}
	}
	return nil
}

// TestHTTPMetrics: every answer is counted once under its route and final
// code (404 under NoRouteLabel), with one duration sample each; retries
// are counted per service and each failure of an instance by kind on that
// instance; the open connections gauge, h2c included, returns to 0.
func TestHTTPMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	mx := metrics.New(reg)
	var hits503, hitsSlow, hitsHold atomic.Int64
	web := pool(t, "round_robin", m("web-1", hostOf(backend(t, "web")), 1))
	flaky := pool(t, "round_robin", m("a-503", hostOf(statusBackend(t, "a", 503, 0, &hits503)), 1),
		m("b-good", hostOf(backend(t, "b")), 1))
	dead := pool(t, "round_robin", m("dead-1", deadAddr(t), 1))
	empty := pool(t, "round_robin")
	slow := pool(t, "round_robin", m("slow-1", hostOf(statusBackend(t, "slow", 200, time.Minute, &hitsSlow)), 1))
	hold := pool(t, "round_robin", m("hold-1", hostOf(statusBackend(t, "hold", 200, time.Minute, &hitsHold)), 1))
	bad := pool(t, "round_robin", m("bad-1", rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 99 Odd\r\nContent-Length: 0\r\n\r\n")
	}), 1))
	reset := pool(t, "round_robin", m("reset-1", rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
	}), 1))
	routes := []Route{
		{PathPrefix: "/web/", Service: ServiceOptions{Name: "web", Pool: web}},
		{PathPrefix: "/flaky/", Service: ServiceOptions{Name: "flaky", Pool: flaky, Attempts: 2}},
		{PathPrefix: "/dead/", Service: ServiceOptions{Name: "dead", Pool: dead, Attempts: 1}},
		{PathPrefix: "/empty/", Service: ServiceOptions{Name: "empty", Pool: empty}},
		{PathPrefix: "/slow/", Service: ServiceOptions{Name: "slow", Pool: slow, Attempts: 1, PerTryTimeout: 50 * time.Millisecond}},
		{PathPrefix: "/hold/", Service: ServiceOptions{Name: "hold", Pool: hold, Attempts: 1}},
		{PathPrefix: "/bad/", Service: ServiceOptions{Name: "bad", Pool: bad, Attempts: 1}},
		{Host: "reset.test", PathPrefix: "/", Service: ServiceOptions{Name: "reset", Pool: reset, Attempts: 1}},
	}
	h := NewHTTPHandler(HTTPOptions{Listener: "pub", Routes: routes, Metrics: mx})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &h1.Server{Handler: h, ConnCounter: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	url := "http://" + ln.Addr().String()
	client := &http.Client{Transport: &http.Transport{}}
	send := func(path string, host ...string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url+path, nil)
		if len(host) > 0 {
			req.Host = host[0]
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	type want struct {
		route string
		code  int
		n     int
	}
	wants := []want{
		{"/web/", 200, 3}, {"/flaky/", 200, 4}, {"/dead/", 502, 1}, {"/empty/", 503, 1},
		{"/slow/", 502, 1}, {"/bad/", 502, 1}, {"reset.test/", 502, 1}, {NoRouteLabel, 404, 2},
	}
	paths := map[string]string{"/web/": "/web/x", "/flaky/": "/flaky/x", "/dead/": "/dead/x", "/empty/": "/empty/x",
		"/slow/": "/slow/x", "/bad/": "/bad/x", NoRouteLabel: "/nowhere"}
	for _, w := range wants {
		for range w.n {
			var code int
			if w.route == "reset.test/" {
				code = send("/x", "reset.test")
			} else {
				code = send(paths[w.route])
			}
			if code != w.code {
				t.Fatalf("%s: want %d, have %d", w.route, w.code, code)
			}
		}
	}
	// A malformed chunked body: the client's fault, 400 on its route.
	if have := rawClient(t, url, "POST /web/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"); !strings.HasPrefix(have, "HTTP/1.1 400 ") {
		t.Fatalf("malformed body: %q", firstLine(have))
	}
	wants = append(wants, want{"/web/", 400, 1})
	// A client that goes away while its request waits on the instance: 499.
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/hold/x", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the held request to reach its instance", func() bool { return hitsHold.Load() == 1 })
	cancel()
	<-gone
	waitFor(t, "the 499 to be counted", func() bool {
		return gathered(t, reg, "sluice_requests_total", "route", "/hold/", "code", "499") == 1
	})
	wants = append(wants, want{"/hold/", 499, 1})

	total := 0
	for _, w := range wants {
		total += w.n
		if have := gathered(t, reg, "sluice_requests_total", "listener", "pub", "route", w.route, "code", strconv.Itoa(w.code)); have != float64(w.n) {
			t.Errorf("requests route %q code %d: want %d, have %v", w.route, w.code, w.n, have)
		}
	}
	if have := gathered(t, reg, "sluice_requests_total", "route", NoRouteLabel, "service", ""); have != 2 {
		t.Errorf("no-route requests with service \"\": want 2, have %v", have)
	}
	if have := gathered(t, reg, "sluice_requests_total"); have != float64(total) {
		t.Errorf("requests in all: want %d, have %v", total, have)
	}
	if have := gathered(t, reg, "sluice_request_duration_seconds"); have != float64(total) {
		t.Errorf("duration samples: want %d, have %v", total, have)
	}
	if hits503.Load() == 0 {
		t.Fatal("round robin never tried the 503 instance")
	}
	if have := gathered(t, reg, "sluice_retries_total", "service", "flaky"); have != float64(hits503.Load()) {
		t.Errorf("retries: want %d (the 503 answers), have %v", hits503.Load(), have)
	}
	for _, tc := range []struct {
		pool *balance.Pool
		id   string
		kind balance.ErrorKind
		n    uint64
	}{
		{flaky, "a-503", balance.ErrorStatus, uint64(hits503.Load())},
		{dead, "dead-1", balance.ErrorConnect, 1},
		{slow, "slow-1", balance.ErrorTimeout, 1},
		{bad, "bad-1", balance.ErrorProtocol, 1},
		{reset, "reset-1", balance.ErrorReset, 1},
		{hold, "hold-1", balance.ErrorReset, 0}, // the client's doing
	} {
		st := statsOf(tc.pool, tc.id)
		for _, k := range balance.ErrorKinds() {
			want := uint64(0)
			if k == tc.kind {
				want = tc.n
			}
			if have := st.Errors(k); have != want {
				t.Errorf("%s: %s errors: want %d, have %d", tc.id, k, want, have)
			}
		}
	}
	for _, k := range balance.ErrorKinds() {
		if n := statsOf(flaky, "b-good").Errors(k) + statsOf(web, "web-1").Errors(k); n != 0 {
			t.Errorf("healthy instances: %d %s errors", n, k)
		}
	}

	// Open connections: the keep-alive client's and an h2c one, then none.
	h2 := h2cClient()
	resp, err := h2.Get(url + "/web/x")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("h2c client spoke %s", resp.Proto)
	}
	if code := send("/web/x"); code != 200 { // the keep-alive client's connection
		t.Fatalf("status %d", code)
	}
	waitFor(t, "two open connections (h1 and h2c)", func() bool {
		return gathered(t, reg, "sluice_open_connections", "listener", "pub", "protocol", "http") == 2
	})
	client.CloseIdleConnections()
	h2.CloseIdleConnections()
	waitFor(t, "open connections to return to 0", func() bool {
		return gathered(t, reg, "sluice_open_connections", "listener", "pub", "protocol", "http") == 0
	})
}

// TestTCPMetrics: open connections are counted while they last, the bytes
// of each direction equal the payload, a dial failure is a connect error
// of its instance and its retry is counted.
func TestTCPMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	mx := metrics.New(reg)
	p := pool(t, "round_robin", m("a-dead", deadAddr(t), 1), m("b-echo", echoServer(t), 1))
	tp := NewTCPProxy(TCPOptions{Listener: "db", Metrics: mx, Service: ServiceOptions{Name: "pg", Pool: p, Attempts: 2}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tp.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { ln.Close(); cancel(); <-done })

	open := func() float64 {
		return gathered(t, reg, "sluice_open_connections", "listener", "db", "protocol", "tcp")
	}
	payload := strings.Repeat("x", 100_000)
	var conns []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	waitFor(t, "two open connections", func() bool { return open() == 2 })
	for _, c := range conns {
		go func() { io.WriteString(c, payload); c.(*net.TCPConn).CloseWrite() }()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || len(b) != len(payload) {
			t.Fatalf("echo: %d bytes, %v", len(b), err)
		}
		c.Close()
	}
	waitFor(t, "open connections to return to 0", func() bool { return open() == 0 })
	for _, dir := range []string{"in", "out"} {
		if have := gathered(t, reg, "sluice_tcp_bytes_total", "listener", "db", "direction", dir); have != float64(2*len(payload)) {
			t.Errorf("bytes %s: want %d, have %v", dir, 2*len(payload), have)
		}
	}
	connectErrs := statsOf(p, "a-dead").Errors(balance.ErrorConnect)
	if connectErrs == 0 {
		t.Fatal("round robin never tried the dead instance")
	}
	if have := gathered(t, reg, "sluice_retries_total", "service", "pg"); have != float64(connectErrs) {
		t.Errorf("retries: want %d (the failed dials), have %v", connectErrs, have)
	}
	for _, k := range balance.ErrorKinds() {
		if n := statsOf(p, "b-echo").Errors(k); n != 0 {
			t.Errorf("echo instance: %d %s errors", n, k)
		}
	}
}
