package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/metrics"
)

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	for _, tc := range []struct {
		name    string
		q       float64
		buckets []bucket
		want    float64 // NaN: nil
	}{
		{"empty", 0.5, nil, math.NaN()},
		{"no observations", 0.5, []bucket{{0.1, 0}, {inf, 0}}, math.NaN()},
		{"middle of the first bucket", 0.5, []bucket{{0.1, 10}, {1, 10}, {inf, 10}}, 0.05},
		{"within the second bucket", 0.5, []bucket{{0.1, 0}, {1, 10}, {inf, 10}}, 0.55},
		{"p99 in +Inf: the highest bound", 0.99, []bucket{{0.1, 5}, {1, 5}, {inf, 10}}, 1},
		{"exact bound", 0.5, []bucket{{0.1, 5}, {1, 10}, {inf, 10}}, 0.1},
	} {
		have := quantile(tc.q, tc.buckets)
		switch {
		case math.IsNaN(tc.want) && have != nil:
			t.Errorf("%s: want nil, have %v", tc.name, *have)
		case !math.IsNaN(tc.want) && (have == nil || math.Abs(*have-tc.want) > 1e-9):
			t.Errorf("%s: want %v, have %v", tc.name, tc.want, have)
		}
	}
}

func TestWindowRates(t *testing.T) {
	k := routeKey{"public", "/", "web"}
	at := time.Unix(1000, 0)
	s := func(sec int, count, errs float64, fast, total float64) *sample {
		return &sample{at: at.Add(time.Duration(sec) * time.Second), routes: map[routeKey]*routeSample{
			k: {count: count, errors: errs, buckets: []bucket{{0.1, fast}, {math.Inf(1), total}}},
		}, instances: map[instanceKey][2]float64{{"web", "a"}: {count, errs}}}
	}
	w := &window{}
	w.add(s(0, 100, 0, 100, 100))
	if rf := w.routeFrame(k); rf.RPS != nil || rf.P50 != nil {
		t.Fatalf("one sample gives rates: %+v", rf)
	}
	w.add(s(10, 200, 10, 150, 200))
	rf := w.routeFrame(k)
	if rf.RPS == nil || *rf.RPS != 10 || rf.ErrorRate == nil || *rf.ErrorRate != 0.1 || rf.P50 == nil || *rf.P50 != 0.1 {
		t.Fatalf("rates over 10 s: %+v", rf)
	}
	if rps, errs := w.instanceRates(instanceKey{"web", "a"}); *rps != 10 || *errs != 10 {
		t.Fatalf("instance rates: %v %v", *rps, *errs)
	}
	// Samples older than the window are dropped, but one stays as the base.
	for sec := 11; sec <= 100; sec++ {
		w.add(s(sec, float64(200+(sec-10)*5), 10, 150, float64(200+(sec-10)*5)))
	}
	if span := w.span(); span != dashboardWindow {
		t.Fatalf("span %v, want %v", span, dashboardWindow)
	}
	if rf := w.routeFrame(k); *rf.RPS != 5 || *rf.ErrorRate != 0 {
		t.Fatalf("rates over the last minute: rps %v, 5xx %v", *rf.RPS, *rf.ErrorRate)
	}
	// A counter that went down was reset: what came before the reset
	// (59 s at 5/s, all slower than 0.1 s) still counts, and all of the
	// new series (50 fast requests).
	w.add(s(101, 50, 0, 50, 50))
	if rf := w.routeFrame(k); *rf.RPS != (59*5+50)/60.0 || *rf.P50 != 0.1 {
		t.Fatalf("after a reset: rps %v, p50 %v", *rf.RPS, *rf.P50)
	}
}

// TestWindowResets: a series deleted and made anew within the window,
// even one that grows past its old value, loses no increase; a sample
// without the series counts as 0; the errors of a reset series count
// whole.
func TestWindowResets(t *testing.T) {
	k := routeKey{"public", "/", "web"}
	ik := instanceKey{"web", "a"}
	at := time.Unix(1000, 0)
	type point struct {
		sec           int
		count, errors float64 // -1: no series
	}
	w := &window{}
	for _, p := range []point{
		{0, 1000, 10},
		{10, 1100, 10}, // +100
		{20, -1, -1},   // deleted (a reload; the instance left the pool)
		{30, 300, 7},   // made anew: +300, +7 errors
		{40, 1400, 7},  // +1100
		{50, 200, 1},   // reset between two samples: +200, +1
	} {
		smp := &sample{at: at.Add(time.Duration(p.sec) * time.Second), routes: map[routeKey]*routeSample{},
			instances: map[instanceKey][2]float64{}}
		if p.count >= 0 {
			smp.routes[k] = &routeSample{count: p.count, errors: p.errors,
				buckets: []bucket{{0.1, p.count}, {math.Inf(1), p.count}}}
			smp.instances[ik] = [2]float64{p.count, p.errors}
		}
		w.add(smp)
	}
	const n, errs = 100 + 300 + 1100 + 200, 7 + 1
	rf := w.routeFrame(k)
	if *rf.RPS != n/50.0 || *rf.ErrorRate != float64(errs)/n || *rf.P99 > 0.1 {
		t.Errorf("route over resets: rps %v (want %v), 5xx %v (want %v), p99 %v", *rf.RPS, n/50.0, *rf.ErrorRate, float64(errs)/n, *rf.P99)
	}
	if rps, e := w.instanceRates(ik); *rps != n/50.0 || *e != errs {
		t.Errorf("instance over resets: rps %v (want %v), errors %v (want %v)", *rps, n/50.0, *e, errs)
	}
}

