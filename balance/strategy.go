package balance

import (
	"container/heap"
	"fmt"
	"slices"
	"sync/atomic"
)

// Shared is the per-service state strategies carry across rebuilds, such as
// the round-robin position, and the pool's clock. The pool owns one per
// service and hands the same value to every Build.
type Shared struct {
	seq   atomic.Uint64
	clock func() int64 // monotonic nanoseconds; never 0 after the first call
	// builds counts the pool's publications: a snapshot of several tiers
	// calls Build once per tier with the same count. Only the pool owner,
	// on which Build runs, reads and writes it.
	builds uint64
}

// next returns the next position of the service's rotation.
func (s *Shared) next() uint64 { return s.seq.Add(1) - 1 }

// Builder makes a Picker over the eligible endpoints of one snapshot
// (sorted by ID, possibly empty). Build runs on the pool owner goroutine;
// the Picker it returns must be immutable and safe for concurrent use.
type Builder func(eps []*Endpoint, shared *Shared) Picker

// strategies maps HCL names to builders; see README "Strategies".
func strategies() map[string]Builder {
	return map[string]Builder{
		"round_robin":          buildRoundRobin,
		"weighted_round_robin": buildWeightedRoundRobin,
		"least_connections":    buildLeastConnections,
		"p2c":                  buildP2C,
		"random":               buildRandom,
		"ip_hash":              buildIPHash,
		"ewma":                 buildEWMA,
	}
}

// Lookup returns the Builder of a strategy name as written in HCL.
func Lookup(name string) (Builder, bool) {
	b, ok := strategies()[name]
	return b, ok
}

