package balance

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Health is a member's health in the service registry: the aggregate of
// its node and service checks in Consul (see discovery). Passing and
// warning members are eligible, critical and maintenance ones are not.
type Health string

// The values of Health, as Consul names them.
const (
	HealthPassing     Health = "passing"
	HealthWarning     Health = "warning"
	HealthCritical    Health = "critical"
	HealthMaintenance Health = "maintenance"
)

// eligible reports whether the registry lets a member with health h serve.
func (h Health) eligible() bool { return h == HealthPassing || h == HealthWarning }

// ProbeState is the verdict of a member's active health check (SetProbe).
type ProbeState string

// The values of ProbeState.
const (
	ProbeUnknown ProbeState = "unknown" // no probe configured, or no verdict yet
	ProbePassing ProbeState = "passing"
	ProbeFailing ProbeState = "failing"
)

// Member is one instance as the service registry reports it: the input of
// SetMembers.
type Member struct {
	ID     string // unique within the service; see SetMembers for repeats
	Addr   string // host:port; "" makes the member invalid
	Weight int    // >= 1; values below 1 count as 1
	Consul Health
	// Invalid, when not "", says why the registry entry cannot be used
	// (a bad address or port, say): the member is listed with this reason
	// but never eligible.
	Invalid string
	// Backup marks a backup instance: it serves only while no primary
	// of its datacenter is eligible (see Tier).
	Backup bool
	// Datacenter is set by the pool: "" for the members of SetMembers
	// (the local datacenter), the datacenter's name for those of
	// SetRemoteMembers.
	Datacenter string
}

// MemberStatus is one member of a Snapshot with everything that decides its
// eligibility.
type MemberStatus struct {
	ID      string
	Addr    string
	Weight  int
	Consul  Health
	Invalid string // see Member.Invalid
	Probe   ProbeState
	Ejected bool
	// EjectedUntil is the wall-clock end of the ejection while Ejected.
	EjectedUntil time.Time
	Eligible     bool
	// EffectiveWeight is the share of Weight the picker uses: Weight, or
	// less while the instance slow-starts; 0 when not eligible.
	EffectiveWeight float64
	Stats           *Stats
	// Datacenter is "" for a local member, else its failover datacenter;
	// Backup is Member.Backup.
	Datacenter string
	Backup     bool
	// Tier is the member's rank in the order of preference (see Tier):
	// requests go to the eligible members of the lowest tier that has any.
	Tier int
	// Standby is true for an eligible member of a tier after the one
	// serving: it gets requests only as a retry after every member of the
	// tiers before it failed the request.
	Standby bool
	// Panic is true for a member eligible only because its service is in
	// panic mode: its failing probe or ejection is ignored.
	Panic bool
	// passingOnly is the service's Policy.PassingOnly, for Reason.
	passingOnly bool
}

// Reason names what makes the member eligible or not, first cause first:
// "eligible", "eligible (panic mode)", "invalid: ...", "consul critical",
// "consul warning (passing_only)", "probe failing", "ejected".
func (ms MemberStatus) Reason() string { return reason(ms) }

// Tier returns the rank of a member of datacenter rank dc (0 for the
// local datacenter, i+1 for the i-th failover datacenter) in the order of
// preference: the local primaries (tier 0), the local backups (1), then
// for each failover datacenter in order its primaries and its backups.
func Tier(dc int, backup bool) int {
	t := 2 * dc
	if backup {
		t++
	}
	return t
}

// Snapshot is an immutable view of one service's pool. The pool owner
// publishes a new one on every change; readers must not modify it.
type Snapshot struct {
	Service  string
	Strategy string
	Sticky   string // the sticky mode, "" when none; for status output
	Version  uint64 // increases with every publication
	// Synced is true once the registry has answered at least once.
	Synced      bool
	ConsulIndex uint64
	// ConsulError is the last watch error, cleared by the next good answer.
	// While it is set the members of the last good answer keep serving.
	ConsulError string
	// ConsulErrors counts the failed registry queries (SetError) so far.
	ConsulErrors uint64
	// ConsulAnswers counts the registry answers (SetMembers) so far.
	ConsulAnswers uint64
	// ConsulLastSuccess is the wall-clock time of the last registry answer
	// (SetMembers); zero before the first.
	ConsulLastSuccess time.Time
	Members           []MemberStatus // every known member, sorted by ID
	// Eligible are the members the picker chooses from, sorted by ID:
	// those of the serving tier first, the others (standby) only on a
	// retry once every member of the tiers before them was tried.
	Eligible []*Endpoint
	// Serving names the tier requests go to: "local", "local backup",
	// "DC" or "DC backup" for a failover datacenter; "" when no member is
	// eligible.
	Serving string
	// Panic is true while the service is in panic mode (see
	// Policy.PanicThreshold).
	Panic  bool
	Picker Picker
	// next is closed when the following snapshot is published.
	next chan struct{}
}

