package main

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/admin"
)

// TestDiscoveredRuntimesChurn: 100 tagged services added and removed,
// twice, each getting traffic; afterwards their runtimes, pools, metric
// series and goroutines are gone.
func TestDiscoveredRuntimesChurn(t *testing.T) {
	const n = 100
	f := newFakeDisco()
	addr := backend(t, "b")
	front := freeAddr(t)
	ta := startDiscoApp(t, f, fmt.Sprintf(`
admin {
  address = %q
}
listener "public" {
  address = %q
  discover {}
}
`, freeAddr(t), front))
	ta.pump("the first catalog answer", func() bool { return ta.disco.catalog != nil })
	http.DefaultClient.CloseIdleConnections()
	base := runtime.NumGoroutine()
	for round := range 2 {
		for i := range n {
			f.set(fmt.Sprintf("svc-%03d", i), map[string][]string{addr: {fmt.Sprintf("sluice-route=/s%d/", i)}})
		}
		ta.pump("every route active", func() bool {
			active := 0
			for _, r := range ta.routeStatus.Load().Listeners[0].Routes {
				if r.State == admin.RouteActive {
					active++
				}
			}
			return active == n && len(ta.disco.runtimes) == n
		})
		for _, i := range []int{0, n / 2, n - 1} {
			if code, body := get(t, fmt.Sprintf("http://%s/s%d/x", front, i)); code != 200 || body != "b" {
				t.Fatalf("round %d, /s%d/: have %d %q", round, i, code, body)
			}
		}
		if have := len(*ta.pools.Load()); have != n {
			t.Fatalf("round %d: %d pools, want %d", round, have, n)
		}
		for i := range n {
			f.set(fmt.Sprintf("svc-%03d", i), nil)
		}
		ta.pump("every route gone", func() bool {
			return len(ta.disco.runtimes) == 0 && len(ta.routeStatus.Load().Listeners[0].Routes) == 0
		})
		if have := len(*ta.pools.Load()); have != 0 {
			t.Fatalf("round %d: %d pools left", round, have)
		}
		families, err := ta.registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range families {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if strings.HasPrefix(l.GetValue(), "svc-") {
						t.Fatalf("round %d: series left: %s %v", round, mf.GetName(), m.GetLabel())
					}
				}
			}
		}
	}
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the churn:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
