// Package discovery watches Consul's health endpoint for one service at a
// time and publishes full, ID-sorted instance sets.
//
// A Watcher runs blocking queries against /v1/health/service/<name> in the
// style of consul-template's watch/view.go and sends every change as an
// Update on a channel. Updates are full sets, never deltas; errors are carried
// in band (go-kit's sd.Event), and on an error the receiver keeps serving the
// last good set. The package decides nothing about eligibility: it reports
// every instance with its aggregated Consul health and weight, and the pool
// owner decides what to route to.
package discovery

import (
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
)

// Health is the aggregated Consul health of an instance: the worst of its
// node checks and service checks, with maintenance winning over everything.
type Health string

// Aggregated health values. Passing and warning are eligible for traffic
// (warning uses Consul's Weights.Warning), critical is not, maintenance
// drains.
const (
	HealthPassing     Health = "passing"
	HealthWarning     Health = "warning"
	HealthCritical    Health = "critical"
	HealthMaintenance Health = "maintenance"
)

// Weight bounds. Every published Instance has MinWeight <= Weight <= MaxWeight.
const (
	MinWeight = 1
	MaxWeight = 10000
)

// weightTagPrefix marks a tag that carries an instance weight ("weight=N").
const weightTagPrefix = "weight="

// Instance is one service instance as Consul reports it. Immutable once
// published: receivers may share it between goroutines but must not modify
// its Tags or Meta.
type Instance struct {
	// ID is the Consul service ID. If two nodes carry the same service ID
	// in one answer, both become "<node>/<id>" so IDs stay unique within
	// an Update.
	ID string
	// Node is the Consul node name the instance is registered on.
	Node string
	// Address is Service.Address, else Node.Address.
	Address string
	Port    int
	// Tags and Meta are copies owned by the Instance; nil when Consul
	// reported none.
	Tags []string
	Meta map[string]string
	// Health is the aggregate of the node and service checks.
	Health Health
	// Weight is in MinWeight..MaxWeight: service meta[WeightKey], else tag
	// "weight=N", else Consul's Weights (Warning when Health is warning,
	// else Passing) if non-zero, else 1. Values out of range or not whole
	// numbers are logged once and skipped.
	Weight int
}

// HostPort returns Address and Port joined for dialling ("10.0.0.1:80",
// "[::1]:80").
func (i Instance) HostPort() string {
	return net.JoinHostPort(i.Address, strconv.Itoa(i.Port))
}

// aggregateHealth folds the checks of one health entry (node checks and
// service checks alike) into one Health. A maintenance check, by its CheckID
// (_node_maintenance or _service_maintenance:<id>), wins over everything;
// then critical, then warning; no checks at all is passing. A check status
// Consul does not document counts as critical, so an unknown state never
// receives traffic.
func aggregateHealth(checks api.HealthChecks) Health {
	var critical, warning bool
	for _, c := range checks {
		if c == nil {
			continue
		}
		if c.CheckID == api.NodeMaint || strings.HasPrefix(c.CheckID, api.ServiceMaintPrefix) {
			return HealthMaintenance
		}
		switch c.Status {
		case api.HealthPassing:
		case api.HealthWarning:
			warning = true
		default: // api.HealthCritical and anything unknown
			critical = true
		}
	}
	switch {
	case critical:
		return HealthCritical
	case warning:
		return HealthWarning
	default:
		return HealthPassing
	}
}

// parseWeight reports whether s is a whole number in MinWeight..MaxWeight.
func parseWeight(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	if err != nil || n < MinWeight || n > MaxWeight {
		return 0, false
	}
	return n, true
}

// warnKey identifies one bad weight value of one instance; each is logged
// once while the instance stays in the answers.
type warnKey struct {
	id    string
	value string
}

// candidate is a service entry on its way to becoming an Instance.
type candidate struct {
	id    string
	node  string
	entry *api.ServiceEntry
}

