package balance

// buildTiered makes the picker of a snapshot whose eligible endpoints eps
// (sorted by ID) belong to tiers (tiers[i] is the tier of eps[i]; see
// Tier): one picker of build per tier, tried in tier order. With a single
// tier it is that tier's picker itself.
func buildTiered(build Builder, eps []*Endpoint, tiers []int, shared *Shared) Picker {
	lowest, single := 0, true
	for i, t := range tiers {
		if i == 0 {
			lowest = t
		} else if t != lowest {
			single = false
		}
	}
	if single {
		return build(eps, shared)
	}
	var order []int // distinct tiers, ascending
	for _, t := range tiers {
		i := 0
		for i < len(order) && order[i] < t {
			i++
		}
		if i == len(order) || order[i] != t {
			order = append(order, 0)
			copy(order[i+1:], order[i:])
			order[i] = t
		}
	}
	tp := &tiered{levels: make([]tierLevel, len(order))}
	for li, t := range order {
		var sub []*Endpoint
		for i, ep := range eps {
			if tiers[i] == t {
				sub = append(sub, ep)
			}
		}
		tp.levels[li] = tierLevel{eps: sub, picker: build(sub, shared)}
	}
	return tp
}

// tiered picks from its first level; a request that already tried every
// endpoint of a level (a retry), or that level's picker refusing, moves
// on to the next. Like every Picker it is immutable and Pick neither
// locks nor allocates.
type tiered struct {
	levels []tierLevel // ascending tier, each non-empty
}

type tierLevel struct {
	eps    []*Endpoint // sorted by ID
	picker Picker
}

var _ Picker = (*tiered)(nil)

func (t *tiered) Pick(info PickInfo) (PickResult, error) {
	for i := range t.levels {
		l := &t.levels[i]
		if info.Tried.Len() > 0 && allTried(l.eps, &info.Tried) {
			continue
		}
		if res, err := l.picker.Pick(info); err == nil {
			return res, nil
		}
	}
	return PickResult{}, ErrNoEndpoint
}

// allTried reports whether every endpoint of eps is in tried.
func allTried(eps []*Endpoint, tried *Tried) bool {
	for _, ep := range eps {
		if !tried.Has(ep) {
			return false
		}
	}
	return true
}