// Next returns a channel that is closed once a newer snapshot is published.
func (s *Snapshot) Next() <-chan struct{} { return s.next }

// PoolOptions configure a Pool. Strategy, Builder, SlowStart and Passive
// are the initial Policy; SetPolicy replaces them.
type PoolOptions struct {
	Service  string  // required
	Strategy string  // strategy name, for status output
	Sticky   string  // sticky mode, for status output ("" when none)
	Builder  Builder // required; see NewBuilder
	// SlowStart ramps the weight of an instance that becomes eligible
	// after the first registry answer (new, or back from ineligible)
	// linearly from 10% to 100% over this time; 0 disables it.
	SlowStart time.Duration
	// Passive enables passive ejection; nil disables it. The pool keeps a
	// copy: changing *Passive after NewPool has no effect.
	Passive *PassiveOptions
	// Clock returns monotonic nanoseconds; default: time since NewPool.
	Clock  func() int64
	Logger hclog.Logger
	// Events, when not nil, receives the pool's transitions (see
	// EventKind); the owner writes it, never the request path.
	Events *EventLog
	// PassingOnly and PanicThreshold are the initial Policy's fields of
	// the same names.
	PassingOnly    bool
	PanicThreshold int
}

// Policy is the part of PoolOptions a running pool can change (SetPolicy):
// the fields of the same names there.
type Policy struct {
	Strategy  string
	Sticky    string
	Builder   Builder // required
	SlowStart time.Duration
	Passive   *PassiveOptions
	// PassingOnly makes members whose registry health is warning
	// ineligible (shown with the reason "consul warning (passing_only)").
	// Default false: passing and warning members are eligible.
	PassingOnly bool
	// PanicThreshold, a percentage from 1 to 100, turns on panic mode:
	// while fewer than PanicThreshold percent of the members the registry
	// admits (valid, passing or warning, or passing only with
	// PassingOnly; every datacenter counted) are eligible because of
	// failing probes or ejections, probe verdicts and ejections are
	// ignored and every member the registry admits is eligible. 0 (the
	// default) turns it off.
	PanicThreshold int
}

// PassiveOptions configure passive ejection: an instance whose picks end
// with ConsecutiveFailures failures in a row (Done with an error) is taken
// out of rotation for EjectionTime, doubled for each ejection that follows
// within MaxEjectionTime of the last one, up to MaxEjectionTime. At most
// MaxEjectionPercent of the service's instances (rounded down) are ejected
// at once. A success resets the count.
type PassiveOptions struct {
	ConsecutiveFailures int
	EjectionTime        time.Duration
	MaxEjectionTime     time.Duration // default max(DefaultMaxEjectionTime, EjectionTime)
	MaxEjectionPercent  int
}

// DefaultMaxEjectionTime caps the doubling of ejections unless
// PassiveOptions sets another cap.
const DefaultMaxEjectionTime = 300 * time.Second

// slowStartFloor is the share of its weight a slow-starting instance begins with.
const slowStartFloor = 0.1

// slowStartScale multiplies every weight while an instance ramps, so that
// 10% of a weight of 1 is still a whole number.
const slowStartScale = 100

// Pool owns the live state of one service. Run is its owner goroutine: the
// Set methods hand changes to it, and it publishes a new Snapshot after
// each. Load may be called from any goroutine at any time.
type Pool struct {
	// opts holds the fields that never change: Service, Clock, Logger.
	// Its policy fields are cleared by NewPool; the policy lives in
	// poolState, read and written only by the owner.
	opts    PoolOptions
	initial Policy // the policy Run starts with
	shared  Shared
	snap    atomic.Pointer[Snapshot]
	events  chan func(*poolState)
	// failing receives the Stats of instances that reached the passive
	// failure threshold; sends never block (see Stats.fail).
	failing chan *Stats
}

