package balance

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// share counts picks per endpoint ID over n picks, releasing each at once.
func share(t *testing.T, p Picker, n int, info func(i int) PickInfo) map[string]float64 {
	t.Helper()
	counts := map[string]float64{}
	for i := 0; i < n; i++ {
		res, err := p.Pick(info(i))
		if err != nil {
			t.Fatal(err)
		}
		counts[res.Endpoint.ID]++
		res.Done(nil)
	}
	for k := range counts {
		counts[k] /= float64(n)
	}
	return counts
}

func noInfo(int) PickInfo { return PickInfo{} }

// clocked makes eps read time from clock, as a pool's endpoints read the pool's.
func clocked(clock *fakeClock, eps []*Endpoint) []*Endpoint {
	for _, ep := range eps {
		ep.Stats.clock = clock.now
	}
	return eps
}

// clientAddr returns the i-th distinct loopback client address.
func clientAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, byte(i >> 16), byte(i >> 8), byte(i)})
}

func assertShares(t *testing.T, have map[string]float64, want map[string]float64, tolerance float64) {
	t.Helper()
	for id, w := range want {
		if math.Abs(have[id]-w) > tolerance {
			t.Errorf("endpoint %s: want share %.3f ±%.3f, have %.3f (all: %v)", id, w, tolerance, have[id], have)
		}
	}
}

// TestRandomDistribution: weighted random within ±1.5 percentage points
// over 100,000 picks.
func TestRandomDistribution(t *testing.T) {
	p := buildRandom(endpoints(1, 2, 3, 4), testShared(realClock))
	have := share(t, p, 100000, noInfo)
	assertShares(t, have, map[string]float64{"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}, 0.015)
}

// TestIdleTiesSpread: with nothing in flight, the load-aware strategies
// break ties at random, so equal endpoints share evenly (±5 points).
func TestIdleTiesSpread(t *testing.T) {
	for _, strategy := range []string{"least_connections", "p2c", "ewma"} {
		t.Run(strategy, func(t *testing.T) {
			// A still clock gives every response the same time, so ewma
			// costs tie too.
			clock := newFakeClock()
			build, _ := Lookup(strategy)
			have := share(t, build(clocked(clock, endpoints(1, 1, 1)), testShared(clock.now)), 30000, noInfo)
			third := 1.0 / 3
			assertShares(t, have, map[string]float64{"a": third, "b": third, "c": third}, 0.05)
		})
	}
}

// heldShare picks n times keeping the last `window` picks in flight, the
// way concurrent requests overlap, and returns each endpoint's share.
func heldShare(t *testing.T, p Picker, n, window int) map[string]float64 {
	t.Helper()
	held := make([]PickResult, 0, window)
	counts := map[string]float64{}
	for i := 0; i < n; i++ {
		if len(held) == window {
			held[0].Done(nil)
			held = held[1:]
		}
		res, err := p.Pick(PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		counts[res.Endpoint.ID]++
		held = append(held, res)
	}
	for _, r := range held {
		r.Done(nil)
	}
	for k := range counts {
		counts[k] /= float64(n)
	}
	return counts
}

// TestLoadAwareFollowWeights: with requests overlapping, least_connections
// and p2c give each endpoint a share of the load near its weight share
// (least_connections ±5 points, p2c ±10: two random choices are coarser).
func TestLoadAwareFollowWeights(t *testing.T) {
	for _, tc := range []struct {
		strategy  string
		tolerance float64
	}{{"least_connections", 0.05}, {"p2c", 0.10}} {
		t.Run(tc.strategy, func(t *testing.T) {
			build, _ := Lookup(tc.strategy)
			have := heldShare(t, build(endpoints(1, 1, 3), testShared(realClock)), 20000, 50)
			assertShares(t, have, map[string]float64{"a": 0.2, "b": 0.2, "c": 0.6}, tc.tolerance)
		})
	}
}

func TestLeastConnectionsPicksLeastLoaded(t *testing.T) {
	eps := endpoints(1, 1, 2)
	p := buildLeastConnections(eps, testShared(realClock))
	// Load a with 3 and b with 1 in flight; c (weight 2) with 2.
	hold := func(ep *Endpoint, n int) {
		for i := 0; i < n; i++ {
			ep.Stats.inflight.Add(1)
		}
	}
	hold(eps[0], 3)
	hold(eps[1], 1)
	hold(eps[2], 2)
	// Loads per weight: a 3, b 1, c 1: the tie b/c is broken at random.
	seen := map[string]int{}
	for i := 0; i < 200; i++ {
		res, _ := p.Pick(PickInfo{})
		seen[res.Endpoint.ID]++
		res.Done(nil)
	}
	if seen["a"] != 0 || seen["b"] < 50 || seen["c"] < 50 {
		t.Fatalf("want only b and c, both often, have %v", seen)
	}
}

// TestLeastConnectionsConcurrent runs picks from many goroutines that each
// hold their pick for a while: in-flight counts stay balanced and return to
// zero.
func TestLeastConnectionsConcurrent(t *testing.T) {
	eps := endpoints(1, 1, 1, 1)
	p := buildLeastConnections(eps, testShared(realClock))
	var wg sync.WaitGroup
	var mu sync.Mutex
	maxSpread := int64(0)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				res, err := p.Pick(PickInfo{})
				if err != nil {
					t.Error(err)
					return
				}
				lo, hi := int64(math.MaxInt64), int64(0)
				for _, ep := range eps {
					v := ep.Stats.Inflight()
					lo, hi = min(lo, v), max(hi, v)
				}
				mu.Lock()
				maxSpread = max(maxSpread, hi-lo)
				mu.Unlock()
				res.Done(nil)
			}
		}()
	}
	wg.Wait()
	for _, ep := range eps {
		if ep.Stats.Inflight() != 0 {
			t.Errorf("%s: inflight %d after all done", ep.ID, ep.Stats.Inflight())
		}
	}
	// 16 goroutines over 4 endpoints: round-robin-like spreading keeps the
	// spread well under the number of goroutines.
	if maxSpread >= 16 {
		t.Errorf("in-flight spread reached %d: picks did not follow load", maxSpread)
	}
}

