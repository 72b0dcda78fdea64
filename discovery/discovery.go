// Package discovery watches Consul's health endpoint for one service with
// blocking queries and publishes full, ID-sorted instance sets.
//
// Everything Consul sends is treated as untrusted input: instance IDs are
// made unique, addresses and weights are checked, and the order and IDs of
// a set depend only on the data, so sluice processes watching the same
// Consul make the same choices.
//
// Contract (go-kit sd.Event style): every Update is either a full set or an
// error carried in band; the receiver keeps serving its last good set on an
// error. A Watcher never watches /v1/health/state/any.
//
// ACLs: Consul does not refuse a read its token may not make, it answers
// 200 with the forbidden entries left out. An empty answer is therefore
// confirmed with a non-streaming query (the streaming backend does not say
// it filtered); when Consul says it filtered, or rejects the token (403),
// the watcher reports an error wrapping ErrACL instead of an empty set.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/sluice-lb/sluice/balance"
)

// DefaultWeightKey is the service meta key that holds an instance's weight
// unless the service names another.
const DefaultWeightKey = "weight"

// Weight bounds: a weight outside them is invalid and falls back.
const (
	MinWeight = 1
	MaxWeight = 10000
)

// Instance is one service instance as Consul reports it. Immutable once published.
type Instance struct {
	// ID identifies the instance within its service, the same way in every
	// sluice process: the node name with '%' and '/' percent-encoded, '/',
	// then the Consul service ID, e.g. "node-1/web-1". Consul service IDs
	// are unique per node only.
	ID        string
	ServiceID string // the Consul service ID, as registered
	Node      string
	Address   string // Service.Address, else Node.Address; as Consul sent it
	Port      int
	Tags      []string
	Meta      map[string]string
	Health    balance.Health // the aggregate of its node and service checks
	Weight    int            // MinWeight..MaxWeight
	// Invalid, when not "", says why the instance cannot be used: its
	// address is empty, not an IP address nor a hostname (see
	// checkAddress), its port is outside 1-65535, or Consul listed it more
	// than once. The instance stays in the set so that operators see it,
	// and must never be picked. Each problem is logged once while it lasts.
	Invalid string
}

// HostPort returns the address to dial (meaningless when Invalid is set).
func (i Instance) HostPort() string { return net.JoinHostPort(i.Address, strconv.Itoa(i.Port)) }

// Update is one event of a watcher: a full set or an error.
type Update struct {
	Service   string
	Instances []Instance // full set sorted by ID, IDs unique; nil when Err != nil
	Index     uint64     // Consul's index of this answer; 0 with Err
	Err       error      // the query failed; keep the last good set
}