// poolState is owned by the Run goroutine.
type poolState struct {
	policy            Policy // Passive normalised (see normalisePassive)
	version           uint64
	synced            bool
	warm              bool // a synced snapshot was published: later arrivals slow-start
	consulIndex       uint64
	consulError       string
	consulErrors      uint64              // SetError calls so far
	consulAnswers     uint64              // SetMembers calls so far
	consulLastSuccess time.Time           // wall clock of the last SetMembers; zero before
	members           []Member            // local and remote, sorted by ID (see merge)
	local             []Member            // the last SetMembers, sorted by ID
	remote            map[string][]Member // by failover datacenter: the last SetRemoteMembers, IDs prefixed
	remoteErrors      map[string]string   // by failover datacenter: the error of its last query, if it failed
	failover          []string            // the failover datacenters in order (SetFailover)
	panic             bool                // panic mode, as last published
	tiers             []int               // the tier of each Eligible endpoint of the last picker built
	stats             map[string]*Stats
	eligible          map[string]bool       // last published eligibility, for transition logs
	since             map[string]int64      // clock when an instance last became eligible; absent = warm
	probes            map[string]ProbeState // active probe verdicts; absent = ProbeUnknown
	ejections         map[string]*ejection
	// newPolicy is set when the policy changed since the last
	// publication, ramped when that publication's weights were scaled
	// by a slow start: either way the next one builds a new picker.
	newPolicy, ramped bool
}

// ejection is the passive-ejection record of one instance.
type ejection struct {
	until    int64 // clock; 0 when not ejected
	count    int   // ejections in a row, for the doubling
	released int64 // clock of the last release
}

// NewPool returns a pool that publishes an empty, unsynced snapshot until
// Run receives the first members.
func NewPool(opts PoolOptions) *Pool {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Clock == nil {
		base := time.Now()
		opts.Clock = func() int64 { return int64(time.Since(base)) + 1 }
	}
	initial := Policy{Strategy: opts.Strategy, Sticky: opts.Sticky, Builder: opts.Builder, SlowStart: opts.SlowStart, Passive: normalisePassive(opts.Passive),
		PassingOnly: opts.PassingOnly, PanicThreshold: opts.PanicThreshold}
	opts.Strategy, opts.Sticky, opts.Builder, opts.SlowStart, opts.Passive = "", "", nil, 0, nil
	opts.PassingOnly, opts.PanicThreshold = false, 0
	p := &Pool{opts: opts, initial: initial, events: make(chan func(*poolState)), failing: make(chan *Stats, 64)}
	p.shared.clock = opts.Clock
	p.snap.Store(&Snapshot{Service: opts.Service, Strategy: initial.Strategy, Sticky: initial.Sticky, Picker: emptyPicker{}, next: make(chan struct{})})
	return p
}

// normalisePassive returns a copy of pv with MaxEjectionTime defaulted
// (see PassiveOptions), or nil.
func normalisePassive(pv *PassiveOptions) *PassiveOptions {
	if pv == nil {
		return nil
	}
	c := *pv
	if c.MaxEjectionTime < c.EjectionTime {
		c.MaxEjectionTime = max(DefaultMaxEjectionTime, c.EjectionTime)
	}
	return &c
}

// Service returns the service name.
func (p *Pool) Service() string { return p.opts.Service }

// Load returns the current snapshot: one atomic load, no lock.
func (p *Pool) Load() *Snapshot { return p.snap.Load() }

// Run applies changes and publishes snapshots until ctx is done.
func (p *Pool) Run(ctx context.Context) {
	st := &poolState{
		policy: p.initial,
		stats:  map[string]*Stats{}, eligible: map[string]bool{}, since: map[string]int64{},
		probes: map[string]ProbeState{}, ejections: map[string]*ejection{},
		remote: map[string][]Member{}, remoteErrors: map[string]string{},
	}
	// wake fires when a slow start needs its next step or an ejection ends.
	wake := time.NewTimer(time.Hour)
	wake.Stop()
	for {
		select {
		case <-ctx.Done():
			wake.Stop()
			return
		case apply := <-p.events:
			apply(st)
		case s := <-p.failing:
			if !p.eject(st, s) {
				continue
			}
		case <-wake.C:
		}
		if d := p.publish(st); d > 0 {
			wake.Reset(d)
		} else {
			wake.Stop()
		}
	}
}

