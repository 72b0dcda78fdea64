package balance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestEventLogRing(t *testing.T) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n := 0
	l := NewEventLog(0, func() time.Time { n++; return base.Add(time.Duration(n) * time.Second) })
	if have, seq := l.Events(); len(have) != 0 || seq != 0 {
		t.Fatalf("empty log: %v %d", have, seq)
	}
	changed := l.Changed()
	l.Add(Event{Kind: EventAdded, Instance: "i0"})
	select {
	case <-changed:
	default:
		t.Fatal("Changed not closed by Add")
	}
	for i := 1; i < 250; i++ {
		l.Add(Event{Kind: EventAdded, Instance: fmt.Sprint("i", i)})
	}
	have, seq := l.Events()
	if len(have) != DefaultEventLogSize || seq != 250 {
		t.Fatalf("want %d events up to 250, have %d up to %d", DefaultEventLogSize, len(have), seq)
	}
	for i, e := range have {
		want := uint64(151 + i)
		if e.Seq != want || e.Instance != fmt.Sprint("i", want-1) || !e.Time.Equal(base.Add(time.Duration(want)*time.Second)) {
			t.Fatalf("event %d: want seq %d, have %+v", i, want, e)
		}
	}
	// A time given is kept.
	l.Add(Event{Kind: EventReload, Time: base})
	if have, _ := l.Events(); !have[len(have)-1].Time.Equal(base) {
		t.Fatalf("given time replaced: %v", have[len(have)-1].Time)
	}

	var none *EventLog
	none.Add(Event{Kind: EventAdded})
	if have, seq := none.Events(); have != nil || seq != 0 || none.Changed() != nil {
		t.Fatal("nil log recorded something")
	}
}

// TestPoolEvents: each transition of a pool is one event, in order;
// repeats of the same state are not.
func TestPoolEvents(t *testing.T) {
	clock := newFakeClock()
	events := NewEventLog(10, nil)
	build, _ := Lookup("round_robin")
	p := NewPool(PoolOptions{Service: "web", Builder: build, Clock: clock.now, Events: events,
		Passive: &PassiveOptions{ConsecutiveFailures: 1, EjectionTime: 10 * time.Second, MaxEjectionPercent: 50}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var seen uint64
	expect := func(step string, want ...string) {
		t.Helper()
		refresh(t, p)
		all, _ := events.Events()
		var have []string
		for _, e := range all {
			if e.Seq > seen {
				have = append(have, strings.TrimSpace(fmt.Sprintf("%s %s %s", e.Instance, e.Kind, e.Detail)))
				if e.Service != "web" || e.Time.IsZero() {
					t.Errorf("%s: event %+v", step, e)
				}
				seen = e.Seq
			}
		}
		if strings.Join(have, "\n") != strings.Join(want, "\n") {
			t.Fatalf("%s: want events\n%s\nhave\n%s", step, strings.Join(want, "\n"), strings.Join(have, "\n"))
		}
	}

	setMembers(t, p, 1, member("a", 1, HealthPassing), member("b", 1, HealthCritical))
	expect("first answer", "a added 127.0.0.1:1, consul passing", "b added 127.0.0.1:1, consul critical", "b ineligible consul critical")
	setMembers(t, p, 2, member("a", 1, HealthPassing), member("b", 1, HealthCritical))
	expect("same answer")

	p.SetError(ctx, errors.New("connection refused"))
	p.SetError(ctx, errors.New("connection refused"))
	expect("error twice", "consul_error connection refused")
	setMembers(t, p, 3, member("a", 1, HealthPassing), member("b", 1, HealthPassing))
	expect("recovery", "consul_recovered", "b eligible")

	p.SetProbe(ctx, "a", ProbeFailing)
	p.SetProbe(ctx, "a", ProbeFailing)
	expect("probe failing", "a probe unknown -> failing", "a ineligible probe failing")
	p.SetProbe(ctx, "a", ProbePassing)
	expect("probe passing", "a probe failing -> passing", "a eligible")

	failN(t, p, "b", 1, errBoom)
	waitFor(t, "b ejected", func() bool { return status(p, "b").Ejected })
	if until := status(p, "b").EjectedUntil; time.Until(until) < 9*time.Second || time.Until(until) > 11*time.Second {
		t.Errorf("b ejected until %v, want about 10 s from now", until)
	}
	expect("ejection", "b ejected for 10s", "b ineligible ejected")
	clock.advance(10 * time.Second)
	expect("ejection over", "b ejection_ended", "b eligible")

	setMembers(t, p, 4, member("a", 1, HealthPassing))
	expect("removal", "b removed")
}

// TestEffectiveWeight: a slow-starting instance shows the share of its
// weight the picker uses; others their weight; ineligible ones 0.
func TestEffectiveWeight(t *testing.T) {
	clock := newFakeClock()
	build, _ := Lookup("weighted_round_robin")
	p := NewPool(PoolOptions{Service: "web", Builder: build, Clock: clock.now, SlowStart: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	setMembers(t, p, 1, member("a", 4, HealthPassing), member("c", 2, HealthCritical))
	setMembers(t, p, 2, member("a", 4, HealthPassing), member("b", 2, HealthPassing), member("c", 2, HealthCritical))
	clock.advance(5 * time.Second)
	snap := refresh(t, p)
	want := map[string]float64{"a": 4, "b": 2 * (0.1 + 0.9*0.5), "c": 0}
	for _, m := range snap.Members {
		if d := m.EffectiveWeight - want[m.ID]; d > 0.011 || d < -0.011 {
			t.Errorf("%s: effective weight %v, want %v", m.ID, m.EffectiveWeight, want[m.ID])
		}
	}
}
