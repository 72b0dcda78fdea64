package balance

import (
	"net/netip"
)

// Consistent hashing with Maglev (Eisenbud et al., NSDI 2016), weighted.
// The table depends only on the endpoint IDs and weights, so every sluice
// process with the same instance set maps every key the same way; removing
// one of N endpoints moves about 1/N of the keys, and adding it back
// restores them.

// maglevPrimes are the table sizes: the smallest with at least 10 slots
// per endpoint, at most the largest. More slots per endpoint mean a finer
// weight resolution and less disruption on changes, and a slower build.
var maglevPrimes = [...]int{65537, 131071, 262139, 524287}

func maglevSize(n int) int {
	for _, m := range maglevPrimes {
		if m >= 10*n {
			return m
		}
	}
	return maglevPrimes[len(maglevPrimes)-1]
}

// maglev is an immutable lookup table: slot -> endpoint index.
type maglev struct {
	eps   []*Endpoint
	table []int32
}

func newMaglev(eps []*Endpoint) *maglev {
	n := len(eps)
	m := maglevSize(n)
	mg := &maglev{eps: eps, table: make([]int32, m)}
	for i := range mg.table {
		mg.table[i] = -1
	}
	pos := make([]uint64, n)  // next slot in the endpoint's permutation
	skip := make([]uint64, n) // permutation stride, coprime with m (m is prime)
	credit := make([]int, n)
	total := 0
	for i, ep := range eps {
		h := hashString(ep.ID)
		pos[i] = mix64(h^0x9e3779b97f4a7c15) % uint64(m)
		skip[i] = mix64(h^0xc2b2ae3d27d4eb4f)%uint64(m-1) + 1
		total += max(ep.Weight, 1)
	}
	// Each round an endpoint earns its weight in credit and takes one slot
	// per mean weight of credit, so heavier endpoints take more turns and
	// a round places about n slots whatever the weights.
	quantum := max(total/n, 1)
	um := uint64(m)
	for filled := 0; filled < m; {
		for i, ep := range eps {
			credit[i] += max(ep.Weight, 1)
			for credit[i] >= quantum && filled < m {
				credit[i] -= quantum
				for {
					slot := pos[i]
					if pos[i] += skip[i]; pos[i] >= um {
						pos[i] -= um
					}
					if mg.table[slot] < 0 {
						mg.table[slot] = int32(i)
						filled++
						break
					}
				}
			}
		}
	}
	return mg
}

// lookup returns the endpoint for key, walking on past tried endpoints.
func (mg *maglev) lookup(key uint64, tried *Tried) (PickResult, error) {
	m := uint64(len(mg.table))
	slot := key % m
	ep := mg.eps[mg.table[slot]]
	if tried.Len() == 0 || !tried.Has(ep) {
		return picked(ep)
	}
	for k := uint64(1); k < m; k++ {
		if ep := mg.eps[mg.table[(slot+k)%m]]; !tried.Has(ep) {
			return picked(ep)
		}
	}
	return PickResult{}, ErrNoEndpoint
}

// ipHash maps each client address to an endpoint by consistent hashing.
// Requests without a client address fall back to the first untried endpoint
// after a random position.
type ipHash struct {
	mg *maglev
}

var _ Picker = (*ipHash)(nil)

func buildIPHash(eps []*Endpoint, _ *Shared) Picker {
	if len(eps) == 0 {
		return emptyPicker{}
	}
	return &ipHash{mg: newMaglev(eps)}
}

func (p *ipHash) Pick(info PickInfo) (PickResult, error) {
	return p.mg.lookup(hashAddr(info.Client), &info.Tried)
}

// hashAddr hashes an IP address (IPv4 as its IPv4-mapped IPv6 form), without
// allocating. The zero Addr hashes to a constant.
func hashAddr(a netip.Addr) uint64 {
	b := a.As16()
	var hi, lo uint64
	for i := 0; i < 8; i++ {
		hi = hi<<8 | uint64(b[i])
		lo = lo<<8 | uint64(b[8+i])
	}
	return mix64(hi ^ mix64(lo^0x94d049bb133111eb))
}

// hashString is 64-bit FNV-1a, finished with mix64.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}

// mix64 is the splitmix64 finaliser.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