// send hands a change to the owner. It blocks until the owner takes it or
// ctx is done, and reports ctx's error in the latter case.
func (p *Pool) send(ctx context.Context, apply func(*poolState)) error {
	select {
	case p.events <- apply:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Refresh republishes the snapshot, for example to advance a slow start on
// an injected clock.
func (p *Pool) Refresh(ctx context.Context) error {
	return p.send(ctx, func(*poolState) {})
}

// SetMembers replaces the full member set of the local datacenter (a
// registry answer with index). It blocks until the owner takes the change
// or ctx is done. Member IDs must be unique: of members sharing an ID only
// the first is kept, and it is invalid, so two instances never share
// counters. Members keep their Stats, probe verdicts and ejections across
// calls by ID.
func (p *Pool) SetMembers(ctx context.Context, index uint64, members []Member) error {
	ms := uniqueMembers(members, "")
	now := time.Now()
	return p.send(ctx, func(st *poolState) {
		if st.consulError != "" {
			p.event("", EventConsulRecovery, "")
		}
		st.synced = true
		st.consulIndex = index
		st.consulError = ""
		st.consulLastSuccess = now
		st.consulAnswers++
		st.local = ms
		p.merge(st)
	})
}

// SetFailover sets the failover datacenters, in order of preference (see
// Tier). The members and errors of a datacenter no longer listed are
// dropped. It blocks until the owner takes the change or ctx is done.
func (p *Pool) SetFailover(ctx context.Context, datacenters []string) error {
	dcs := append([]string(nil), datacenters...)
	return p.send(ctx, func(st *poolState) {
		st.failover = dcs
		for dc := range st.remote {
			if !slices.Contains(dcs, dc) {
				delete(st.remote, dc)
			}
		}
		for dc := range st.remoteErrors {
			if !slices.Contains(dcs, dc) {
				delete(st.remoteErrors, dc)
			}
		}
		p.merge(st)
	})
}

// SetRemoteMembers replaces the member set of failover datacenter dc (one
// listed by SetFailover; others are dropped). Each member's ID becomes
// dc + "/" + its ID, so that it differs from every local one; repeats are
// handled as by SetMembers. It clears dc's error and blocks until the
// owner takes the change or ctx is done. It does not make the pool
// synced: only the local datacenter's answer does.
func (p *Pool) SetRemoteMembers(ctx context.Context, dc string, members []Member) error {
	ms := uniqueMembers(members, dc)
	return p.send(ctx, func(st *poolState) {
		if !slices.Contains(st.failover, dc) {
			return
		}
		if st.remoteErrors[dc] != "" {
			p.event("", EventConsulRecovery, "datacenter "+dc)
			delete(st.remoteErrors, dc)
		}
		st.remote[dc] = ms
		p.merge(st)
	})
}

// SetRemoteError records a failed registry query of failover datacenter
// dc; its members keep serving. The snapshot's ConsulError names dc.
func (p *Pool) SetRemoteError(ctx context.Context, dc string, err error) error {
	msg := err.Error()
	return p.send(ctx, func(st *poolState) {
		if !slices.Contains(st.failover, dc) {
			return
		}
		if st.remoteErrors[dc] != msg {
			p.event("", EventConsulError, "datacenter "+dc+": "+msg)
		}
		st.remoteErrors[dc] = msg
		st.consulErrors++
	})
}

// uniqueMembers returns a sorted copy of members of datacenter dc ("" for
// the local one) with Datacenter set, IDs prefixed with dc + "/" for a
// remote one, and every repeated ID kept once, invalid.
func uniqueMembers(members []Member, dc string) []Member {
	ms := make([]Member, len(members))
	for i, m := range members {
		m.Datacenter = dc
		if dc != "" {
			m.ID = dc + "/" + m.ID
		}
		ms[i] = m
	}
	less := func(i, j int) bool { return ms[i].ID < ms[j].ID }
	if !sort.SliceIsSorted(ms, less) { // a Consul answer usually is
		sort.SliceStable(ms, less)
	}
	return dedupe(ms)
}

// dedupe keeps the first of sorted members sharing an ID, marked invalid.
func dedupe(ms []Member) []Member {
	kept := ms[:0]
	for _, m := range ms {
		if n := len(kept); n > 0 && kept[n-1].ID == m.ID {
			if kept[n-1].Invalid == "" {
				kept[n-1].Invalid = "duplicate instance ID"
			}
			continue
		}
		kept = append(kept, m)
	}
	return kept
}

// merge recomputes st.members: the local members and those of every
// failover datacenter, sorted by ID.
func (p *Pool) merge(st *poolState) {
	n := len(st.local)
	for _, dc := range st.failover {
		n += len(st.remote[dc])
	}
	ms := make([]Member, 0, n)
	ms = append(ms, st.local...)
	for _, dc := range st.failover {
		ms = append(ms, st.remote[dc]...)
	}
	if len(st.failover) > 0 {
		sort.SliceStable(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID })
		ms = dedupe(ms)
	}
	st.members = ms
}

// SetError records a failed registry query of the local datacenter; the
// current members keep serving.
func (p *Pool) SetError(ctx context.Context, err error) error {
	msg := err.Error()
	return p.send(ctx, func(st *poolState) {
		if st.consulError != msg {
			p.event("", EventConsulError, msg)
		}
		st.consulError = msg
		st.consulErrors++
	})
}

// SetProbe records the verdict of an instance's active probe: ProbePassing,
// ProbeFailing or ProbeUnknown. Verdicts for unknown instances are dropped.
func (p *Pool) SetProbe(ctx context.Context, id string, state ProbeState) error {
	return p.send(ctx, func(st *poolState) {
		if _, ok := st.stats[id]; ok {
			old, known := st.probes[id]
			if !known {
				old = ProbeUnknown
			}
			if old != state {
				p.event(id, EventProbe, string(old)+" -> "+string(state))
			}
			st.probes[id] = state
		}
	})
}

// ClearProbes resets every instance's probe verdict to ProbeUnknown, for a
// service whose active probe was removed. It blocks until the owner takes
// the change or ctx is done. The caller must first stop the service's
// prober: a verdict set after ClearProbes stands.
func (p *Pool) ClearProbes(ctx context.Context) error {
	return p.send(ctx, func(st *poolState) {
		for id, v := range st.probes {
			if v != ProbeUnknown {
				p.event(id, EventProbe, string(v)+" -> "+string(ProbeUnknown))
			}
		}
		clear(st.probes)
	})
}

// SetPolicy replaces the pool's strategy, builder, slow start and passive
// ejection; the next snapshot, published at once, carries a picker from
// pol.Builder. It blocks until that snapshot is published (so the next
// Load picks with the new policy) or ctx is done.
//
// Everything the pool learnt stays: the rotation position (Shared), every
// instance's Stats (in-flight, requests, EWMA, failures in a row), probe
// verdicts, ejections and slow-start clocks. In detail:
//   - Passive: the new threshold applies to the next failure; a changed
//     ejection time or percentage to the next ejection. Ejections in
//     progress run to the end fixed when they began, also when Passive
//     becomes nil, which stops new ejections and clears the failure counts.
//   - SlowStart: an instance still ramping continues on the new window
//     from the time it became eligible (done if that is already past);
//     0 ends every ramp at once.
//   - A sticky builder brings its own cookie values: cookies stay valid
//     when pol.Builder was made with the same secret and cookie settings.
func (p *Pool) SetPolicy(ctx context.Context, pol Policy) error {
	if pol.Builder == nil {
		return errors.New("balance: SetPolicy without a Builder")
	}
	pol.Passive = normalisePassive(pol.Passive)
	if err := p.send(ctx, func(st *poolState) {
		st.policy = pol
		st.newPolicy = true
		threshold := int64(0)
		if pol.Passive != nil {
			threshold = int64(pol.Passive.ConsecutiveFailures)
		}
		for _, s := range st.stats {
			s.threshold.Store(threshold)
			if threshold <= 0 {
				s.consec.Store(0)
			}
		}
		if pol.SlowStart <= 0 {
			clear(st.since)
		}
	}); err != nil {
		return err
	}
	// The owner publishes after each change and before it takes the next
	// one: once a second change is taken, the new picker is out.
	return p.Refresh(ctx)
}

// eject takes the instance of s out of rotation if the passive policy
// allows; it reports whether anything changed.
func (p *Pool) eject(st *poolState, s *Stats) bool {
	pv := st.policy.Passive
	if pv == nil || st.stats[s.id] != s {
		s.reported.Store(false)
		return false // an instance that left, or a stale report
	}
	// Count afresh from here whatever happens: a report that does not
	// eject (instance already out, limit reached) must not stop the next.
	s.consec.Store(0)
	s.reported.Store(false)
	now := p.opts.Clock()
	e := st.ejections[s.id]
	if e == nil {
		e = &ejection{}
		st.ejections[s.id] = e
	}
	if e.until > now || !st.eligible[s.id] {
		return false
	}
	ejected := 0
	for _, other := range st.ejections {
		if other.until > now {
			ejected++
		}
	}
	if allowed := len(st.members) * pv.MaxEjectionPercent / 100; ejected >= allowed {
		p.opts.Logger.Warn("instance failing but not ejected: max_ejection_percent reached", "service", p.opts.Service,
			"instance", s.id, "ejected", ejected, "instances", len(st.members))
		return false
	}
	if e.count > 0 && now-e.released > int64(pv.MaxEjectionTime) {
		e.count = 0 // healthy for long enough: start the doubling over
	}
	d := pv.EjectionTime
	for i := 0; i < e.count && d < pv.MaxEjectionTime; i++ {
		d *= 2
	}
	d = min(d, pv.MaxEjectionTime)
	e.count++
	e.until = now + int64(d)
	s.ejections.Add(1)
	p.event(s.id, EventEjected, "for "+d.String())
	p.opts.Logger.Warn("instance ejected", "service", p.opts.Service, "instance", s.id,
		"consecutive_failures", pv.ConsecutiveFailures, "for", d)
	return true
}

// publish builds and stores a new snapshot from st. It returns when the
// owner must publish again without a change (the next slow-start step or
// the end of an ejection), or 0.
func (p *Pool) publish(st *poolState) (wake time.Duration) {
	now, wall := p.opts.Clock(), time.Now()
	st.version++
	snap := &Snapshot{
		Service:           p.opts.Service,
		Strategy:          st.policy.Strategy,
		Sticky:            st.policy.Sticky,
		Version:           st.version,
		Synced:            st.synced,
		ConsulIndex:       st.consulIndex,
		ConsulError:       consulError(st),
		ConsulErrors:      st.consulErrors,
		ConsulAnswers:     st.consulAnswers,
		ConsulLastSuccess: st.consulLastSuccess,
		Members:           make([]MemberStatus, 0, len(st.members)),
		next:              make(chan struct{}),
	}
	// The picker of the previous snapshot is kept when it would be built
	// from the same endpoints in the same tiers (see Endpoint.same and
	// st.tiers): a change of Consul health that leaves eligibility,
	// weights and tiers as they were costs no rebuild.
	prev := p.snap.Load()
	same := prev.Synced && !st.newPolicy && !st.ramped
	nEligible := 0
	known := 0 // members that had Stats before this publication
	nStats := len(st.stats)
	rank := make(map[string]int, len(st.failover)+1)
	for i, dc := range st.failover {
		rank[dc] = i + 1
	}
	admitted, healthy := 0, 0 // for panic mode: members the registry admits, and of those the ones sluice finds healthy
	for _, m := range st.members {
		stats := st.stats[m.ID]
		if stats != nil {
			known++
		}
		if stats == nil {
			stats = newStats(p.opts.Clock)
			stats.id = m.ID
			stats.failing = p.failing
			if pv := st.policy.Passive; pv != nil {
				stats.threshold.Store(int64(pv.ConsecutiveFailures))
			}
			st.stats[m.ID] = stats
			p.opts.Logger.Info("instance added", "service", p.opts.Service, "instance", m.ID, "address", m.Addr, "consul", m.Consul)
			p.event(m.ID, EventAdded, m.Addr+", consul "+string(m.Consul))
		}
		ms := MemberStatus{
			ID: m.ID, Addr: m.Addr, Weight: max(m.Weight, 1), Consul: m.Consul, Invalid: m.Invalid,
			Probe: ProbeUnknown, Stats: stats,
			Datacenter: m.Datacenter, Backup: m.Backup, Tier: Tier(rank[m.Datacenter], m.Backup),
			passingOnly: st.policy.PassingOnly,
		}
		if ms.Addr == "" && ms.Invalid == "" {
			ms.Invalid = "no address"
		}
		if v, ok := st.probes[m.ID]; ok {
			ms.Probe = v
		}
		if e := st.ejections[m.ID]; e != nil && e.until != 0 {
			if e.until > now {
				ms.Ejected = true
				ms.EjectedUntil = wall.Add(time.Duration(e.until - now))
				wake = minWake(wake, time.Duration(e.until-now))
			} else {
				e.until, e.released = 0, now
				stats.consec.Store(0)
				p.opts.Logger.Info("instance ejection ended", "service", p.opts.Service, "instance", m.ID)
				p.event(m.ID, EventEjectionEnded, "")
			}
		}
		if admits(ms, st.policy.PassingOnly) {
			admitted++
			if ms.Probe != ProbeFailing && !ms.Ejected {
				healthy++
			}
		}
		snap.Members = append(snap.Members, ms)
	}
	pt := st.policy.PanicThreshold
	snap.Panic = pt > 0 && admitted > 0 && healthy*100 < pt*admitted
	if snap.Panic != st.panic {
		st.panic = snap.Panic
		if snap.Panic {
			p.opts.Logger.Warn("panic mode: too few instances pass sluice's probes and ejections; ignoring them", "service", p.opts.Service,
				"healthy", healthy, "consul_healthy", admitted, "panic_threshold", pt)
		} else {
			p.opts.Logger.Info("panic mode ended", "service", p.opts.Service, "healthy", healthy, "consul_healthy", admitted, "panic_threshold", pt)
		}
	}
	serving := -1
	for i := range snap.Members {
		ms := &snap.Members[i]
		admitted := admits(*ms, st.policy.PassingOnly)
		ms.Eligible = admitted && ms.Probe != ProbeFailing && !ms.Ejected
		if !ms.Eligible && admitted && snap.Panic {
			ms.Eligible, ms.Panic = true, true
		}
		if was, known := st.eligible[ms.ID]; !known || was != ms.Eligible {
			if known || !ms.Eligible {
				p.opts.Logger.Info("instance eligibility changed", "service", p.opts.Service, "instance", ms.ID,
					"eligible", ms.Eligible, "reason", reason(*ms), "consul", ms.Consul, "probe", ms.Probe, "ejected", ms.Ejected)
				if ms.Eligible {
					p.event(ms.ID, EventEligible, "")
				} else {
					p.event(ms.ID, EventIneligible, reason(*ms))
				}
			}
			if ms.Eligible && st.warm && st.policy.SlowStart > 0 {
				st.since[ms.ID] = now
			}
			st.eligible[ms.ID] = ms.Eligible
		}
		if ms.Eligible {
			if same {
				same = nEligible < len(prev.Eligible) && nEligible < len(st.tiers) &&
					prev.Eligible[nEligible].same(ms) && st.tiers[nEligible] == ms.Tier
			}
			nEligible++
			if serving < 0 || ms.Tier < serving {
				serving = ms.Tier
			}
		}
	}
	if serving >= 0 {
		snap.Serving = tierName(serving, st.failover)
	}
	same = same && nEligible == len(prev.Eligible) && snap.Serving == prev.Serving
	ramping := false
	if same {
		snap.Eligible = prev.Eligible
	} else {
		snap.Eligible = make([]*Endpoint, 0, nEligible)
		st.tiers = make([]int, 0, nEligible)
		for i := range snap.Members {
			if ms := &snap.Members[i]; ms.Eligible {
				snap.Eligible = append(snap.Eligible, &Endpoint{ID: ms.ID, Addr: ms.Addr, Weight: ms.Weight, Stats: ms.Stats})
				st.tiers = append(st.tiers, ms.Tier)
			}
		}
		ramping = p.applySlowStart(st, snap.Eligible, now)
	}
	if ramping {
		wake = minWake(wake, max(st.policy.SlowStart/100, 100*time.Millisecond))
	}
	// Members and Eligible are both sorted by ID, Eligible a subset.
	for i, j := 0, 0; i < len(snap.Members) && j < len(snap.Eligible); i++ {
		if snap.Members[i].ID != snap.Eligible[j].ID {
			continue
		}
		w := float64(snap.Eligible[j].Weight)
		if ramping {
			w /= slowStartScale
		}
		snap.Members[i].EffectiveWeight = w
		snap.Members[i].Standby = snap.Members[i].Tier != serving
		j++
	}
	if known < nStats {
		p.forget(st)
	}
	if same {
		snap.Picker = prev.Picker
	} else {
		p.shared.builds++
		snap.Picker = buildTiered(st.policy.Builder, snap.Eligible, st.tiers, &p.shared)
	}
	st.newPolicy, st.ramped = false, ramping
	prev = p.snap.Swap(snap)
	close(prev.next)
	st.warm = st.warm || st.synced
	return wake
}

// forget drops the state of the instances that are no longer members.
func (p *Pool) forget(st *poolState) {
	seen := make(map[string]bool, len(st.members))
	for _, m := range st.members {
		seen[m.ID] = true
	}
	for id := range st.stats {
		if !seen[id] {
			delete(st.stats, id)
			delete(st.eligible, id)
			delete(st.since, id)
			delete(st.probes, id)
			delete(st.ejections, id)
			p.opts.Logger.Info("instance removed", "service", p.opts.Service, "instance", id)
			p.event(id, EventRemoved, "")
		}
	}
}

// same reports whether ep is the endpoint a picker would get for ms.
func (ep *Endpoint) same(ms *MemberStatus) bool {
	return ep.ID == ms.ID && ep.Addr == ms.Addr && ep.Weight == ms.Weight && ep.Stats == ms.Stats
}

// admits reports whether the registry lets a member serve: it is valid
// and passing, or warning unless passingOnly.
func admits(ms MemberStatus, passingOnly bool) bool {
	return ms.Invalid == "" && ms.Consul.eligible() && !(passingOnly && ms.Consul == HealthWarning)
}

// consulError is the snapshot's ConsulError: the local datacenter's error
// and each failing failover datacenter's, named, joined by "; ".
func consulError(st *poolState) string {
	if len(st.remoteErrors) == 0 {
		return st.consulError
	}
	var parts []string
	if st.consulError != "" {
		parts = append(parts, st.consulError)
	}
	for _, dc := range st.failover {
		if e := st.remoteErrors[dc]; e != "" {
			parts = append(parts, "datacenter "+dc+": "+e)
		}
	}
	return strings.Join(parts, "; ")
}

// tierName names a tier for Snapshot.Serving.
func tierName(tier int, failover []string) string {
	name := "local"
	if dc := tier / 2; dc > 0 {
		name = "dc#" + strconv.Itoa(dc)
		if dc <= len(failover) {
			name = failover[dc-1]
		}
	}
	if tier%2 == 1 {
		name += " backup"
	}
	return name
}

// event records a transition of the pool (instance "") or of one instance;
// only the owner calls it.
func (p *Pool) event(instance string, kind EventKind, detail string) {
	p.opts.Events.Add(Event{Service: p.opts.Service, Instance: instance, Kind: kind, Detail: detail})
}

// reason names what makes a member eligible or not, first cause first.
func reason(ms MemberStatus) string {
	switch {
	case ms.Eligible && ms.Panic:
		return "eligible (panic mode)"
	case ms.Eligible:
		return "eligible"
	case ms.Invalid != "":
		return "invalid: " + ms.Invalid
	case !ms.Consul.eligible():
		return "consul " + string(ms.Consul)
	case ms.passingOnly && ms.Consul == HealthWarning:
		return "consul warning (passing_only)"
	case ms.Probe == ProbeFailing:
		return "probe failing"
	default:
		return "ejected"
	}
}

func minWake(a, b time.Duration) time.Duration {
	if a <= 0 {
		return max(b, 1)
	}
	return max(min(a, b), 1)
}

// applySlowStart sets the effective weights of eps: while any instance is
// within SlowStart of becoming eligible, every weight is multiplied by
// slowStartScale and a ramping one by 10%..100% of that, linear in time.
// It reports whether an instance is still ramping.
func (p *Pool) applySlowStart(st *poolState, eps []*Endpoint, now int64) (ramping bool) {
	if st.policy.SlowStart <= 0 || len(st.since) == 0 {
		return false
	}
	window := int64(st.policy.SlowStart)
	for id, since := range st.since {
		if now-since >= window || !st.eligible[id] {
			delete(st.since, id)
		}
	}
	if len(st.since) == 0 {
		return false
	}
	for _, ep := range eps {
		w := float64(ep.Weight * slowStartScale)
		if since, ok := st.since[ep.ID]; ok {
			w *= slowStartFloor + (1-slowStartFloor)*float64(now-since)/float64(window)
		}
		ep.Weight = max(1, int(w+0.5))
	}
	return true
}
