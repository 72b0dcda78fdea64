package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// BenchmarkReaction measures, under a steady load through sluice, the time
// from a Consul write (check critical, or deregistration) until the last
// request that reached the instance. Run it with `make bench-reaction`;
// SLUICE_REACTION_CHANGES sets the number of changes per kind (default 100).
func BenchmarkReaction(b *testing.B) {
	changes := 100
	if v, err := strconv.Atoi(os.Getenv("SLUICE_REACTION_CHANGES")); err == nil && v > 0 {
		changes = v
	}
	consul := startConsul(b)
	names := []string{"a", "b", "c"}
	backends := map[string]*backend{}
	for _, n := range names {
		backends[n] = startBackend(b, n)
		consul.register("web", "web-"+n, backends[n].addr(), nil)
	}
	s := startSluice(b, consul.Addr, "web", `
service "web" {
  strategy = "round_robin"
}
`)
	waitFor(b, 10*time.Second, "three instances", func() bool { return len(s.service("web").Instances) == 3 })

	// Steady load: 4 clients in a closed loop over keep-alive connections.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var errs sync.Map
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				status, _, _, err := s.get("/")
				if err != nil || status != http.StatusOK {
					errs.Store(fmt.Sprint(status, err), true)
				}
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()

	kinds := []string{"critical", "deregister"}
	results := map[string][]time.Duration{}
	b.ResetTimer()
	for range b.N {
		for i := 0; i < changes*len(kinds); i++ {
			kind := kinds[i%len(kinds)]
			name := names[(i/len(kinds))%len(names)]
			be, id := backends[name], "web-"+name

			// The instance is in the pool and getting traffic.
			waitFor(b, 10*time.Second, id+" eligible", func() bool { in, ok := s.instance("web", id); return ok && in.Eligible })
			mark := time.Now().UnixNano()
			waitFor(b, 10*time.Second, id+" traffic", func() bool { return be.last.Load() > mark })

			t0 := time.Now()
			switch kind {
			case "critical":
				consul.setCheck(id, api.HealthCritical)
			case "deregister":
				consul.deregister(id)
			}
			waitFor(b, 10*time.Second, id+" out", func() bool { in, ok := s.instance("web", id); return !ok || !in.Eligible })
			time.Sleep(100 * time.Millisecond) // let requests picked before the change land
			last := time.Unix(0, be.last.Load())
			results[kind] = append(results[kind], max(0, last.Sub(t0)))

			switch kind {
			case "critical":
				consul.setCheck(id, api.HealthPassing)
			case "deregister":
				consul.register("web", id, be.addr(), nil)
			}
		}
	}
	b.StopTimer()
	for _, kind := range kinds {
		d := results[kind]
		slices.Sort(d)
		p50, p99 := percentile(d, 0.50), percentile(d, 0.99)
		b.Logf("reaction after %-10s n=%d p50=%v p99=%v max=%v", kind, len(d), p50, p99, d[len(d)-1])
		b.ReportMetric(float64(p50.Microseconds())/1000, kind+"-p50-ms")
		b.ReportMetric(float64(p99.Microseconds())/1000, kind+"-p99-ms")
	}
	errs.Range(func(k, _ any) bool { b.Logf("client error during the run: %v", k); return true })
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
