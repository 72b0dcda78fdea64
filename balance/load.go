package balance

import (
	"math"
	"math/rand/v2"
)

// Load-aware and random strategies. Random numbers come from math/rand/v2's
// top-level functions: per-thread generator state, no lock, no allocation.

// leastConnections picks the endpoint with the fewest in-flight requests
// relative to its weight, scanning every endpoint: O(n) per pick. Ties are
// broken uniformly at random.
type leastConnections struct {
	eps []*Endpoint
}

var _ Picker = (*leastConnections)(nil)

func buildLeastConnections(eps []*Endpoint, _ *Shared) Picker {
	if len(eps) == 0 {
		return emptyPicker{}
	}
	return &leastConnections{eps: eps}
}

func (p *leastConnections) Pick(info PickInfo) (PickResult, error) {
	var best *Endpoint
	var bestLoad int64
	ties := uint64(0)
	rng := rand.Uint64() | 1
	for _, ep := range p.eps {
		if info.Tried.Len() > 0 && info.Tried.Has(ep) {
			continue
		}
		load := ep.Stats.inflight.Load()
		if best == nil {
			best, bestLoad, ties = ep, load, 1
			continue
		}
		// load/weight < bestLoad/best.Weight, without division.
		switch a, b := load*int64(best.Weight), bestLoad*int64(ep.Weight); {
		case a < b:
			best, bestLoad, ties = ep, load, 1
		case a == b:
			// Reservoir sampling: the k-th tie replaces the choice with
			// probability 1/k.
			ties++
			rng = xorshift(rng)
			if rng%ties == 0 {
				best, bestLoad = ep, load
			}
		}
	}
	if best == nil {
		return PickResult{}, ErrNoEndpoint
	}
	return picked(best)
}

// xorshift advances a non-zero 64-bit xorshift state.
func xorshift(x uint64) uint64 {
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	return x
}

// p2c samples two distinct endpoints at random and picks the one with
// fewer in-flight requests relative to weight (a random one of the two on
// a tie): O(1) per pick.
type p2c struct {
	eps []*Endpoint
}

var _ Picker = (*p2c)(nil)

func buildP2C(eps []*Endpoint, _ *Shared) Picker {
	if len(eps) == 0 {
		return emptyPicker{}
	}
	return &p2c{eps: eps}
}

func (p *p2c) Pick(info PickInfo) (PickResult, error) {
	a, b, ok := twoUntried(p.eps, &info.Tried)
	if !ok {
		return PickResult{}, ErrNoEndpoint
	}
	if b == nil {
		return picked(a)
	}
	la := a.Stats.inflight.Load() * int64(b.Weight)
	lb := b.Stats.inflight.Load() * int64(a.Weight)
	if lb < la || (lb == la && rand.Uint32()&1 == 0) {
		a = b
	}
	return picked(a)
}

