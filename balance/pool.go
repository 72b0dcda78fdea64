package balance

import (
	"context"
	"errors"
	"sort"
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
}

// Reason names what makes the member eligible or not, first cause first:
// "eligible", "invalid: ...", "consul critical", "probe failing", "ejected".
func (ms MemberStatus) Reason() string { return reason(ms) }

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
	Eligible          []*Endpoint    // the members the picker chooses from, sorted by ID
	Picker            Picker
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
}

// Policy is the part of PoolOptions a running pool can change (SetPolicy):
// the fields of the same names there.
type Policy struct {
	Strategy  string
	Sticky    string
	Builder   Builder // required
	SlowStart time.Duration
	Passive   *PassiveOptions
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
	consulErrors      uint64    // SetError calls so far
	consulAnswers     uint64    // SetMembers calls so far
	consulLastSuccess time.Time // wall clock of the last SetMembers; zero before
	members           []Member  // sorted by ID
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
	initial := Policy{Strategy: opts.Strategy, Sticky: opts.Sticky, Builder: opts.Builder, SlowStart: opts.SlowStart, Passive: normalisePassive(opts.Passive)}
	opts.Strategy, opts.Sticky, opts.Builder, opts.SlowStart, opts.Passive = "", "", nil, 0, nil
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

// SetMembers replaces the full member set (a registry answer with index).
// It blocks until the owner takes the change or ctx is done. Member IDs
// must be unique: of members sharing an ID only the first is kept, and it
// is invalid, so two instances never share counters.
func (p *Pool) SetMembers(ctx context.Context, index uint64, members []Member) error {
	ms := append([]Member(nil), members...)
	if !sort.SliceIsSorted(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID }) {
		sort.SliceStable(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID })
	}
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
	ms = kept
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
		st.members = ms
	})
}

// SetError records a failed registry query; the current members keep serving.
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
		ConsulError:       st.consulError,
		ConsulErrors:      st.consulErrors,
		ConsulAnswers:     st.consulAnswers,
		ConsulLastSuccess: st.consulLastSuccess,
		Members:           make([]MemberStatus, 0, len(st.members)),
		next:              make(chan struct{}),
	}
	// The picker of the previous snapshot is kept when it would be built
	// from the same endpoints (see samePicker): a change of Consul health
	// that leaves eligibility and weights as they were costs no rebuild.
	prev := p.snap.Load()
	same := prev.Synced && !st.newPolicy && !st.ramped
	nEligible := 0
	known := 0 // members that had Stats before this publication
	nStats := len(st.stats)
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
		ms.Eligible = ms.Invalid == "" && (ms.Consul.eligible()) && ms.Probe != ProbeFailing && !ms.Ejected
		if was, known := st.eligible[m.ID]; !known || was != ms.Eligible {
			if known || !ms.Eligible {
				p.opts.Logger.Info("instance eligibility changed", "service", p.opts.Service, "instance", m.ID,
					"eligible", ms.Eligible, "reason", reason(ms), "consul", ms.Consul, "probe", ms.Probe, "ejected", ms.Ejected)
				if ms.Eligible {
					p.event(m.ID, EventEligible, "")
				} else {
					p.event(m.ID, EventIneligible, reason(ms))
				}
			}
			if ms.Eligible && st.warm && st.policy.SlowStart > 0 {
				st.since[m.ID] = now
			}
			st.eligible[m.ID] = ms.Eligible
		}
		snap.Members = append(snap.Members, ms)
		if ms.Eligible {
			if same {
				same = nEligible < len(prev.Eligible) && prev.Eligible[nEligible].same(&ms)
			}
			nEligible++
		}
	}
	same = same && nEligible == len(prev.Eligible)
	ramping := false
	if same {
		snap.Eligible = prev.Eligible
	} else {
		snap.Eligible = make([]*Endpoint, 0, nEligible)
		for i := range snap.Members {
			if ms := &snap.Members[i]; ms.Eligible {
				snap.Eligible = append(snap.Eligible, &Endpoint{ID: ms.ID, Addr: ms.Addr, Weight: ms.Weight, Stats: ms.Stats})
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
		j++
	}
	if known < nStats {
		p.forget(st)
	}
	if same {
		snap.Picker = prev.Picker
	} else {
		snap.Picker = st.policy.Builder(snap.Eligible, &p.shared)
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

// event records a transition of the pool (instance "") or of one instance;
// only the owner calls it.
func (p *Pool) event(instance string, kind EventKind, detail string) {
	p.opts.Events.Add(Event{Service: p.opts.Service, Instance: instance, Kind: kind, Detail: detail})
}

// reason names what makes a member eligible or not, first cause first.
func reason(ms MemberStatus) string {
	switch {
	case ms.Eligible:
		return "eligible"
	case ms.Invalid != "":
		return "invalid: " + ms.Invalid
	case !ms.Consul.eligible():
		return "consul " + string(ms.Consul)
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
