package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
)

func probeState(p *balance.Pool, id string) balance.ProbeState {
	for _, m := range p.Load().Members {
		if m.ID == id {
			return m.Probe
		}
	}
	return ""
}

func TestProberRiseFall(t *testing.T) {
	var fail, hold atomic.Bool
	var probes atomic.Int64
	held, released := make(chan struct{}, 1), make(chan struct{}, 1)
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probes.Add(1)
		if hold.Load() {
			// Held until the prober gives up on it: its timeout (5 s) is
			// far, so that is its loop being cancelled.
			held <- struct{}{}
			<-r.Context().Done()
			released <- struct{}{}
			return
		}
		if r.URL.Path != "/healthz" || fail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer b.Close()
	tcpDead := deadAddr(t)
	p := pool(t, "round_robin", m("http", hostOf(b), 1), m("tcp-dead", tcpDead, 1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	pr := NewProber(p, ProbeOptions{Type: "http", Path: "/healthz", Interval: 20 * time.Millisecond, Timeout: 5 * time.Second, Rise: 3, Fall: 2}, nil)
	go func() { pr.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	wait := func(id string, want balance.ProbeState) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for probeState(p, id) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: want probe %s, have %s", id, want, probeState(p, id))
			}
			time.Sleep(time.Millisecond)
		}
	}
	wait("http", balance.ProbePassing)
	wait("tcp-dead", balance.ProbeFailing) // nothing listens: the http probe fails

	fail.Store(true)
	wait("http", balance.ProbeFailing)
	fail.Store(false)
	before := probes.Load()
	wait("http", balance.ProbePassing)
	if n := probes.Load() - before; n < 3 {
		t.Errorf("back to passing after %d probes, want rise = 3", n)
	}

	// The probe loop of a removed instance stops: removed while a probe
	// of it is in flight (held by the instance), the loop cancels that
	// probe and, its context done, sends no other.
	hold.Store(true)
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("no probe reached the instance")
	}
	p.SetMembers(context.Background(), 2, []balance.Member{m("tcp-dead", tcpDead, 1)})
	select {
	case <-released:
	case <-time.After(4 * time.Second):
		t.Fatal("the probe in flight of a removed instance was not cancelled")
	}
	settled := probes.Load()
	// A bound, not a synchronisation: the loop has ended, and 10
	// intervals without a probe show no other loop took its place.
	time.Sleep(200 * time.Millisecond)
	if n := probes.Load() - settled; n != 0 {
		t.Errorf("removed instance still probed %d times", n)
	}
}

func TestTCPProbe(t *testing.T) {
	live := echoServer(t)
	p := pool(t, "round_robin", m("live", live, 1), m("dead", deadAddr(t), 1))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go NewProber(p, ProbeOptions{Type: "tcp", Interval: 20 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 1, Fall: 1}, nil).Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for probeState(p, "live") != balance.ProbePassing || probeState(p, "dead") != balance.ProbeFailing {
		if time.Now().After(deadline) {
			t.Fatalf("live %s, dead %s", probeState(p, "live"), probeState(p, "dead"))
		}
		time.Sleep(time.Millisecond)
	}
}

func TestParseProbeType(t *testing.T) {
	for _, pt := range ProbeTypes() {
		if have, err := ParseProbeType(string(pt)); err != nil || have != pt {
			t.Errorf("%q: have %q, %v", pt, have, err)
		}
	}
	for _, s := range []string{"", "HTTP", "grpc"} {
		if _, err := ParseProbeType(s); err == nil {
			t.Errorf("%q: want an error", s)
		}
	}
}

// TestProberStartsFromPoolVerdict: a prober started over a pool that
// holds verdicts (a prober replaced on reload) keeps a failing instance
// failing until Rise successes and a passing one passing until Fall
// failures.
func TestProberStartsFromPoolVerdict(t *testing.T) {
	var fail atomic.Bool
	var probes atomic.Int64
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probes.Add(1)
		if fail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer b.Close()
	p := pool(t, "round_robin", m("i", hostOf(b), 1))
	opts := ProbeOptions{Type: ProbeHTTP, Path: "/", Interval: 10 * time.Millisecond, Timeout: time.Second, Rise: 3, Fall: 3}
	run := func() func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { NewProber(p, opts, nil).Run(ctx); close(done) }()
		return func() { cancel(); <-done }
	}
	setVerdict := func(v balance.ProbeState) {
		if err := p.SetProbe(context.Background(), "i", v); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the pool to hold "+string(v), func() bool { return probeState(p, "i") == v })
	}

	// Failing in the pool, healthy now: Rise successes to pass.
	setVerdict(balance.ProbeFailing)
	probes.Store(0)
	stop := run()
	waitFor(t, "passing", func() bool { return probeState(p, "i") == balance.ProbePassing })
	if n := probes.Load(); n < int64(opts.Rise) {
		t.Errorf("failing -> passing after %d probes, want rise = %d", n, opts.Rise)
	}
	stop()

	// Passing in the pool, failing now: Fall failures to fail.
	setVerdict(balance.ProbePassing)
	fail.Store(true)
	probes.Store(0)
	stop = run()
	waitFor(t, "failing", func() bool { return probeState(p, "i") == balance.ProbeFailing })
	if n := probes.Load(); n < int64(opts.Fall) {
		t.Errorf("passing -> failing after %d probes, want fall = %d", n, opts.Fall)
	}
	stop()
}