// twoUntried draws two distinct random endpoints not yet tried. b is nil
// when only one is left; ok is false when none is.
func twoUntried(eps []*Endpoint, tried *Tried) (a, b *Endpoint, ok bool) {
	n := len(eps)
	if n == 1 {
		if tried.Has(eps[0]) {
			return nil, nil, false
		}
		return eps[0], nil, true
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	a, b = eps[i], eps[j]
	if tried.Len() == 0 {
		return a, b, true
	}
	if tried.Has(a) {
		a = nil
	}
	if tried.Has(b) {
		b = nil
	}
	if a == nil || b == nil {
		// Rare: fill the gaps with the next untried endpoints after i.
		for k := 1; k <= n && (a == nil || b == nil); k++ {
			ep := eps[(i+k)%n]
			if tried.Has(ep) || ep == a || ep == b {
				continue
			}
			if a == nil {
				a = ep
			} else {
				b = ep
			}
		}
	}
	if a == nil {
		a, b = b, nil
	}
	return a, b, a != nil
}

// weightedRandom picks an endpoint with probability proportional to its
// weight, in O(1) with Vose's alias method.
type weightedRandom struct {
	eps   []*Endpoint
	prob  []float64 // chance to keep column i
	alias []int32   // otherwise take alias[i]
}

var _ Picker = (*weightedRandom)(nil)

func buildRandom(eps []*Endpoint, _ *Shared) Picker {
	n := len(eps)
	if n == 0 {
		return emptyPicker{}
	}
	p := &weightedRandom{eps: eps, prob: make([]float64, n), alias: make([]int32, n)}
	total := 0.0
	for _, ep := range eps {
		total += float64(max(ep.Weight, 1))
	}
	scaled := make([]float64, n)
	small := make([]int32, 0, n)
	large := make([]int32, 0, n)
	for i, ep := range eps {
		scaled[i] = float64(max(ep.Weight, 1)) * float64(n) / total
		if scaled[i] < 1 {
			small = append(small, int32(i))
		} else {
			large = append(large, int32(i))
		}
	}
	for len(small) > 0 && len(large) > 0 {
		s, l := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		p.prob[s], p.alias[s] = scaled[s], l
		scaled[l] += scaled[s] - 1
		if scaled[l] < 1 {
			large = large[:len(large)-1]
			small = append(small, l)
		}
	}
	for _, i := range large {
		p.prob[i], p.alias[i] = 1, i
	}
	for _, i := range small { // float rounding leftovers
		p.prob[i], p.alias[i] = 1, i
	}
	return p
}

func (p *weightedRandom) Pick(info PickInfo) (PickResult, error) {
	for try := 0; try < 4; try++ {
		i := rand.IntN(len(p.eps))
		if rand.Float64() >= p.prob[i] {
			i = int(p.alias[i])
		}
		if ep := p.eps[i]; info.Tried.Len() == 0 || !info.Tried.Has(ep) {
			return picked(ep)
		}
	}
	return firstUntried(p.eps, &info.Tried, rand.IntN(len(p.eps)))
}

// firstUntried picks the first endpoint from position start on that the
// request has not tried.
func firstUntried(eps []*Endpoint, tried *Tried, start int) (PickResult, error) {
	n := len(eps)
	for k := 0; k < n; k++ {
		if ep := eps[(start+k)%n]; !tried.Has(ep) {
			return picked(ep)
		}
	}
	return PickResult{}, ErrNoEndpoint
}

// ewmaTau is the decay time constant of the response-time average: an
// observation's influence (and the peak after a slow response) fades by e
// every 10 s, so an instance that was slow is tried again.
const ewmaTau = 10e9 // ns

// ewmaFailurePenalty is the response time a failed pick counts as (1 s).
const ewmaFailurePenalty = int64(1e9)

// ewmaPenalty is the cost of an instance with requests in flight and no
// response time yet, so a new instance is not flooded before it answers.
const ewmaPenalty = 1e12 // ns

// peakEWMA is Finagle's and Linkerd's latency-aware balancer: power of two
// choices on cost = peak EWMA of response time x (in-flight + 1) / weight.
type peakEWMA struct {
	eps   []*Endpoint
	clock func() int64
}

var _ Picker = (*peakEWMA)(nil)

func buildEWMA(eps []*Endpoint, shared *Shared) Picker {
	if len(eps) == 0 {
		return emptyPicker{}
	}
	return &peakEWMA{eps: eps, clock: shared.clock}
}

func (p *peakEWMA) Pick(info PickInfo) (PickResult, error) {
	a, b, ok := twoUntried(p.eps, &info.Tried)
	if !ok {
		return PickResult{}, ErrNoEndpoint
	}
	now := p.clock()
	if b != nil {
		ca, cb := a.Stats.cost(now, a.Weight), b.Stats.cost(now, b.Weight)
		if cb < ca || (cb == ca && rand.Uint32()&1 == 0) {
			a = b
		}
	}
	res, err := picked(a)
	res.start, res.timed = max(now, 1), true
	return res, err
}

// cost is the decayed peak EWMA times (in-flight + 1), divided by weight.
func (s *Stats) cost(now int64, weight int) float64 {
	inflight := float64(s.inflight.Load())
	e := math.Float64frombits(s.ewma.Load())
	if e == 0 {
		if inflight > 0 {
			return ewmaPenalty * inflight / float64(weight)
		}
		return 0
	}
	if d := now - s.last.Load(); d > 0 {
		e *= decay(d)
	}
	return e * (inflight + 1) / float64(weight)
}

// observe folds a response time into the peak EWMA: a slower response than
// the (decayed) average replaces it at once, a faster one is averaged in
// with a weight that grows with the time since the last observation.
func (s *Stats) observe(now, rtt int64) {
	sample := float64(max(rtt, 1))
	for {
		oldBits := s.ewma.Load()
		old := math.Float64frombits(oldBits)
		w := 0.0
		if old != 0 {
			w = decay(max(now-s.last.Load(), 0))
		}
		next := sample
		if decayed := old * w; sample < decayed {
			next = decayed + (sample-decayed)*(1-w)
		}
		if s.ewma.CompareAndSwap(oldBits, math.Float64bits(next)) {
			s.last.Store(now)
			return
		}
	}
}

// decay returns exp(-d/ewmaTau) for d >= 0 nanoseconds; below 1% of tau
// (100 ms), where requests usually are, a cubic Taylor series that is exact
// to 1e-9 replaces math.Exp.
func decay(d int64) float64 {
	x := float64(d) / ewmaTau
	if x < 0.01 {
		return 1 - x*(1-x*(0.5-x/6))
	}
	return math.Exp(-x)
}

// EWMA reports the current response-time average in nanoseconds, without decay.
func (s *Stats) EWMA() float64 { return math.Float64frombits(s.ewma.Load()) }
