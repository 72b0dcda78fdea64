package balance

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

var errBoom = errors.New("boom")

// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func status(p *Pool, id string) MemberStatus {
	for _, m := range p.Load().Members {
		if m.ID == id {
			return m
		}
	}
	return MemberStatus{}
}

// failN picks id n times (excluding the others) and ends each pick with err.
func failN(t *testing.T, p *Pool, id string, n int, err error) {
	t.Helper()
	for i := 0; i < n; i++ {
		var info PickInfo
		for _, ep := range p.Load().Eligible {
			if ep.ID != id {
				info.Tried.Add(ep)
			}
		}
		res, perr := p.Load().Picker.Pick(info)
		if perr != nil || res.Endpoint.ID != id {
			t.Fatalf("pick %d of %s: %v %v", i, id, res.Endpoint, perr)
		}
		res.Done(err)
	}
}

// refresh republishes p and waits for that very publication, whose clock
// reading follows the call (and so any clock advance before it), and for
// everything sent to the owner before it. Waiting instead for any version
// newer than one read beforehand is not enough: a publication already under
// way (a wake, a failure report, an earlier Refresh not waited for) may have
// read the clock before an advance and still be the first newer version.
func refresh(t *testing.T, p *Pool) *Snapshot {
	t.Helper()
	ver := make(chan uint64, 1)
	if err := p.send(context.Background(), func(st *poolState) { ver <- st.version + 1 }); err != nil {
		t.Fatal(err)
	}
	want := <-ver
	timeout := time.After(5 * time.Second)
	for {
		snap := p.Load()
		if snap.Version >= want {
			return snap
		}
		select {
		case <-snap.Next():
		case <-timeout:
			t.Fatalf("snapshot %d not published", want)
		}
	}
}

func runPassivePool(t *testing.T, clock *fakeClock, pv PassiveOptions, ids ...string) *Pool {
	t.Helper()
	build, _ := Lookup("round_robin")
	p := NewPool(PoolOptions{Service: "web", Builder: build, Passive: &pv, Clock: clock.now})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	var ms []Member
	for _, id := range ids {
		ms = append(ms, member(id, 1, HealthPassing))
	}
	setMembers(t, p, 1, ms...)
	return p
}

func TestPassiveEjection(t *testing.T) {
	clock := newFakeClock()
	p := runPassivePool(t, clock, PassiveOptions{ConsecutiveFailures: 3, EjectionTime: 10 * time.Second, MaxEjectionPercent: 50}, "a", "b", "c", "d")

	// Two failures, a success, two failures: the count restarts, no ejection.
	failN(t, p, "a", 2, errBoom)
	failN(t, p, "a", 1, nil)
	failN(t, p, "a", 2, errBoom)
	if status(p, "a").Ejected {
		t.Fatal("ejected although a success reset the count")
	}
	// The third in a row ejects it, and the very next snapshot leaves it out.
	failN(t, p, "a", 1, errBoom)
	waitFor(t, "a ejected", func() bool { m := status(p, "a"); return m.Ejected && !m.Eligible })
	for _, ep := range p.Load().Eligible {
		if ep.ID == "a" {
			t.Fatal("ejected instance still eligible")
		}
	}
	// At most 50% of 4: b is ejected too, c is not.
	failN(t, p, "b", 3, errBoom)
	waitFor(t, "b ejected", func() bool { return status(p, "b").Ejected })
	failN(t, p, "c", 3, errBoom)
	// Wait until the owner has handled c's report (eject clears consec,
	// then reported), so it is judged now and not after the clock moves.
	cs := status(p, "c").Stats
	waitFor(t, "c's report handled", func() bool { return cs.consec.Load() == 0 && !cs.reported.Load() })
	refresh(t, p)
	if status(p, "c").Ejected {
		t.Fatal("more than max_ejection_percent ejected")
	}

	// The ejection ends after 10 s; the next one of a lasts 20 s.
	clock.advance(10 * time.Second)
	refresh(t, p)
	if status(p, "a").Ejected || !status(p, "a").Eligible {
		t.Fatal("a still ejected after ejection_time")
	}
	failN(t, p, "a", 3, errBoom)
	waitFor(t, "a ejected again", func() bool { return status(p, "a").Ejected })
	clock.advance(15 * time.Second)
	refresh(t, p)
	if !status(p, "a").Ejected {
		t.Fatal("second ejection did not double")
	}
	clock.advance(5 * time.Second)
	refresh(t, p)
	if status(p, "a").Ejected {
		t.Fatal("second ejection outlasted 20 s")
	}
}