// Implemented lists the strategy names Lookup knows, sorted.
func Implemented() []string {
	names := make([]string, 0, 7)
	for name := range strategies() {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// NewBuilder returns the Builder of a service: its strategy, wrapped in
// session affinity when sticky is non-nil.
func NewBuilder(service, strategy string, sticky *StickyOptions) (Builder, error) {
	b, ok := Lookup(strategy)
	if !ok {
		return nil, fmt.Errorf("unknown strategy %q", strategy)
	}
	if sticky == nil {
		return b, nil
	}
	switch sticky.Mode {
	case StickyCookie:
		if len(sticky.Secret) == 0 || sticky.CookieName == "" {
			return nil, fmt.Errorf("sticky cookie needs a name and a secret")
		}
	case StickySourceIP, StickyHeader:
	default:
		return nil, fmt.Errorf("unknown sticky mode %q", sticky.Mode)
	}
	sb := &stickyBuilder{inner: b, opts: *sticky, service: service, cookies: map[string]stickyCookie{}}
	return sb.build, nil
}

// emptyPicker answers every pick with ErrNoEndpoint.
type emptyPicker struct{}

func (emptyPicker) Pick(PickInfo) (PickResult, error) { return PickResult{}, ErrNoEndpoint }

// roundRobin gives each eligible endpoint a turn, ignoring weights.
type roundRobin struct {
	eps    []*Endpoint
	shared *Shared
}

var _ Picker = (*roundRobin)(nil)

func buildRoundRobin(eps []*Endpoint, shared *Shared) Picker {
	if len(eps) == 0 {
		return emptyPicker{}
	}
	return &roundRobin{eps: eps, shared: shared}
}

func (p *roundRobin) Pick(info PickInfo) (PickResult, error) {
	n := uint64(len(p.eps))
	start := p.shared.next()
	for i := uint64(0); i < n; i++ {
		ep := p.eps[(start+i)%n]
		if !info.Tried.Has(ep) {
			return picked(ep)
		}
	}
	return PickResult{}, ErrNoEndpoint
}

// maxSchedule bounds the length of a weighted round-robin schedule. When the
// sum of weights (after dividing by their GCD) exceeds it, weights are scaled
// down proportionally (each stays >= 1), which approximates the ratios of
// very large pools with very uneven weights.
const maxSchedule = 1 << 16

// smoothBudget bounds the work (schedule length x endpoints) of building the
// exact nginx smooth sequence; above it the schedule is built by EDF with a
// heap, which has the same ratios and is interleaved but may order ties
// differently.
const smoothBudget = 1 << 22

// weightedRoundRobin walks a precomputed smooth schedule with one atomic
// counter: weights 1,1,3 yield c a c b c, repeated.
type weightedRoundRobin struct {
	eps      []*Endpoint
	schedule []int32 // indexes into eps
	shared   *Shared
}

var _ Picker = (*weightedRoundRobin)(nil)

func buildWeightedRoundRobin(eps []*Endpoint, shared *Shared) Picker {
	if len(eps) == 0 {
		return emptyPicker{}
	}
	weights := scaledWeights(eps)
	total := 0
	uniform := true
	for _, w := range weights {
		total += w
		uniform = uniform && w == weights[0]
	}
	if uniform {
		return &roundRobin{eps: eps, shared: shared}
	}
	var schedule []int32
	if total*len(eps) <= smoothBudget {
		schedule = smoothSchedule(weights, total)
	} else {
		schedule = edfSchedule(weights, total)
	}
	return &weightedRoundRobin{eps: eps, schedule: schedule, shared: shared}
}

func (p *weightedRoundRobin) Pick(info PickInfo) (PickResult, error) {
	n := uint64(len(p.schedule))
	start := p.shared.next()
	if info.Tried.Len() == 0 {
		return picked(p.eps[p.schedule[start%n]])
	}
	for i := uint64(0); i < n; i++ {
		ep := p.eps[p.schedule[(start+i)%n]]
		if !info.Tried.Has(ep) {
			return picked(ep)
		}
	}
	return PickResult{}, ErrNoEndpoint
}

// scaledWeights returns the endpoint weights divided by their GCD and, when
// their sum exceeds maxSchedule, scaled down proportionally (minimum 1).
func scaledWeights(eps []*Endpoint) []int {
	weights := make([]int, len(eps))
	g := 0
	for i, ep := range eps {
		w := max(ep.Weight, 1)
		weights[i] = w
		g = gcd(g, w)
	}
	total := 0
	for i := range weights {
		weights[i] /= g
		total += weights[i]
	}
	if total > maxSchedule {
		scale := float64(maxSchedule-len(weights)) / float64(total)
		for i, w := range weights {
			weights[i] = max(1, int(float64(w)*scale))
		}
	}
	return weights
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// smoothSchedule is nginx's smooth weighted round robin run for one full
// cycle: each step every current weight grows by its weight, the largest
// (first on ties) is chosen and loses the total.
func smoothSchedule(weights []int, total int) []int32 {
	current := make([]int, len(weights))
	schedule := make([]int32, total)
	for step := range schedule {
		best := 0
		for i, w := range weights {
			current[i] += w
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		schedule[step] = int32(best)
	}
	return schedule
}

// edfSchedule orders one cycle by earliest deadline: the k-th turn of an
// endpoint with weight w is due at (k + 1/2) / w, ties by index.
func edfSchedule(weights []int, total int) []int32 {
	h := make(edfHeap, len(weights))
	for i, w := range weights {
		h[i] = edfEntry{due: 0.5 / float64(w), idx: int32(i)}
	}
	heap.Init(&h)
	schedule := make([]int32, total)
	for step := range schedule {
		e := &h[0]
		schedule[step] = e.idx
		e.due += 1 / float64(weights[e.idx])
		heap.Fix(&h, 0)
	}
	return schedule
}

type edfEntry struct {
	due float64
	idx int32
}

type edfHeap []edfEntry

func (h edfHeap) Len() int { return len(h) }
func (h edfHeap) Less(i, j int) bool {
	if h[i].due != h[j].due {
		return h[i].due < h[j].due
	}
	return h[i].idx < h[j].idx
}
func (h edfHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *edfHeap) Push(x any)   { *h = append(*h, x.(edfEntry)) }
func (h *edfHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
