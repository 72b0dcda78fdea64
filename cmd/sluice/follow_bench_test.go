package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
)

// bigAnswer is a /v1/health/service answer of n instances as a Consul
// agent sends it, instance flip's service check warning (-1: none).
func bigAnswer(n, flip int) []byte {
	var b bytes.Buffer
	b.WriteString("[")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		status := "passing"
		if i == flip {
			status = "warning"
		}
		fmt.Fprintf(&b, `{"Node":{"ID":"5d3f1b52-7d52-4d0a-9d53-1b3a3b4e1c11","Node":"bench-node","Address":"127.0.0.1","Datacenter":"dc1","TaggedAddresses":{"lan":"127.0.0.1","lan_ipv4":"127.0.0.1","wan":"127.0.0.1","wan_ipv4":"127.0.0.1"},"Meta":{"consul-network-segment":""},"CreateIndex":13,"ModifyIndex":15},`+
			`"Service":{"ID":"big-%06d","Service":"big","Tags":[],"Address":"127.0.0.1","Meta":null,"Port":%d,"Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false,"Proxy":{"Mode":"","MeshGateway":{},"Expose":{}},"Connect":{},"PeerName":"","CreateIndex":%d,"ModifyIndex":%d},`+
			`"Checks":[{"Node":"bench-node","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"Agent alive and reachable","ServiceID":"","ServiceName":"","ServiceTags":[],"Type":"","Interval":"","Timeout":"","ExposedPort":0,"Definition":{},"CreateIndex":13,"ModifyIndex":13},`+
			`{"Node":"bench-node","CheckID":"check-big-%06d","Name":"Service 'big' check","Status":%q,"Notes":"","Output":"","ServiceID":"big-%06d","ServiceName":"big","ServiceTags":[],"Type":"ttl","Interval":"","Timeout":"","ExposedPort":0,"Definition":{},"CreateIndex":%d,"ModifyIndex":%d}]}`,
			i, 10000+i, 20+i, 20+i, i, status, i, 21+i, 21+i)
	}
	b.WriteString("]")
	return b.Bytes()
}

// BenchmarkFollowBigService measures one Consul answer of a big service
// on its way through sluice: from the moment a fake agent starts writing
// it (one check flipped between passing and warning since the previous
// answer) until the pool has published the snapshot that shows it. The
// chain is the real one: the consul client of a consul block, the
// Watcher, feedPool and the pool's owner. ns/op is that latency; max-ms
// the slowest of the run; *-after-write-ms from the end of the agent's
// write instead (the answer has arrived, or is in the socket).
func BenchmarkFollowBigService(b *testing.B) {
	for _, n := range []int{100, 1000, 5000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			bodies := [][]byte{bigAnswer(n, -1), bigAnswer(n, n/2)}
			answers := make(chan []byte)
			written := make(chan time.Time, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				index, _ := strconv.Atoi(r.URL.Query().Get("index"))
				var body []byte
				select {
				case body = <-answers:
				case <-r.Context().Done():
					return
				}
				w.Header().Set("X-Consul-Index", strconv.Itoa(index+1))
				w.Header().Set("Content-Type", "application/json")
				w.Write(body)
				w.(http.Flusher).Flush()
				written <- time.Now()
			}))
			defer srv.Close()
			health, err := newConsulHealth(config.Consul{Address: srv.Listener.Addr().String(), Stale: true})
			if err != nil {
				b.Fatal(err)
			}
			build, _ := balance.Lookup("round_robin")
			pool := balance.NewPool(balance.PoolOptions{Service: "big", Builder: build})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go pool.Run(ctx)
			w := discovery.NewWatcher(health, discovery.Options{Service: "big", Stale: true, Logger: hclog.NewNullLogger()})
			updates := make(chan dcUpdate)
			go watchDatacenter(ctx, w, "", updates)
			go feedPool(ctx, pool, updates, "", func([]string) {})

			index := uint64(0)
			// next sends an answer and returns the time from the start of its
			// write to its publication, and from the end of the write.
			next := func() (time.Duration, time.Duration) {
				snap := pool.Load()
				index++
				t0 := time.Now()
				answers <- bodies[index%2]
				for snap.ConsulIndex != index {
					select {
					case <-snap.Next():
					case <-time.After(10 * time.Second):
						b.Fatalf("answer %d not published", index)
					}
					snap = pool.Load()
				}
				t1 := time.Now()
				return t1.Sub(t0), t1.Sub(<-written)
			}
			next() // the first answer builds everything
			next()
			b.ReportAllocs()
			b.SetBytes(int64(len(bodies[0])))
			b.ResetTimer()
			lat := make([]time.Duration, 0, b.N)
			after := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				d, a := next()
				lat, after = append(lat, d), append(after, a)
			}
			b.StopTimer()
			slices.Sort(lat)
			slices.Sort(after)
			b.ReportMetric(float64(lat[len(lat)-1])/1e6, "max-ms")
			b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
			b.ReportMetric(float64(after[len(after)/2])/1e6, "p50-after-write-ms")
			b.ReportMetric(float64(after[len(after)-1])/1e6, "max-after-write-ms")
		})
	}
}
