package balance

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// setPolicy applies pol and waits until the owner has published it.
func setPolicy(t *testing.T, p *Pool, pol Policy) *Snapshot {
	t.Helper()
	if err := p.SetPolicy(context.Background(), pol); err != nil {
		t.Fatal(err)
	}
	return refresh(t, p)
}

func policy(t *testing.T, strategy string, pv *PassiveOptions) Policy {
	t.Helper()
	build, ok := Lookup(strategy)
	if !ok {
		t.Fatalf("unknown strategy %q", strategy)
	}
	return Policy{Strategy: strategy, Builder: build, Passive: pv}
}

func pickIDs(t *testing.T, p *Pool, n int) string {
	t.Helper()
	return sequence(t, p.Load().Picker, n)
}

// TestSetPolicyKeepsState: a policy change keeps the rotation position,
// in-flight counts, EWMA, ejections and probe verdicts, and the next pick
// uses the new strategy.
func TestSetPolicyKeepsState(t *testing.T) {
	clock := newFakeClock()
	pv := PassiveOptions{ConsecutiveFailures: 3, EjectionTime: 10 * time.Second, MaxEjectionPercent: 50}
	p := runPassivePool(t, clock, pv, "a", "b", "c", "d", "e")
	ctx := context.Background()

	failN(t, p, "a", 3, errBoom)
	waitFor(t, "a ejected", func() bool { return status(p, "a").Ejected })
	if err := p.SetProbe(ctx, "b", ProbeFailing); err != nil {
		t.Fatal(err)
	}
	refresh(t, p)
	stats := map[string]*Stats{}
	for _, m := range p.Load().Members {
		stats[m.ID] = m.Stats
	}
	stats["c"].observe(clock.now(), int64(7*time.Millisecond))
	wantEWMA := stats["c"].EWMA()

	// Eligible: c d e. Four picks leave the rotation at d.
	if have := pickIDs(t, p, 4); have != "cdec" {
		t.Fatalf("before: want cdec, have %s", have)
	}
	// Picks held open across the changes.
	var held []PickResult
	hold := func(want string) {
		t.Helper()
		res, err := p.Load().Picker.Pick(PickInfo{})
		if err != nil || res.Endpoint.ID != want {
			t.Fatalf("held pick: want %s, have %v %v", want, res.Endpoint, err)
		}
		held = append(held, res)
	}
	hold("d")

	// Same strategy, another passive threshold: the rotation goes on at e
	// (a new one would start at c).
	pv.ConsecutiveFailures = 5
	snap := setPolicy(t, p, policy(t, "round_robin", &pv))
	if have := pickIDs(t, p, 3); have != "ecd" {
		t.Fatalf("rotation after SetPolicy: want ecd, have %s", have)
	}
	check := func(when string) {
		t.Helper()
		for _, m := range p.Load().Members {
			if m.Stats != stats[m.ID] {
				t.Errorf("%s: %s has new Stats", when, m.ID)
			}
		}
		if m := status(p, "a"); !m.Ejected || m.Eligible {
			t.Errorf("%s: a no longer ejected: %+v", when, m)
		}
		if m := status(p, "b"); m.Probe != ProbeFailing || m.Eligible {
			t.Errorf("%s: b lost its probe verdict: %+v", when, m)
		}
		if have := stats["c"].EWMA(); have != wantEWMA {
			t.Errorf("%s: EWMA of c: want %v, have %v", when, wantEWMA, have)
		}
		var inflight int64
		for _, s := range stats {
			inflight += s.Inflight()
		}
		if inflight != int64(len(held)) || stats["d"].Inflight() != 1 {
			t.Errorf("%s: want %d picks in flight, one on d, have %d", when, len(held), inflight)
		}
	}
	check("round_robin")
	if snap.Strategy != "round_robin" {
		t.Errorf("snapshot strategy: want round_robin, have %q", snap.Strategy)
	}
	hold("e")

	// Another strategy applies to the next pick: with d and e busy,
	// least_connections always picks c.
	snap = setPolicy(t, p, policy(t, "least_connections", &pv))
	if snap.Strategy != "least_connections" {
		t.Errorf("snapshot strategy: want least_connections, have %q", snap.Strategy)
	}
	if have := pickIDs(t, p, 5); have != "ccccc" {
		t.Fatalf("least_connections: want ccccc, have %s", have)
	}
	check("least_connections")
	for _, res := range held {
		res.Done(nil)
	}
	for id, s := range stats {
		if have := s.Inflight(); have != 0 {
			t.Errorf("%s in flight after Done: want 0, have %d", id, have)
		}
	}
}