// instances converts one Consul answer into a full set sorted by ID. It
// copies everything it keeps from the api structs. Entries without a
// Service are skipped. Bad weight values are logged once per (instance ID,
// value); the set of logged values is pruned to the IDs of this answer. It
// holds w.mu for the warned set and is safe to call from concurrent Runs.
func (w *Watcher) instances(entries []*api.ServiceEntry) []Instance {
	cands := make([]candidate, 0, len(entries))
	nodesByID := make(map[string]map[string]bool, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		c := candidate{id: e.Service.ID, entry: e}
		if e.Node != nil {
			c.node = e.Node.Node
		}
		cands = append(cands, c)
		if nodesByID[c.id] == nil {
			nodesByID[c.id] = map[string]bool{}
		}
		nodesByID[c.id][c.node] = true
	}
	for i := range cands {
		if len(nodesByID[cands[i].id]) > 1 {
			cands[i].id = cands[i].node + "/" + cands[i].id
		}
	}
	// Sort stably, then drop any ID that is still duplicated (the same
	// service ID twice on one node, which Consul does not produce), keeping
	// the first, so IDs are unique whatever the input.
	slices.SortStableFunc(cands, func(a, b candidate) int { return strings.Compare(a.id, b.id) })
	cands = slices.CompactFunc(cands, func(a, b candidate) bool { return a.id == b.id })

	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Instance, 0, len(cands))
	live := make(map[string]bool, len(cands))
	for _, c := range cands {
		live[c.id] = true
		out = append(out, w.instance(c))
	}
	for k := range w.warned {
		if !live[k.id] {
			delete(w.warned, k)
		}
	}
	return out
}

// instance builds one Instance from a candidate. Callers hold w.mu.
func (w *Watcher) instance(c candidate) Instance {
	s := c.entry.Service
	in := Instance{
		ID:      c.id,
		Node:    c.node,
		Address: s.Address,
		Port:    s.Port,
		Tags:    slices.Clone(s.Tags),
		Meta:    maps.Clone(s.Meta),
		Health:  aggregateHealth(c.entry.Checks),
	}
	if in.Address == "" && c.entry.Node != nil {
		in.Address = c.entry.Node.Address
	}
	in.Weight = w.weight(in.ID, s, in.Health)
	return in
}

// weight picks the weight of one instance: meta[WeightKey], then the first
// "weight=N" tag, then Consul's Weights, then 1. A meta or tag value that is
// not a whole number in MinWeight..MaxWeight is logged once per (id, value)
// and skipped. Callers hold w.mu.
func (w *Watcher) weight(id string, s *api.AgentService, h Health) int {
	if v, ok := s.Meta[w.opts.WeightKey]; ok {
		if n, ok := parseWeight(v); ok {
			return n
		}
		w.warnWeight(id, w.opts.WeightKey, v)
	}
	for _, t := range s.Tags {
		v, ok := strings.CutPrefix(t, weightTagPrefix)
		if !ok {
			continue
		}
		if n, ok := parseWeight(v); ok {
			return n
		}
		w.warnWeight(id, "tag:"+strings.TrimSuffix(weightTagPrefix, "="), v)
		break // only the first weight tag counts
	}
	cw := s.Weights.Passing
	if h == HealthWarning {
		cw = s.Weights.Warning
	}
	switch {
	case cw > MaxWeight:
		return MaxWeight
	case cw >= MinWeight:
		return cw
	default:
		return MinWeight
	}
}

// warnWeight logs a bad weight value unless it was already logged for this
// instance. Callers hold w.mu.
func (w *Watcher) warnWeight(id, key, value string) {
	k := warnKey{id: id, value: value}
	if _, done := w.warned[k]; done {
		return
	}
	w.warned[k] = struct{}{}
	w.logger.Warn("invalid weight, falling back",
		"service", w.opts.Service, "instance", id, "key", key, "value", value)
}