func TestPassiveCancelIsNeutral(t *testing.T) {
	clock := newFakeClock()
	p := runPassivePool(t, clock, PassiveOptions{ConsecutiveFailures: 2, EjectionTime: time.Second, MaxEjectionPercent: 100}, "a", "b")
	failN(t, p, "a", 1, errBoom)
	res, _ := p.Load().Picker.Pick(PickInfo{})
	res.Cancel()
	if have := res.Endpoint.Stats.Inflight(); have != 0 {
		t.Fatalf("Cancel left %d in flight", have)
	}
	if have := status(p, "a").Stats.consec.Load(); have != 1 {
		t.Fatalf("Cancel changed the failure count: %d", have)
	}
}

func TestProbeVerdicts(t *testing.T) {
	p := runPool(t, "round_robin")
	setMembers(t, p, 1, member("a", 1, HealthPassing), member("b", 1, HealthCritical))
	ctx := context.Background()
	for _, tc := range []struct {
		id           string
		probe        ProbeState
		wantEligible bool
	}{
		{"a", ProbeFailing, false}, // probe failing while Consul passes
		{"a", ProbePassing, true},
		{"b", ProbePassing, false}, // Consul critical while the probe passes
		{"zz", ProbePassing, false},
	} {
		if err := p.SetProbe(ctx, tc.id, tc.probe); err != nil {
			t.Fatal(err)
		}
		refresh(t, p)
		m := status(p, tc.id)
		if tc.id == "zz" {
			if m.ID != "" {
				t.Fatal("verdict for an unknown instance created it")
			}
			continue
		}
		if m.Probe != tc.probe || m.Eligible != tc.wantEligible {
			t.Errorf("%s probe %s: want eligible %v, have %+v", tc.id, tc.probe, tc.wantEligible, m)
		}
	}
}

func TestSnapshotNext(t *testing.T) {
	p := runPool(t, "round_robin")
	first := p.Load()
	select {
	case <-first.Next():
		t.Fatal("Next closed before a newer snapshot")
	default:
	}
	setMembers(t, p, 1, member("a", 1, HealthPassing))
	select {
	case <-first.Next():
	case <-time.After(5 * time.Second):
		t.Fatal("Next not closed after a publication")
	}
}

func TestPoolInvalidMembers(t *testing.T) {
	p := runPool(t, "round_robin")
	bad := member("b", 1, HealthPassing)
	bad.Invalid = "invalid port"
	noAddr := member("c", 1, HealthPassing)
	noAddr.Addr = ""
	dup1, dup2 := member("e", 1, HealthPassing), member("e", 5, HealthPassing)
	dup2.Addr = "127.0.0.1:2"
	snap := setMembers(t, p, 1, dup1, member("a", 1, HealthPassing), bad, noAddr, dup2)

	want := []struct{ id, addr, invalid string }{
		{"a", "127.0.0.1:1", ""},
		{"b", "127.0.0.1:1", "invalid port"},
		{"c", "", "no address"},
		{"e", "127.0.0.1:1", "duplicate instance ID"}, // the first of the two is kept
	}
	if len(snap.Members) != len(want) {
		t.Fatalf("want %d members, have %+v", len(want), snap.Members)
	}
	for i, w := range want {
		have := snap.Members[i]
		if have.ID != w.id || have.Addr != w.addr || have.Invalid != w.invalid || have.Eligible != (w.invalid == "") {
			t.Errorf("member %d: want %+v, have %+v", i, w, have)
		}
	}
	if len(snap.Eligible) != 1 || snap.Eligible[0].ID != "a" {
		t.Fatalf("eligible: want only a, have %v", snap.Eligible)
	}
	for i := 0; i < 10; i++ {
		res, err := snap.Picker.Pick(PickInfo{})
		if err != nil || res.Endpoint.ID != "a" {
			t.Fatalf("pick %d: want a, have %v %v", i, res.Endpoint, err)
		}
		res.Done(nil)
	}
	if have := reason(snap.Members[1]); have != "invalid: invalid port" {
		t.Errorf("reason: want %q, have %q", "invalid: invalid port", have)
	}

	// Fixed in the next answer: eligible with the counters it had.
	stats := snap.Members[1].Stats
	bad.Invalid = ""
	setMembers(t, p, 2, member("a", 1, HealthPassing), bad)
	if m := status(p, "b"); !m.Eligible || m.Invalid != "" || m.Stats != stats {
		t.Errorf("fixed member: want eligible with its stats, have %+v", m)
	}
}