// TestSetPolicyPassive: a new threshold applies to the next failure; with
// passive ejection removed, an ejection in progress runs to its end and
// failures eject no more; passive ejection added to a pool without it
// applies to instances it already has.
func TestSetPolicyPassive(t *testing.T) {
	clock := newFakeClock()
	pv := PassiveOptions{ConsecutiveFailures: 5, EjectionTime: 10 * time.Second, MaxEjectionPercent: 50}
	p := runPassivePool(t, clock, pv, "a", "b", "c", "d")

	failN(t, p, "a", 2, errBoom)
	pv.ConsecutiveFailures = 3
	setPolicy(t, p, policy(t, "round_robin", &pv))
	failN(t, p, "a", 1, errBoom) // the third in a row
	waitFor(t, "a ejected at the new threshold", func() bool { return status(p, "a").Ejected })
	if have := status(p, "a").Stats.Ejections(); have != 1 {
		t.Fatalf("a's ejections: want 1, have %d", have)
	}

	setPolicy(t, p, policy(t, "round_robin", nil))
	if !status(p, "a").Ejected {
		t.Fatal("removing passive ejection ended an ejection in progress")
	}
	failN(t, p, "b", 10, errBoom)
	if have := status(p, "b").Stats.consec.Load(); have != 0 {
		t.Fatalf("failures counted without passive ejection: %d", have)
	}
	clock.advance(10 * time.Second)
	refresh(t, p)
	if m := status(p, "a"); m.Ejected || !m.Eligible {
		t.Fatalf("a still ejected after its ejection time: %+v", m)
	}
	if status(p, "b").Ejected {
		t.Fatal("b ejected without passive ejection")
	}

	// Back on, with a threshold of 1: the existing b is judged by it.
	pv.ConsecutiveFailures = 1
	setPolicy(t, p, policy(t, "round_robin", &pv))
	failN(t, p, "b", 1, errBoom)
	waitFor(t, "b ejected", func() bool { return status(p, "b").Ejected })
	if have := status(p, "b").Stats.Ejections(); have != 1 {
		t.Fatalf("b's ejections: want 1, have %d", have)
	}
	if have := status(p, "a").Stats.Ejections(); have != 1 {
		t.Fatalf("a's ejections: want 1, have %d", have)
	}
}

// TestSetPolicySlowStart: a ramping instance continues on the new window
// from the time it became eligible; 0 ends the ramp.
func TestSetPolicySlowStart(t *testing.T) {
	clock := newFakeClock()
	build, _ := Lookup("weighted_round_robin")
	p := NewPool(PoolOptions{Service: "web", Strategy: "weighted_round_robin", Builder: build, SlowStart: 30 * time.Second, Clock: clock.now})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	weight := func(id string) int {
		for _, ep := range p.Load().Eligible {
			if ep.ID == id {
				return ep.Weight
			}
		}
		return 0
	}
	setMembers(t, p, 1, member("a", 1, HealthPassing))
	setMembers(t, p, 2, member("a", 1, HealthPassing), member("b", 1, HealthPassing))
	clock.advance(15 * time.Second)
	refresh(t, p)
	if have := weight("b"); have != 55 { // 10% + 90% * 15/30 of 100
		t.Fatalf("b at 15 s of 30: want 55, have %d", have)
	}
	pol := Policy{Strategy: "weighted_round_robin", Builder: build, SlowStart: 60 * time.Second}
	setPolicy(t, p, pol)
	if have := weight("b"); have != 33 { // 10% + 90% * 15/60 of 100, rounded
		t.Fatalf("b at 15 s of 60: want 33, have %d", have)
	}
	pol.SlowStart = 0
	setPolicy(t, p, pol)
	if a, b := weight("a"), weight("b"); a != 1 || b != 1 {
		t.Fatalf("slow start off: want weights 1 and 1, have %d and %d", a, b)
	}
}