func TestEWMAPrefersFastAndRetriesSlow(t *testing.T) {
	clock := newFakeClock()
	eps := clocked(clock, endpoints(1, 1))
	p := buildEWMA(eps, testShared(clock.now))
	// Teach it: a answers in 1 ms, b in 20 ms.
	for i := 0; i < 20; i++ {
		for _, want := range []*Endpoint{eps[0], eps[1]} {
			var info PickInfo
			for _, other := range eps {
				if other != want {
					info.Tried.Add(other)
				}
			}
			res, _ := p.Pick(info)
			d := time.Millisecond
			if want == eps[1] {
				d = 20 * time.Millisecond
			}
			clock.advance(d)
			res.Done(nil)
		}
	}
	have := share(t, p, 1000, noInfo)
	if have["a"] < 0.95 {
		t.Fatalf("want the fast endpoint to get >95%% of idle picks, have %v", have)
	}
	// The slow one's average decays while it is not picked, and the fast
	// one keeps answering in 1 ms: the slow one is tried again.
	clock.advance(time.Minute)
	if cost := eps[1].Stats.cost(clock.now(), 1); cost > float64(time.Millisecond) {
		t.Fatalf("slow endpoint's cost did not decay: %v ns", cost)
	}
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("slow endpoint starved after its average decayed")
		}
		res, _ := p.Pick(PickInfo{})
		clock.advance(time.Millisecond)
		res.Done(nil)
		if res.Endpoint == eps[1] {
			break
		}
	}
}

func TestEWMANewInstanceNotFlooded(t *testing.T) {
	clock := newFakeClock()
	eps := clocked(clock, endpoints(1, 1))
	p := buildEWMA(eps, testShared(clock.now))
	// a is known at 5 ms; b is new with one request in flight: b costs the
	// penalty until it answers.
	eps[0].Stats.observe(clock.now(), int64(5*time.Millisecond))
	eps[1].Stats.inflight.Add(1)
	for i := 0; i < 100; i++ {
		res, _ := p.Pick(PickInfo{})
		if res.Endpoint != eps[0] {
			t.Fatalf("pick %d went to the new endpoint with a request outstanding", i)
		}
		res.Done(nil)
	}
}

func TestIPHashDistributionAndDeterminism(t *testing.T) {
	const keys = 10000
	p := buildIPHash(endpoints(1, 1, 1, 1, 1, 1, 1, 1, 1, 2), testShared(realClock))
	have := share(t, p, keys, func(i int) PickInfo { return PickInfo{Client: clientAddr(i)} })
	want := map[string]float64{}
	for _, id := range "abcdefghi" {
		want[string(id)] = 1.0 / 11
	}
	want["j"] = 2.0 / 11
	assertShares(t, have, want, 0.02)

	// Another process (fresh endpoints, same IDs and weights) maps every
	// client the same way.
	q := buildIPHash(endpoints(1, 1, 1, 1, 1, 1, 1, 1, 1, 2), testShared(realClock))
	for i := 0; i < keys; i++ {
		a, _ := p.Pick(PickInfo{Client: clientAddr(i)})
		b, _ := q.Pick(PickInfo{Client: clientAddr(i)})
		if a.Endpoint.ID != b.Endpoint.ID {
			t.Fatalf("client %v: %s in one process, %s in the other", clientAddr(i), a.Endpoint.ID, b.Endpoint.ID)
		}
	}
}