// HealthAPI is the slice of *api.Health a Watcher uses; tests use a fake.
type HealthAPI interface {
	Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

var _ HealthAPI = (*api.Health)(nil)

// MultiTagHealthAPI is a HealthAPI that can require several tags at once
// (Consul's repeated tag query parameter). A Watcher that needs more than
// one tag uses it, and reports an error when its HealthAPI lacks it.
type MultiTagHealthAPI interface {
	HealthAPI
	ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

var _ MultiTagHealthAPI = (*api.Health)(nil)

// Options configure a Watcher. Zero values take the documented defaults.
type Options struct {
	Service string // required
	// Tag and Tags: only instances carrying every one of these tags
	// (Consul compares tags case-insensitively); none for all. Tag is
	// shorthand for one.
	Tag  string
	Tags []string
	// NodeMeta: only instances on nodes whose meta holds every one of
	// these key/value pairs (Consul's node-meta parameter).
	NodeMeta map[string]string
	// Filter is a Consul filter expression over the health entries
	// (Consul's filter parameter), applied by Consul; "" for none.
	Filter string
	// Connect watches the service's Consul Connect instances (its
	// sidecars and Connect-native instances, /v1/health/connect/<name>)
	// instead of the service itself; the HealthAPI must be a
	// ConnectHealthAPI. Addresses and ports are the sidecars', tags and
	// meta those they carry (a sidecar copies its parent's tags and meta,
	// not its Weights).
	Connect    bool
	WeightKey  string // service meta key holding the weight; default DefaultWeightKey
	Datacenter string // default: the agent's
	// Stale allows any server to answer and uses the agent's cache
	// (streaming backend), as Consul recommends for watches at scale.
	Stale bool
	// Wait is the blocking query wait; default 60s.
	Wait time.Duration
	// WatchdogMargin: a query still open after Wait + Wait/16 (Consul's
	// jitter) + WatchdogMargin is cancelled and re-issued; default 5s.
	WatchdogMargin time.Duration
	// BackoffMin and BackoffMax bound the exponential backoff after an
	// error; defaults 50ms and 10s.
	BackoffMin time.Duration
	BackoffMax time.Duration
	Logger     hclog.Logger // default: discard
}

// Watcher runs the blocking-query loop of one service.
type Watcher struct {
	h    HealthAPI
	opts Options
	// warned holds the keys of the problems logged for the previous
	// answer, current those of the answer being converted (see warnOnce).
	// Both are used by the Run goroutine only.
	warned, current map[string]bool
	// dec decodes the answers that RawTransport let the Watcher read
	// itself; sink is where the transport puts them. Run goroutine only.
	dec  *answerDecoder
	sink rawSink
}

// NewWatcher returns a watcher of opts.Service over h.
func NewWatcher(h HealthAPI, opts Options) *Watcher {
	if opts.WeightKey == "" {
		opts.WeightKey = DefaultWeightKey
	}
	if opts.Wait <= 0 {
		opts.Wait = 60 * time.Second
	}
	if opts.WatchdogMargin <= 0 {
		opts.WatchdogMargin = 5 * time.Second
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = 50 * time.Millisecond
	}
	if opts.BackoffMax < opts.BackoffMin {
		opts.BackoffMax = max(10*time.Second, opts.BackoffMin)
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	return &Watcher{h: h, opts: opts, warned: map[string]bool{}, dec: newAnswerDecoder()}
}

// ErrACL is wrapped by the errors of a watch that Consul's ACLs keep from
// its answer: the token was rejected (403: unknown, expired, or lacking a
// permission Consul requires) or the answer came back empty because every
// entry was filtered out (the token lacks service:read on the service or
// node:read on its nodes). Such an error is handled like any other Consul
// error: the last good set keeps serving and the watch retries without an
// index at the backoff pace, since a blocking query is not woken by a
// policy attached to the token.
var ErrACL = errors.New("consul ACL")

// errWatchdog marks a query cancelled by the watchdog.
var errWatchdog = errors.New("watchdog")

// Run issues blocking queries until ctx is done and sends every update on
// out (a blocking send, abandoned when ctx is done). It returns when ctx is
// done; cancellation is not reported as an error.
func (w *Watcher) Run(ctx context.Context, out chan<- Update) {
	w.watchLoop(ctx, out)
}

func (w *Watcher) watchLoop(ctx context.Context, out chan<- Update) {
	var (
		index     uint64
		published bool // an answer was published and no error since
		fails     failures
	)
	send := func(u Update) bool {
		select {
		case out <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for ctx.Err() == nil {
		entries, meta, err := w.query(ctx, index)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errWatchdog) {
			w.opts.Logger.Warn("watch query overran, re-issuing", "service", w.opts.Service, "index", index)
			continue
		}
		if err == nil && len(entries) == 0 && !(published && max(meta.LastIndex, 1) == index) {
			err = w.confirmEmpty(ctx, meta)
			if ctx.Err() != nil {
				return
			}
		}
		if err != nil {
			wait := fails.failed(err, w.opts.BackoffMin, w.opts.BackoffMax, w.opts.Logger, "watch", "service", w.opts.Service)
			published = false
			index = 0 // after an outage ask afresh, so recovery is published at once
			if !send(Update{Service: w.opts.Service, Err: err}) || !sleep(ctx, wait) {
				return
			}
			continue
		}
		fails.ok(w.opts.Logger, "watch", "service", w.opts.Service)
		var changed bool
		if index, changed = nextIndex(published, index, meta.LastIndex); !changed {
			continue
		}
		published = true
		if !send(Update{Service: w.opts.Service, Instances: w.instancesOf(entries), Index: meta.LastIndex}) {
			return
		}
	}
}

// query runs one blocking query bounded by the watchdog. The entries
// are valid until the next query.
func (w *Watcher) query(ctx context.Context, index uint64) ([]answerEntry, *api.QueryMeta, error) {
	qctx, cancel := context.WithTimeoutCause(ctx, watchdogLimit(w.opts.Wait, w.opts.WatchdogMargin), errWatchdog)
	defer cancel()
	q := &api.QueryOptions{
		Datacenter: w.opts.Datacenter,
		WaitIndex:  index,
		WaitTime:   w.opts.Wait,
		AllowStale: w.opts.Stale,
		UseCache:   w.opts.Stale,
		NodeMeta:   w.opts.NodeMeta,
		Filter:     w.opts.Filter,
	}
	w.sink = rawSink{buf: w.dec.buffer()}
	apiEntries, meta, err := w.service(q.WithContext(withSink(qctx, &w.sink)))
	if err != nil && ctx.Err() == nil && context.Cause(qctx) == errWatchdog {
		return nil, nil, errWatchdog
	}
	if err == nil && meta == nil {
		err = errors.New("consul answered without query metadata")
	}
	if err != nil {
		return nil, nil, w.aclError(err)
	}
	return w.entries(apiEntries, meta)
}

// service asks Consul for the health entries of the service that carry
// every tag of Tag and Tags. Both calls go through the same client, so a
// sink in q's context (see RawTransport) receives either answer.
func (w *Watcher) service(q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	tags := w.tags()
	if w.opts.Connect {
		return w.connect(tags, q)
	}
	if len(tags) <= 1 {
		tag := ""
		if len(tags) == 1 {
			tag = tags[0]
		}
		return w.h.Service(w.opts.Service, tag, false, q)
	}
	mh, ok := w.h.(MultiTagHealthAPI)
	if !ok {
		return nil, nil, fmt.Errorf("the Consul client cannot require %d tags at once", len(tags))
	}
	return mh.ServiceMultipleTags(w.opts.Service, tags, false, q)
}

// tags returns Tag and Tags together, without repeats.
func (w *Watcher) tags() []string {
	var tags []string
	if w.opts.Tag != "" {
		tags = append(tags, w.opts.Tag)
	}
	for _, t := range w.opts.Tags {
		if t != "" && !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	return tags
}

// confirmEmpty returns an error wrapping ErrACL when Consul's empty answer
// (with meta) was emptied by ACL filtering, the error of the confirming
// query if it failed, or nil when the service really has no instances.
// An answer that says it was filtered is taken as it is; any other is
// confirmed by a non-streaming query (no cache, no index, so it returns at
// once, stale reads as configured), because only such a query carries
// Consul's X-Consul-Results-Filtered-By-ACLs header. The confirming query
// is bounded like a watch query.
func (w *Watcher) confirmEmpty(ctx context.Context, meta *api.QueryMeta) error {
	if !meta.ResultsFilteredByACLs {
		qctx, cancel := context.WithTimeout(ctx, w.opts.Wait+w.opts.WatchdogMargin)
		defer cancel()
		q := &api.QueryOptions{Datacenter: w.opts.Datacenter, AllowStale: w.opts.Stale, NodeMeta: w.opts.NodeMeta, Filter: w.opts.Filter}
		_, m, err := w.service(q.WithContext(qctx))
		if err != nil {
			return w.aclError(err)
		}
		if m == nil || !m.ResultsFilteredByACLs {
			return nil
		}
	}
	return fmt.Errorf("%w: results filtered: the token lacks service:read on %q or node:read on its nodes", ErrACL, w.opts.Service)
}

// aclError wraps ErrACL around an error carrying Consul's 403, which it
// answers for a token it does not know ("ACL not found") or one lacking a
// permission it requires ("Permission denied"); other errors are returned
// as they are.
func (w *Watcher) aclError(err error) error {
	var se api.StatusError
	if errors.As(err, &se) && se.Code == 403 {
		// Through the agent's streaming backend, Consul wraps its text in
		// a gRPC status.
		body := strings.TrimPrefix(se.Body, "rpc error: code = Unknown desc = ")
		return fmt.Errorf("%w: the token was refused (403 %s)", ErrACL, body)
	}
	return err
}

// noLeaderBackoff caps the pause after a "No cluster leader" answer.
const noLeaderBackoff = 500 * time.Millisecond

// isNoLeader reports whether err is Consul's answer while its servers
// have no leader (an HTTP 500 carrying "No cluster leader").
func isNoLeader(err error) bool {
	return strings.Contains(err.Error(), "No cluster leader")
}

// nextBackoff doubles prev within [lo, hi], then takes off up to 20% as
// jitter (never below lo).
// failures is a watch loop's error state, with the policy every watch
// follows: the wait before the next query doubles from lo to hi with
// jitter (nextBackoff), at most noLeaderBackoff while Consul has no leader
// (it holds such a query until a leader is elected or its RPC hold
// timeout, 7 s, passes, so it cannot spin, and a short pause lets the
// first answer after an election arrive at once); an error is logged at
// warn once while it lasts (again only after a good answer or a different
// error), its repeats at debug, and the first good answer after it at
// info. what names the watch in the messages ("watch failed", "watch
// still failing", "watch recovered"); kv are the messages' other pairs.
type failures struct {
	backoff time.Duration
	lastErr string // the text of the error logged last; "" after a good answer
}

// failed records err and returns how long to wait before the next query.
func (f *failures) failed(err error, lo, hi time.Duration, logger hclog.Logger, what string, kv ...any) time.Duration {
	f.backoff = nextBackoff(f.backoff, lo, hi)
	if isNoLeader(err) {
		f.backoff = min(f.backoff, noLeaderBackoff)
	}
	args := append(append(kv, "error", err), "retry_in", f.backoff)
	if msg := err.Error(); msg != f.lastErr {
		f.lastErr = msg
		logger.Warn(what+" failed", args...)
	} else {
		logger.Debug(what+" still failing", args...)
	}
	return f.backoff
}

// ok records a good answer.
func (f *failures) ok(logger hclog.Logger, what string, kv ...any) {
	f.backoff = 0
	if f.lastErr != "" {
		logger.Info(what+" recovered", kv...)
		f.lastErr = ""
	}
}

// sleep waits d, and reports false when ctx ends first.
// nextIndex applies the index rules of every watch to an answer whose
// LastIndex is lastIndex, the query having asked with index: changed is
// false for an unchanged index after a published answer (nothing to do);
// next is the next query's WaitIndex (0 counts as 1 so that the next
// query blocks; an index that went backwards starts over from 0).
func nextIndex(published bool, index, lastIndex uint64) (next uint64, changed bool) {
	last := max(lastIndex, 1)
	switch {
	case published && last == index:
		return index, false
	case last < index:
		return 0, true
	default:
		return last, true
	}
}

// watchdogLimit is how long a blocking query waiting up to wait may stay
// open before the watchdog cancels it: Consul adds up to wait/16 of
// jitter, and margin for the answer's way back.
func watchdogLimit(wait, margin time.Duration) time.Duration { return wait + wait/16 + margin }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func nextBackoff(prev, lo, hi time.Duration) time.Duration {
	d := min(max(prev*2, lo), hi)
	return max(lo, d-rand.N(d/5+1))
}

// instances converts an answer decoded by consul/api; see instancesOf.
func (w *Watcher) instances(entries []*api.ServiceEntry) []Instance {
	w.sink = rawSink{}
	es, _, _ := w.entries(entries, nil)
	return w.instancesOf(es)
}

// instancesOf converts a Consul answer into a set sorted by ID. An entry
// listed twice (same node and service ID) is kept once, marked invalid.
func (w *Watcher) instancesOf(entries []answerEntry) []Instance {
	w.current = map[string]bool{}
	defer func() { w.warned, w.current = w.current, nil }()
	type pending struct {
		in      Instance
		weights api.AgentWeights
	}
	ps := make([]pending, 0, len(entries))
	for _, e := range entries {
		in := Instance{
			ID:        e.id,
			ServiceID: e.serviceID,
			Node:      e.node,
			Address:   e.address,
			Port:      e.port,
			Tags:      e.tags,
			Meta:      e.meta,
			Health:    e.health,
		}
		if in.Address == "" {
			in.Address = e.nodeAddress
		}
		ps = append(ps, pending{in: in, weights: e.weights})
	}
	// Ties (a repeated entry, which Consul itself never sends) are broken
	// by address; the entry kept is invalid whichever it is. Consul's
	// order is usually ours already.
	less := func(i, j int) bool {
		a, b := &ps[i].in, &ps[j].in
		if a.ID != b.ID {
			return a.ID < b.ID
		}
		return a.HostPort() < b.HostPort()
	}
	if !sort.SliceIsSorted(ps, less) {
		sort.SliceStable(ps, less)
	}
	out := make([]Instance, 0, len(ps))
	for i, p := range ps {
		in := p.in
		if i > 0 && ps[i-1].in.ID == in.ID {
			continue
		}
		in.Weight = w.weight(in, p.weights)
		in.Invalid = checkAddress(in.Address, in.Port)
		if in.Invalid != "" {
			w.warnOnce(in.ID+"\x00address\x00"+in.HostPort(), "invalid instance address, not used", "service", w.opts.Service,
				"instance", in.ID, "address", in.Address, "port", in.Port, "reason", in.Invalid)
		}
		if i+1 < len(ps) && ps[i+1].in.ID == in.ID {
			in.Invalid = "listed more than once by Consul"
			w.warnOnce(in.ID+"\x00duplicate", "instance listed more than once by Consul, not used", "service", w.opts.Service,
				"instance", in.ID)
		}
		out = append(out, in)
	}
	return out
}

// nodeEscaper frees a node name of '/', so that the first '/' of an
// instance ID ends the node name and no two (node, service ID) pairs share
// an ID.
var nodeEscaper = strings.NewReplacer("%", "%25", "/", "%2F")

// instanceID returns the ID of service ID on node; see Instance.ID.
func instanceID(node, serviceID string) string {
	return nodeEscaper.Replace(node) + "/" + serviceID
}

// checkAddress returns why a host and port taken from Consul cannot be
// dialled, or "". The host must be an IP address without a zone (a zone
// names an interface of the node that registered it, not of ours) and not
// unspecified (0.0.0.0 or ::, which would reach this host, not the
// instance's), or a syntactically valid hostname (see isHostname).
func checkAddress(host string, port int) string {
	if host == "" {
		return "no address"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case ip.Zone() != "":
			return "IP address with a zone"
		case ip.IsUnspecified():
			return "unspecified IP address"
		}
	} else if !isHostname(host) {
		return "address is neither an IP address nor a hostname"
	}
	if port < 1 || port > 65535 {
		return "port outside 1-65535"
	}
	return ""
}

// isHostname reports whether s is a hostname as Go's resolver accepts it:
// dot-separated labels of 1-63 letters, digits, '-' and '_', no label
// starting or ending with '-', at most 253 characters plus an optional
// final dot, and not made of digits and dots only (so that no string is
// read as an IP address by one resolver and as a name by another).
func isHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	numeric := true
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			switch c := label[i]; {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_':
				numeric = false
			default:
				return false
			}
		}
	}
	return !numeric
}

// aggregateHealth folds node and service checks: maintenance wins, then
// critical, then warning; no checks is passing.
func aggregateHealth(checks api.HealthChecks) balance.Health {
	h := balance.HealthPassing
	for _, c := range checks {
		if c == nil {
			continue
		}
		if c.CheckID == api.NodeMaint || strings.HasPrefix(c.CheckID, api.ServiceMaintPrefix) {
			return balance.HealthMaintenance
		}
		switch c.Status {
		case api.HealthCritical:
			h = balance.HealthCritical
		case api.HealthWarning:
			if h == balance.HealthPassing {
				h = balance.HealthWarning
			}
		}
	}
	return h
}

// weight resolves an instance weight: service meta[WeightKey], else the
// first valid tag "weight=N" (invalid ones are skipped, later valid ones
// ignored), else Consul's Weights (Warning when the instance is warning),
// else 1. An invalid meta or tag value is logged once per (instance,
// source, value) and falls through.
func (w *Watcher) weight(in Instance, weights api.AgentWeights) int {
	if v, ok := in.Meta[w.opts.WeightKey]; ok {
		if n, ok := w.checkWeight(in.ID, "meta "+w.opts.WeightKey, v); ok {
			return n
		}
	}
	for _, t := range in.Tags {
		if v, ok := strings.CutPrefix(t, "weight="); ok {
			if n, ok := w.checkWeight(in.ID, "tag weight", v); ok {
				return n
			}
		}
	}
	cw := weights.Passing
	if in.Health == balance.HealthWarning {
		cw = weights.Warning
	}
	if cw >= MinWeight && cw <= MaxWeight {
		return cw
	}
	return 1
}

// checkWeight parses a weight and logs a bad one once per (instance,
// source, value) while Consul keeps reporting it.
func (w *Watcher) checkWeight(id, source, v string) (int, bool) {
	n, ok := parseWeight(v)
	if !ok {
		w.warnOnce(id+"\x00"+source+"\x00"+v, "invalid instance weight, falling back", "service", w.opts.Service,
			"instance", id, "key", source, "value", v, "valid", "decimal 1-10000 without sign, spaces or leading zeros")
	}
	return n, ok
}

// maxWeightDigits is the length of the longest valid weight.
var maxWeightDigits = len(strconv.Itoa(MaxWeight))

// parseWeight accepts exactly the canonical decimal form of an integer in
// MinWeight..MaxWeight: ASCII digits only, no sign, space, leading zero,
// base prefix or underscore. It never allocates.
func parseWeight(v string) (int, bool) {
	if len(v) == 0 || len(v) > maxWeightDigits || v[0] == '0' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n < MinWeight || n > MaxWeight {
		return 0, false
	}
	return n, true
}

// warnOnce logs msg unless key was logged for the previous answer; keys
// not seen again in the current answer are forgotten, so a problem that
// goes away and comes back is logged again and the set stays bounded by
// Consul's answer.
func (w *Watcher) warnOnce(key, msg string, args ...any) {
	if !w.warned[key] && !w.current[key] {
		w.opts.Logger.Warn(msg, args...)
	}
	w.current[key] = true
}