func TestSetPolicyNeedsBuilder(t *testing.T) {
	p := runPool(t, "round_robin")
	if err := p.SetPolicy(context.Background(), Policy{Strategy: "round_robin"}); err == nil {
		t.Fatal("SetPolicy accepted a policy without a Builder")
	}
}

// TestSetPolicyDuringPicks: picks and failures race with policy changes
// (run under -race).
func TestSetPolicyDuringPicks(t *testing.T) {
	clock := newFakeClock()
	pv := PassiveOptions{ConsecutiveFailures: 2, EjectionTime: time.Second, MaxEjectionPercent: 50}
	p := runPassivePool(t, clock, pv, "a", "b", "c", "d")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				res, err := p.Load().Picker.Pick(PickInfo{})
				if err != nil {
					continue
				}
				if i%3 == 0 {
					res.Done(errBoom)
				} else {
					res.Done(nil)
				}
			}
		}()
	}
	for i, strategy := range []string{"p2c", "ewma", "least_connections", "random", "round_robin", "weighted_round_robin"} {
		var pol *PassiveOptions
		if i%2 == 0 {
			pv.ConsecutiveFailures = 1 + i
			pol = &pv
		}
		setPolicy(t, p, policy(t, strategy, pol))
		clock.advance(time.Second)
	}
	close(stop)
	wg.Wait()
	for _, m := range p.Load().Members {
		if have := m.Stats.Inflight(); have != 0 {
			t.Errorf("%s: %d in flight after every pick ended", m.ID, have)
		}
	}
}

func TestClearProbes(t *testing.T) {
	p := runPool(t, "round_robin")
	setMembers(t, p, 1, member("a", 1, HealthPassing), member("b", 1, HealthPassing))
	ctx := context.Background()
	for id, state := range map[string]ProbeState{"a": ProbeFailing, "b": ProbePassing} {
		if err := p.SetProbe(ctx, id, state); err != nil {
			t.Fatal(err)
		}
	}
	if snap := refresh(t, p); len(snap.Eligible) != 1 {
		t.Fatalf("want only b eligible, have %v", snap.Eligible)
	}
	if err := p.ClearProbes(ctx); err != nil {
		t.Fatal(err)
	}
	snap := refresh(t, p)
	for _, m := range snap.Members {
		if m.Probe != ProbeUnknown || !m.Eligible {
			t.Errorf("after ClearProbes: want %s unknown and eligible, have %+v", m.ID, m)
		}
	}
}

func TestConsulCounters(t *testing.T) {
	p := runPool(t, "round_robin")
	if snap := p.Load(); !snap.ConsulLastSuccess.IsZero() || snap.ConsulErrors != 0 {
		t.Fatalf("new pool: want no success and no errors, have %v %d", snap.ConsulLastSuccess, snap.ConsulErrors)
	}
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := p.SetError(ctx, errors.New("no leader")); err != nil {
			t.Fatal(err)
		}
	}
	if snap := refresh(t, p); snap.ConsulErrors != 2 || !snap.ConsulLastSuccess.IsZero() {
		t.Fatalf("after 2 errors: have %d errors, last success %v", snap.ConsulErrors, snap.ConsulLastSuccess)
	}
	before := time.Now()
	snap := setMembers(t, p, 3, member("a", 1, HealthPassing))
	after := time.Now()
	if have := snap.ConsulLastSuccess; have.Before(before) || have.After(after) {
		t.Fatalf("last success %v not within [%v, %v]", have, before, after)
	}
	if snap.ConsulErrors != 2 || snap.ConsulError != "" {
		t.Fatalf("an answer must clear the error but keep the count: %d %q", snap.ConsulErrors, snap.ConsulError)
	}
}