// TestIPHashRemapBound: removing 1 of 10 endpoints moves at most 15% of
// 10,000 keys in all, keys of survivors included, and adding it back
// restores every key.
func TestIPHashRemapBound(t *testing.T) {
	const keys = 10000
	all := endpoints(1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
	assign := func(eps []*Endpoint) []string {
		p := buildIPHash(eps, testShared(realClock))
		out := make([]string, keys)
		for i := range out {
			res, _ := p.Pick(PickInfo{Client: clientAddr(i)})
			out[i] = res.Endpoint.ID
		}
		return out
	}
	before := assign(all)
	for removed := range all {
		rest := append(append([]*Endpoint{}, all[:removed]...), all[removed+1:]...)
		after := assign(rest)
		moved, survivorsMoved := 0, 0
		for i := range before {
			if before[i] != after[i] {
				moved++
				if before[i] != all[removed].ID {
					survivorsMoved++
				}
			}
		}
		if moved > keys*15/100 {
			t.Errorf("removing %s moved %d of %d keys (> 15%%)", all[removed].ID, moved, keys)
		}
		t.Logf("removing %s: %d keys moved, %d of them from surviving endpoints", all[removed].ID, moved, survivorsMoved)
		back := assign(all)
		for i := range before {
			if back[i] != before[i] {
				t.Fatalf("adding %s back did not restore key %d", all[removed].ID, i)
			}
		}
	}
}

func stickyBuild(t *testing.T, strategy string, opts StickyOptions) Builder {
	t.Helper()
	b, err := NewBuilder("web", strategy, &opts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func cookieOpts(secret string) StickyOptions {
	return StickyOptions{Mode: StickyCookie, CookieName: "sluice_web", TTL: time.Hour, Secret: []byte(secret)}
}

// cookieOf extracts the value from a Set-Cookie header.
func cookieOf(t *testing.T, res PickResult) string {
	t.Helper()
	if len(res.SetCookie) != 1 {
		t.Fatalf("want one Set-Cookie, have %v", res.SetCookie)
	}
	v, _, _ := strings.Cut(strings.TrimPrefix(res.SetCookie[0], "sluice_web="), ";")
	return v
}

func TestStickyCookie(t *testing.T) {
	eps := endpoints(1, 1, 1)
	for i, ep := range eps {
		ep.ID = fmt.Sprintf("web-%d", i+1)
	}
	build := stickyBuild(t, "round_robin", cookieOpts("s3cret"))
	p := build(eps, testShared(realClock))

	first, _ := p.Pick(PickInfo{})
	first.Done(nil)
	cookie := cookieOf(t, first)
	for _, leak := range []string{first.Endpoint.ID, first.Endpoint.Addr} {
		if strings.Contains(first.SetCookie[0], "="+leak) || strings.Contains(cookie, leak) {
			t.Fatalf("cookie reveals %q: %s", leak, first.SetCookie[0])
		}
	}
	if !strings.Contains(first.SetCookie[0], "Max-Age=3600") || !strings.Contains(first.SetCookie[0], "HttpOnly") {
		t.Errorf("cookie attributes: %s", first.SetCookie[0])
	}
	// Round trip: 100 requests stay, without re-setting the cookie.
	for i := 0; i < 100; i++ {
		res, _ := p.Pick(PickInfo{Key: cookie})
		if res.Endpoint.ID != first.Endpoint.ID || res.SetCookie != nil {
			t.Fatalf("request %d: want %s without Set-Cookie, have %s %v", i, first.Endpoint.ID, res.Endpoint.ID, res.SetCookie)
		}
		res.Done(nil)
	}
	// Forged or unknown cookies are ignored: the strategy picks and a new
	// cookie is set.
	for _, forged := range []string{"AAAAAAAAAAAAAAAAAAAAAA", "garbage", cookie[:21] + "x", ""} {
		res, err := p.Pick(PickInfo{Key: forged})
		if err != nil || res.SetCookie == nil {
			t.Fatalf("forged %q: want a pick with a new cookie, have %v %v", forged, res.SetCookie, err)
		}
		res.Done(nil)
	}
	// Another process with the same secret honours the cookie; one with
	// another secret does not.
	fresh := endpoints(1, 1, 1)
	for i, ep := range fresh {
		ep.ID = eps[i].ID
	}
	same := stickyBuild(t, "round_robin", cookieOpts("s3cret"))(fresh, testShared(realClock))
	for i := 0; i < 10; i++ {
		res, _ := same.Pick(PickInfo{Key: cookie})
		if res.Endpoint.ID != first.Endpoint.ID || res.SetCookie != nil {
			t.Fatalf("same secret: want %s, have %s", first.Endpoint.ID, res.Endpoint.ID)
		}
	}
	other := stickyBuild(t, "round_robin", cookieOpts("other"))(eps, testShared(realClock))
	if res, _ := other.Pick(PickInfo{Key: cookie}); res.SetCookie == nil {
		t.Fatal("a cookie signed with another secret was honoured")
	}
}

// TestStickyCookieFailover: when the pinned instance leaves, the same
// request goes elsewhere with a new cookie; when it comes back, the moved
// client stays.
func TestStickyCookieFailover(t *testing.T) {
	eps := endpoints(1, 1, 1)
	build := stickyBuild(t, "round_robin", cookieOpts("k"))
	shared := testShared(realClock)
	p := build(eps, shared)
	res, _ := p.Pick(PickInfo{})
	pinned, cookie := res.Endpoint.ID, cookieOf(t, res)

	var rest []*Endpoint
	for _, ep := range endpoints(1, 1, 1) {
		if ep.ID != pinned {
			rest = append(rest, ep)
		}
	}
	p = build(rest, shared)
	moved, _ := p.Pick(PickInfo{Key: cookie})
	if moved.Endpoint.ID == pinned || moved.SetCookie == nil {
		t.Fatalf("want another instance and a new cookie, have %s %v", moved.Endpoint.ID, moved.SetCookie)
	}
	newCookie := cookieOf(t, moved)

	p = build(endpoints(1, 1, 1), shared) // the pinned one is back
	for i := 0; i < 20; i++ {
		res, _ := p.Pick(PickInfo{Key: newCookie})
		if res.Endpoint.ID != moved.Endpoint.ID || res.SetCookie != nil {
			t.Fatalf("moved client went back: want %s, have %s", moved.Endpoint.ID, res.Endpoint.ID)
		}
	}
	// A retry that already tried the pinned instance re-pins.
	var info PickInfo
	info.Key = newCookie
	info.Tried.Add(&Endpoint{Stats: p.(*sticky).byValue[newCookie].Stats})
	res, _ = p.Pick(info)
	if res.Endpoint.ID == moved.Endpoint.ID || res.SetCookie == nil {
		t.Fatalf("retry: want another instance with a new cookie, have %s", res.Endpoint.ID)
	}
}

func TestStickyHashModes(t *testing.T) {
	eps := endpoints(1, 1, 1, 1)
	src := stickyBuild(t, "round_robin", StickyOptions{Mode: StickySourceIP})(eps, testShared(realClock))
	hdr := stickyBuild(t, "round_robin", StickyOptions{Mode: StickyHeader})(eps, testShared(realClock))
	used := map[string]bool{}
	for i := 0; i < 200; i++ {
		client := clientAddr(i)
		want, _ := src.Pick(PickInfo{Client: client})
		used[want.Endpoint.ID] = true
		for j := 0; j < 5; j++ {
			if res, _ := src.Pick(PickInfo{Client: client}); res.Endpoint != want.Endpoint {
				t.Fatalf("source_ip: client %v moved", client)
			}
		}
		key := fmt.Sprintf("user-%d", i)
		want, _ = hdr.Pick(PickInfo{Key: key})
		for j := 0; j < 5; j++ {
			if res, _ := hdr.Pick(PickInfo{Key: key}); res.Endpoint != want.Endpoint {
				t.Fatalf("header: key %s moved", key)
			}
		}
	}
	if len(used) != 4 {
		t.Errorf("source_ip used %d of 4 endpoints", len(used))
	}
	// No header: the strategy (round robin) decides.
	seq := sequence(t, hdr, 8)
	if seq != "abcdabcd" && seq != "bcdabcda" && seq != "cdabcdab" && seq != "dabcdabc" {
		t.Errorf("absent header: want round robin, have %s", seq)
	}
}

func TestSlowStartRamp(t *testing.T) {
	clock := newFakeClock()
	build, _ := Lookup("weighted_round_robin")
	p := NewPool(PoolOptions{Service: "web", Builder: build, SlowStart: 30 * time.Second, Clock: clock.now})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	weights := func() map[string]int {
		w := map[string]int{}
		for _, ep := range p.Load().Eligible {
			w[ep.ID] = ep.Weight
		}
		return w
	}
	// The first answer is warm: no ramp.
	setMembers(t, p, 1, member("a", 1, HealthPassing), member("b", 2, HealthPassing))
	if w := weights(); w["a"] != 1 || w["b"] != 2 {
		t.Fatalf("first answer must not slow-start: %v", w)
	}
	// c arrives: 10% at once, linear to 100% over 30 s.
	ms := []Member{member("a", 1, HealthPassing), member("b", 2, HealthPassing), member("c", 2, HealthPassing)}
	setMembers(t, p, 2, ms...)
	for _, step := range []struct {
		advance time.Duration
		want    map[string]int
	}{
		{0, map[string]int{"a": 100, "b": 200, "c": 20}},
		{15 * time.Second, map[string]int{"a": 100, "b": 200, "c": 110}},
		{12 * time.Second, map[string]int{"a": 100, "b": 200, "c": 182}},
		{3 * time.Second, map[string]int{"a": 1, "b": 2, "c": 2}},
	} {
		clock.advance(step.advance)
		refresh(t, p)
		if w := weights(); fmt.Sprint(w) != fmt.Sprint(step.want) {
			t.Fatalf("after %v: want %v, have %v", step.advance, step.want, w)
		}
	}
	// Back from critical ramps again; a steady instance does not.
	ms[0].Consul = HealthCritical
	setMembers(t, p, 3, ms...)
	ms[0].Consul = HealthPassing
	setMembers(t, p, 4, ms...)
	if w := weights(); w["a"] != 10 || w["b"] != 200 {
		t.Fatalf("back from critical: want a at 10%%, have %v", w)
	}
}

// BenchmarkPickSticky covers the sticky decorator: a valid cookie, a
// source address, a header value.
func BenchmarkPickSticky(b *testing.B) {
	for _, mode := range StickyModes() {
		for _, n := range []int{3, 100, 10000} {
			weights := make([]int, n)
			for i := range weights {
				weights[i] = 1 + i%5
			}
			eps := endpoints(weights...)
			for i, ep := range eps {
				ep.ID = fmt.Sprintf("web-%05d", i)
			}
			opts := cookieOpts("secret")
			opts.Mode = mode
			build, _ := NewBuilder("web", "weighted_round_robin", &opts)
			p := build(eps, testShared(realClock))
			first, _ := p.Pick(PickInfo{})
			info := PickInfo{Client: netip.MustParseAddr("127.0.0.7"), Key: "user-42"}
			if mode == StickyCookie {
				v, _, _ := strings.Cut(strings.TrimPrefix(first.SetCookie[0], "sluice_web="), ";")
				info.Key = v
			}
			b.Run(fmt.Sprintf("sticky_%s/%d", mode, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					res, err := p.Pick(info)
					if err == nil {
						res.Done(nil)
					}
				}
			})
		}
	}
}

// BenchmarkBuildSticky: building a sticky picker over 10,000 instances,
// first with new instances (one HMAC each), then as a rebuild (cached).
func BenchmarkBuildSticky(b *testing.B) {
	weights := make([]int, 10000)
	for i := range weights {
		weights[i] = 1 + i%5
	}
	eps := endpoints(weights...)
	for i, ep := range eps {
		ep.ID = fmt.Sprintf("web-%05d", i)
	}
	for _, mode := range []StickyMode{StickyCookie, StickySourceIP} {
		opts := cookieOpts("secret")
		opts.Mode = mode
		b.Run("sticky_"+string(mode)+"/new/10000", func(b *testing.B) {
			for b.Loop() {
				build, _ := NewBuilder("web", "weighted_round_robin", &opts)
				build(eps, testShared(realClock))
			}
		})
		build, _ := NewBuilder("web", "weighted_round_robin", &opts)
		build(eps, testShared(realClock))
		b.Run("sticky_"+string(mode)+"/rebuild/10000", func(b *testing.B) {
			for b.Loop() {
				build(eps, testShared(realClock))
			}
		})
	}
}

func TestParseStickyMode(t *testing.T) {
	for _, m := range StickyModes() {
		if have, err := ParseStickyMode(string(m)); err != nil || have != m {
			t.Errorf("ParseStickyMode(%q): have %q %v", m, have, err)
		}
	}
	for _, s := range []string{"", "Cookie", "ip", "source_ip "} {
		if have, err := ParseStickyMode(s); err == nil {
			t.Errorf("ParseStickyMode(%q): want an error, have %q", s, have)
		}
	}
}