// A registry answer that leaves eligibility and weights as they were
// (the same set again, or a passing <-> warning flip) keeps the picker:
// no rebuild. Anything the picker depends on (tiers included) builds a new one.
func TestPoolKeepsPickerWhenEndpointsUnchanged(t *testing.T) {
	var builds atomic.Int64
	rr, _ := Lookup("round_robin")
	counting := func(eps []*Endpoint, sh *Shared) Picker { builds.Add(1); return rr(eps, sh) }
	clock := newFakeClock()
	p := NewPool(PoolOptions{Service: "web", Builder: counting, Clock: clock.now})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	set := []Member{member("a", 1, HealthPassing), member("b", 2, HealthPassing), member("c", 1, HealthCritical)}
	first := setMembers(t, p, 1, set...)
	if builds.Load() != 1 {
		t.Fatalf("first answer: want 1 build, have %d", builds.Load())
	}
	step := func(name string, wantBuild bool, change func() *Snapshot) {
		t.Helper()
		before, prev := builds.Load(), p.Load()
		snap := change()
		if built := builds.Load() != before; built != wantBuild {
			t.Fatalf("%s: want a rebuild %v, have %v", name, wantBuild, built)
		}
		if !wantBuild && (snap.Picker != prev.Picker || &snap.Eligible[0] != &prev.Eligible[0]) {
			t.Fatalf("%s: picker or endpoints not kept", name)
		}
	}
	step("same answer", false, func() *Snapshot { return setMembers(t, p, 2, set...) })
	set[0].Consul = HealthWarning
	step("passing to warning", false, func() *Snapshot {
		snap := setMembers(t, p, 3, set...)
		if snap.Members[0].Consul != HealthWarning || snap.ConsulIndex != 3 {
			t.Fatalf("the snapshot does not show the answer: %+v", snap.Members[0])
		}
		return snap
	})
	step("a Consul error", false, func() *Snapshot {
		if err := p.SetError(ctx, errBoom); err != nil {
			t.Fatal(err)
		}
		return refresh(t, p)
	})
	set[1].Weight = 3
	step("weight", true, func() *Snapshot { return setMembers(t, p, 4, set...) })
	set[2].Consul = HealthPassing
	step("eligibility", true, func() *Snapshot { return setMembers(t, p, 5, set...) })
	set[2].Addr = "127.0.0.1:2"
	step("address", true, func() *Snapshot { return setMembers(t, p, 6, set...) })
	step("removal", true, func() *Snapshot { return setMembers(t, p, 7, set[:2]...) })
	step("policy", true, func() *Snapshot {
		if err := p.SetPolicy(ctx, Policy{Strategy: "round_robin", Builder: counting}); err != nil {
			t.Fatal(err)
		}
		return refresh(t, p)
	})
	step("same answer after all", false, func() *Snapshot { return setMembers(t, p, 8, set[:2]...) })
	set[0].Backup = true
	step("tier", true, func() *Snapshot {
		snap := setMembers(t, p, 9, set[:2]...)
		if snap.Serving != "local" || !snap.Members[0].Standby || snap.Members[1].Standby {
			t.Fatalf("a backup: serving %q, members %+v", snap.Serving, snap.Members)
		}
		return snap
	})
	step("same tiers", false, func() *Snapshot { return setMembers(t, p, 10, set[:2]...) })
	if s := status(p, "a"); s.Stats != first.Members[0].Stats {
		t.Fatal("stats of a kept instance replaced")
	}
}

// While an instance slow-starts every publication builds its picker with
// the weights of the moment; once the ramp is over, answers that change
// nothing keep it again.
func TestPoolRebuildsWhileRamping(t *testing.T) {
	var builds atomic.Int64
	rr, _ := Lookup("weighted_round_robin")
	counting := func(eps []*Endpoint, sh *Shared) Picker { builds.Add(1); return rr(eps, sh) }
	clock := newFakeClock()
	p := NewPool(PoolOptions{Service: "web", Builder: counting, Clock: clock.now, SlowStart: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	setMembers(t, p, 1, member("a", 1, HealthPassing))
	setMembers(t, p, 2, member("a", 1, HealthPassing), member("b", 1, HealthPassing)) // b ramps
	clock.advance(time.Second)
	before := builds.Load()
	snap := setMembers(t, p, 3, member("a", 1, HealthPassing), member("b", 1, HealthWarning))
	if builds.Load() == before {
		t.Fatal("no rebuild while b ramps")
	}
	if w := snap.Members[1].EffectiveWeight; w >= 1 {
		t.Fatalf("b not ramping: effective weight %v", w)
	}
	clock.advance(20 * time.Second)
	snap = refresh(t, p) // the ramp ends: weights back to whole
	if w := snap.Members[1].EffectiveWeight; w != 1 {
		t.Fatalf("b after the ramp: effective weight %v", w)
	}
	before = builds.Load()
	setMembers(t, p, 4, member("a", 1, HealthPassing), member("b", 1, HealthPassing))
	if builds.Load() != before {
		t.Fatal("rebuilt after the ramp for an answer that changes nothing")
	}
}
