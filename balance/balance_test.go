package balance

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// realClock is a monotonic nanosecond clock for tests that do not control time.
func realClock() int64 { return int64(time.Since(testEpoch)) + 1 }

var testEpoch = time.Now()

// fakeClock is a clock that tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(1)
	return c
}

func (c *fakeClock) now() int64              { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func testShared(clock func() int64) *Shared { return &Shared{clock: clock} }

func endpoints(weights ...int) []*Endpoint {
	eps := make([]*Endpoint, len(weights))
	for i, w := range weights {
		id := string(rune('a' + i))
		eps[i] = &Endpoint{ID: id, Addr: "127.0.0.1:" + fmt.Sprint(9000+i), Weight: w, Stats: newStats(realClock)}
	}
	return eps
}

func sequence(t *testing.T, p Picker, n int) string {
	t.Helper()
	var b strings.Builder
	for i := 0; i < n; i++ {
		res, err := p.Pick(PickInfo{})
		if err != nil {
			t.Fatalf("pick %d: %v", i, err)
		}
		b.WriteString(res.Endpoint.ID)
		res.Done(nil)
	}
	return b.String()
}

func TestPickSequences(t *testing.T) {
	for _, tc := range []struct {
		strategy string
		weights  []int
		want     string
	}{
		{"round_robin", []int{1, 1, 1}, "abcabcabc"},
		{"round_robin", []int{1, 5, 1}, "abcabcabc"},
		{"weighted_round_robin", []int{1, 1, 3}, "cacbccacbc"},
		{"weighted_round_robin", []int{2, 2, 6}, "cacbccacbc"},
		{"weighted_round_robin", []int{5, 1, 1}, "aabacaaaabaca"},
		{"weighted_round_robin", []int{1, 1, 1}, "abcabc"},
		{"weighted_round_robin", []int{4}, "aaa"},
	} {
		t.Run(fmt.Sprint(tc.strategy, tc.weights), func(t *testing.T) {
			build, ok := Lookup(tc.strategy)
			if !ok {
				t.Fatalf("Lookup(%q) failed", tc.strategy)
			}
			have := sequence(t, build(endpoints(tc.weights...), testShared(realClock)), len(tc.want))
			if have != tc.want {
				t.Errorf("want %s, have %s", tc.want, have)
			}
		})
	}
}

// TestSmoothRatioLargePool checks the EDF path (used above smoothBudget):
// exact ratios per cycle and no endpoint picked twice in a row when its
// share is below one half.
func TestSmoothRatioLargePool(t *testing.T) {
	weights := make([]int, 3000)
	for i := range weights {
		weights[i] = 1 + i%3
	}
	eps := endpoints(weights...)
	for i, ep := range eps {
		ep.ID = fmt.Sprintf("ep%05d", i)
	}
	p := buildWeightedRoundRobin(eps, testShared(realClock)).(*weightedRoundRobin)
	counts := map[string]int{}
	prev := ""
	for range len(p.schedule) {
		res, _ := p.Pick(PickInfo{})
		if res.Endpoint.ID == prev {
			t.Fatalf("endpoint %s picked twice in a row", prev)
		}
		prev = res.Endpoint.ID
		counts[res.Endpoint.ID]++
	}
	for i, ep := range eps {
		if have, want := counts[ep.ID], weights[i]; have != want {
			t.Fatalf("endpoint %s: want %d picks per cycle, have %d", ep.ID, want, have)
		}
	}
}

func TestScaledWeightsCapSchedule(t *testing.T) {
	eps := endpoints(10000, 10000, 1, 9999, 5000, 10000, 10000, 10000, 10000, 10000)
	w := scaledWeights(eps)
	total := 0
	for i, v := range w {
		if v < 1 {
			t.Fatalf("weight %d scaled below 1", i)
		}
		total += v
	}
	if total > maxSchedule {
		t.Fatalf("want total <= %d, have %d", maxSchedule, total)
	}
}

func TestPickSkipsTried(t *testing.T) {
	for _, strategy := range Implemented() {
		t.Run(strategy, func(t *testing.T) {
			build, _ := Lookup(strategy)
			eps := endpoints(1, 2, 3)
			p := build(eps, testShared(realClock))
			for i := 0; i < 20; i++ {
				var info PickInfo
				info.Tried.Add(eps[0])
				info.Tried.Add(eps[2])
				res, err := p.Pick(info)
				if err != nil || res.Endpoint != eps[1] {
					t.Fatalf("want b, have %v, %v", res.Endpoint, err)
				}
				res.Done(nil)
			}
			var info PickInfo
			for _, ep := range eps {
				info.Tried.Add(ep)
			}
			if _, err := p.Pick(info); err != ErrNoEndpoint {
				t.Fatalf("all tried: want ErrNoEndpoint, have %v", err)
			}
			if _, err := build(nil, testShared(realClock)).Pick(PickInfo{}); err != ErrNoEndpoint {
				t.Fatalf("empty: want ErrNoEndpoint, have %v", err)
			}
		})
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	for _, strategy := range Implemented() {
		build, _ := Lookup(strategy)
		p := build(endpoints(1, 2, 3), testShared(realClock))
		allocs := testing.AllocsPerRun(1000, func() {
			res, err := p.Pick(PickInfo{})
			if err == nil {
				res.Done(nil)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: want 0 allocs/pick, have %v", strategy, allocs)
		}
	}
}

func TestDoneCounts(t *testing.T) {
	eps := endpoints(1)
	p := buildRoundRobin(eps, testShared(realClock))
	r1, _ := p.Pick(PickInfo{})
	r2, _ := p.Pick(PickInfo{})
	if have := eps[0].Stats.Inflight(); have != 2 {
		t.Fatalf("want inflight 2, have %d", have)
	}
	r1.Done(nil)
	r2.Done(fmt.Errorf("boom"))
	s := eps[0].Stats
	if s.Inflight() != 0 || s.Requests() != 2 || s.Failures() != 1 {
		t.Fatalf("want inflight 0 requests 2 failures 1, have %d %d %d", s.Inflight(), s.Requests(), s.Failures())
	}
}

// runPool starts a pool owner and stops it when the test ends.
func runPool(t *testing.T, strategy string) *Pool {
	t.Helper()
	build, ok := Lookup(strategy)
	if !ok {
		t.Fatalf("unknown strategy %q", strategy)
	}
	p := NewPool(PoolOptions{Service: "web", Strategy: strategy, Builder: build})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// setMembers applies members and waits until the owner has published them.
func setMembers(t *testing.T, p *Pool, index uint64, ms ...Member) *Snapshot {
	t.Helper()
	if err := p.SetMembers(context.Background(), index, ms); err != nil {
		t.Fatal(err)
	}
	return refresh(t, p)
}

func member(id string, weight int, consul Health) Member {
	return Member{ID: id, Addr: "127.0.0.1:1", Weight: weight, Consul: consul}
}

func TestPoolEligibility(t *testing.T) {
	p := runPool(t, "round_robin")
	if s := p.Load(); s.Synced {
		t.Fatal("new pool must not be synced")
	}
	snap := setMembers(t, p, 7,
		member("d", 1, HealthMaintenance),
		member("a", 1, HealthPassing),
		member("c", 1, HealthCritical),
		member("b", 1, HealthWarning),
	)
	if !snap.Synced || snap.ConsulIndex != 7 {
		t.Fatalf("want synced at index 7, have %v %d", snap.Synced, snap.ConsulIndex)
	}
	var ids, eligible []string
	for _, m := range snap.Members {
		ids = append(ids, m.ID)
	}
	for _, ep := range snap.Eligible {
		eligible = append(eligible, ep.ID)
	}
	if have, want := strings.Join(ids, ","), "a,b,c,d"; have != want {
		t.Errorf("members: want %s, have %s", want, have)
	}
	if have, want := strings.Join(eligible, ","), "a,b"; have != want {
		t.Errorf("eligible: want %s, have %s", want, have)
	}
	if have := sequence(t, snap.Picker, 4); have != "abab" {
		t.Errorf("picks: want abab, have %s", have)
	}
}

func TestPoolCarriesStateAcrossUpdates(t *testing.T) {
	p := runPool(t, "weighted_round_robin")
	ms := []Member{member("a", 1, HealthPassing), member("b", 1, HealthPassing), member("c", 3, HealthPassing)}
	snap := setMembers(t, p, 1, ms...)
	first := sequence(t, snap.Picker, 2)
	held, _ := snap.Picker.Pick(PickInfo{}) // stays in flight across the update
	statsC := snap.Eligible[2].Stats

	// An update that changes nothing continues the same sequence.
	snap = setMembers(t, p, 2, ms...)
	rest := sequence(t, snap.Picker, 7)
	if have, want := first+held.Endpoint.ID+rest, "cacbccacbc"; have != want {
		t.Errorf("want %s, have %s", want, have)
	}
	if snap.Eligible[2].Stats != statsC || statsC.Inflight() != 1 {
		t.Errorf("stats of c not carried: same=%v inflight=%d", snap.Eligible[2].Stats == statsC, statsC.Inflight())
	}
	held.Done(nil)

	// A removed and re-added member starts with fresh stats.
	setMembers(t, p, 3, ms[:2]...)
	snap = setMembers(t, p, 4, ms...)
	if snap.Eligible[2].Stats == statsC {
		t.Error("re-added member kept the stats of its earlier life")
	}
}

func TestPoolErrorKeepsMembers(t *testing.T) {
	p := runPool(t, "round_robin")
	setMembers(t, p, 5, member("a", 1, HealthPassing))
	before := p.Load().Version
	if err := p.SetError(context.Background(), fmt.Errorf("connection refused")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Load().Version == before && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	snap := p.Load()
	if snap.ConsulError != "connection refused" || len(snap.Eligible) != 1 || snap.ConsulIndex != 5 {
		t.Fatalf("want last good set with error, have err=%q eligible=%d index=%d", snap.ConsulError, len(snap.Eligible), snap.ConsulIndex)
	}
	snap = setMembers(t, p, 6, member("a", 1, HealthPassing))
	if snap.ConsulError != "" {
		t.Fatalf("error not cleared: %q", snap.ConsulError)
	}
}

// TestConcurrentPicksDuringRebuilds runs pickers on several goroutines while
// the owner publishes new member sets; -race checks the contract.
func TestConcurrentPicksDuringRebuilds(t *testing.T) {
	for _, strategy := range Implemented() {
		t.Run(strategy, func(t *testing.T) {
			p := runPool(t, strategy)
			setMembers(t, p, 1, member("a", 1, HealthPassing), member("b", 2, HealthPassing))
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						res, err := p.Load().Picker.Pick(PickInfo{})
						if err == nil {
							res.Done(nil)
						}
						runtime.Gosched()
					}
				}()
			}
			for i := 0; i < 60; i++ {
				ms := []Member{member("a", 1+i%3, HealthPassing), member("b", 2, HealthPassing)}
				if i%2 == 0 {
					ms = append(ms, member("c", 3, HealthPassing))
				}
				setMembers(t, p, uint64(i+2), ms...)
			}
			close(stop)
			wg.Wait()
			for _, m := range p.Load().Members {
				if m.Stats.Inflight() != 0 {
					t.Errorf("%s: inflight %d after all picks done", m.ID, m.Stats.Inflight())
				}
			}
		})
	}
}

func BenchmarkPick(b *testing.B) {
	for _, strategy := range Implemented() {
		for _, n := range []int{3, 100, 10000} {
			weights := make([]int, n)
			for i := range weights {
				weights[i] = 1 + i%5
			}
			build, _ := Lookup(strategy)
			p := build(endpoints(weights...), testShared(realClock))
			b.Run(fmt.Sprintf("%s/%d", strategy, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					res, err := p.Pick(PickInfo{})
					if err == nil {
						res.Done(nil)
					}
				}
			})
		}
	}
}

func BenchmarkBuild(b *testing.B) {
	for _, strategy := range Implemented() {
		weights := make([]int, 10000)
		for i := range weights {
			weights[i] = 1 + i%5
		}
		eps := endpoints(weights...)
		build, _ := Lookup(strategy)
		b.Run(fmt.Sprintf("%s/10000", strategy), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				build(eps, testShared(realClock))
			}
		})
	}
}
