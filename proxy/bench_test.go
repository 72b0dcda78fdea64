package proxy

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-lb/sluice/proxy/h1"
	"github.com/sluice-lb/sluice/proxy/metrics"
)

// BenchmarkHTTPProxy measures one GET through sluice's HTTP path (h1
// server, router, balancing transport, Upstream) to an httptest backend,
// over a keep-alive client connection. allocs/op counts the whole process:
// the client and the backend included.
func BenchmarkHTTPProxy(b *testing.B) { benchHTTPProxy(b, nil) }

// BenchmarkHTTPProxyMetrics is BenchmarkHTTPProxy with metrics recorded.
func BenchmarkHTTPProxyMetrics(b *testing.B) {
	benchHTTPProxy(b, metrics.New(prometheus.NewRegistry()))
}

func benchHTTPProxy(b *testing.B, mx *metrics.Metrics) {
	be := backend(b, "a")
	p := pool(b, "round_robin", m("a", hostOf(be), 1))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	h := NewHTTPHandler(HTTPOptions{Listener: "bench", Metrics: mx,
		Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "web", Pool: p}}}})
	srv := &h1.Server{Handler: h, ConnCounter: h}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	b.Cleanup(client.CloseIdleConnections)
	url := "http://" + ln.Addr().String() + "/x"
	get := func() {
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	get() // connections open before the clock starts
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		get()
	}
}