// TestDashboardStream: the page and its assets are served with a strict
// CSP; the stream sends frames built from the metrics, the pools and the
// events, pushes an event without waiting for the next tick, and nothing
// runs once the last page has gone.
func TestDashboardStream(t *testing.T) {
	build, _ := balance.Lookup("round_robin")
	events := balance.NewEventLog(0, nil)
	web := balance.NewPool(balance.PoolOptions{Service: "web", Strategy: "round_robin", Builder: build, Events: events})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go web.Run(ctx)
	web.SetMembers(ctx, 7, []balance.Member{
		{ID: "a", Addr: "127.0.0.1:9001", Weight: 1, Consul: balance.HealthPassing},
		{ID: "b", Addr: "127.0.0.1:9002", Weight: 1, Consul: balance.HealthCritical},
	})
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	route := m.Route("public", "/", "web")
	m.Route("public", "none", "") // as an http listener makes it, for unmatched requests
	route.Observe(200, 3*time.Millisecond)
	route.Observe(502, 3*time.Millisecond)
	opts := Options{
		Pools:    func() []*balance.Pool { return []*balance.Pool{web} },
		Status:   func() any { return map[string]int{"generation": 3} },
		Gatherer: reg, Events: events,
		Listeners: func() []Listener {
			return []Listener{{Name: "public", Protocol: "http", Address: "127.0.0.1:1", Routes: []Route{{Route: "/", Service: "web"}}}}
		},
	}
	h := newHub(&opts)
	mux := http.NewServeMux()
	registerDashboard(mux, &opts)
	mux.HandleFunc("GET /test/stream", h.serveStream)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for path, typ := range map[string]string{"/": "text/html", "/ui/dashboard.js": "javascript", "/ui/dashboard.css": "text/css"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), typ) ||
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: %d %q, CSP %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"))
		}
	}

	h.mu.Lock()
	if h.stop != nil {
		t.Fatal("a loop runs with no page connected")
	}
	h.mu.Unlock()
	sctx, sclose := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, srv.URL+"/test/stream", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	defer sclose() // before srv.Close, which waits for the stream to end
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("stream content type %q", ct)
	}
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(nil, 1<<20)
	next := func() Frame {
		t.Helper()
		for lines.Scan() {
			if data, ok := strings.CutPrefix(lines.Text(), "data: "); ok {
				var f Frame
				if err := json.Unmarshal([]byte(data), &f); err != nil {
					t.Fatalf("frame %s: %v", data, err)
				}
				return f
			}
		}
		t.Fatalf("stream ended: %v", lines.Err())
		return Frame{}
	}
	f := next()
	if len(f.Services) != 1 || len(f.Services[0].Instances) != 2 || f.Services[0].ConsulIndex != 7 ||
		f.Services[0].Instances[1].Reason != "consul critical" || f.Services[0].ConsulAge == nil {
		t.Fatalf("services in the first frame: %+v", f.Services)
	}
	if len(f.Listeners) != 1 || len(f.Listeners[0].Routes) != 2 || f.Listeners[0].Routes[0].Route != "/" ||
		f.Listeners[0].Routes[1].Route != "none" {
		t.Fatalf("listeners in the first frame: %+v", f.Listeners)
	}
	if len(f.Events) != 3 {
		t.Fatalf("events in the first frame: %+v", f.Events)
	}
	// Rates once a second sample exists: 2 more requests, one a 5xx.
	route.Observe(200, 3*time.Millisecond)
	route.Observe(503, 3*time.Millisecond)
	for f = next(); f.Window == 0; f = next() {
	}
	if r := f.Listeners[0].Routes[0]; r.RPS == nil || *r.RPS <= 0 || r.ErrorRate == nil || *r.ErrorRate != 0.5 || r.P99 == nil {
		t.Fatalf("route rates: %+v", r)
	}
	// An event is pushed with the next frame.
	events.Add(balance.Event{Kind: balance.EventReload, Detail: "succeeded: generation 4"})
	for f = next(); f.Events[len(f.Events)-1].Kind != balance.EventReload; f = next() {
	}

	sclose()
	resp.Body.Close()
	stopped := make(chan struct{})
	go func() { h.running.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the sampling loop still runs after the last page left")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stop != nil || len(h.subs) != 0 {
		t.Fatalf("hub not idle: %d subscribers", len(h.subs))
	}
}
