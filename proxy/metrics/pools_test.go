package metrics

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-lb/sluice/balance"
)

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

func runPool(t *testing.T, service string, passive *balance.PassiveOptions) *balance.Pool {
	t.Helper()
	build, _ := balance.Lookup("round_robin")
	p := balance.NewPool(balance.PoolOptions{Service: service, Strategy: "round_robin", Builder: build, Passive: passive})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

func member(id string, health balance.Health) balance.Member {
	return balance.Member{ID: id, Addr: "127.0.0.1:1", Weight: 1, Consul: health}
}

func memberStatus(p *balance.Pool, id string) balance.MemberStatus {
	for _, m := range p.Load().Members {
		if m.ID == id {
			return m
		}
	}
	return balance.MemberStatus{}
}

// gather scrapes c through a pedantic registry, which fails on a series
// that Describe did not announce, and returns every series' value by
// `name{label="value",...}` with labels sorted by name.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			key := f.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.GetGauge() != nil:
				series[key] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				series[key] = m.GetCounter().GetValue()
			default:
				t.Fatalf("%s: neither gauge nor counter", key)
			}
		}
	}
	return series
}

func TestPoolCollector(t *testing.T) {
	web := runPool(t, "web", &balance.PassiveOptions{ConsecutiveFailures: 1, EjectionTime: time.Hour, MaxEjectionPercent: 50})
	api := runPool(t, "api", nil) // never answered
	var pools atomic.Pointer[[]*balance.Pool]
	pools.Store(&[]*balance.Pool{web, api})
	c := NewPoolCollector(func() []*balance.Pool { return *pools.Load() })
	ctx := context.Background()

	before := time.Now()
	if err := web.SetMembers(ctx, 42, []balance.Member{
		member("n1/a", balance.HealthPassing),
		member("n1/b", balance.HealthPassing),
		member("n2/c", balance.HealthWarning),
		member("n2/d", balance.HealthCritical),
		member("n3/e", balance.HealthMaintenance),
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "members", func() bool { return web.Load().ConsulIndex == 42 })
	after := time.Now()
	if err := web.SetProbe(ctx, "n1/b", balance.ProbeFailing); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "probe verdict", func() bool { return memberStatus(web, "n1/b").Probe == balance.ProbeFailing })
	for i := 0; i < 2; i++ {
		if err := web.SetError(ctx, errors.New("no leader")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "errors", func() bool { return web.Load().ConsulErrors == 2 })

	// Eligible now: a and c. A pick of a stays in flight; c fails once,
	// which ejects it, and has errors counted by kind.
	held, err := web.Load().Picker.Pick(balance.PickInfo{})
	if err != nil || held.Endpoint.ID != "n1/a" {
		t.Fatalf("want a pick of n1/a, have %v %v", held.Endpoint, err)
	}
	defer held.Done(nil)
	var info balance.PickInfo
	info.Tried.Add(held.Endpoint)
	res, err := web.Load().Picker.Pick(info)
	if err != nil || res.Endpoint.ID != "n2/c" {
		t.Fatalf("want a pick of n2/c, have %v %v", res.Endpoint, err)
	}
	res.Endpoint.Stats.CountError(balance.ErrorConnect)
	res.Endpoint.Stats.CountError(balance.ErrorConnect)
	res.Endpoint.Stats.CountError(balance.ErrorStatus)
	res.Done(errors.New("502"))
	waitFor(t, "n2/c ejected", func() bool { return memberStatus(web, "n2/c").Ejected })

	// Every series of both services, 0 unless set below.
	want := map[string]float64{}
	for _, id := range []string{"n1/a", "n1/b", "n2/c", "n2/d", "n3/e"} {
		for _, name := range []string{"sluice_instance_up", "sluice_instance_inflight", "sluice_instance_ejections_total"} {
			want[fmt.Sprintf("%s{instance=%q,service=\"web\"}", name, id)] = 0
		}
		for _, k := range balance.ErrorKinds() {
			want[fmt.Sprintf("sluice_upstream_errors_total{instance=%q,kind=%q,service=\"web\"}", id, k)] = 0
		}
	}
	for _, svc := range []string{"web", "api"} {
		for _, state := range []string{"passing", "warning", "critical", "maintenance", "probe_failing", "ejected", "eligible"} {
			want[fmt.Sprintf("sluice_service_instances{service=%q,state=%q}", svc, state)] = 0
		}
		for _, name := range []string{"sluice_consul_last_success_timestamp_seconds", "sluice_consul_errors_total", "sluice_consul_answers_total", "sluice_consul_index", "sluice_service_panic"} {
			want[fmt.Sprintf("%s{service=%q}", name, svc)] = 0
		}
	}
	for key, v := range map[string]float64{
		`sluice_instance_up{instance="n1/a",service="web"}`:                          1,
		`sluice_instance_inflight{instance="n1/a",service="web"}`:                    1,
		`sluice_instance_ejections_total{instance="n2/c",service="web"}`:             1,
		`sluice_upstream_errors_total{instance="n2/c",kind="connect",service="web"}`: 2,
		`sluice_upstream_errors_total{instance="n2/c",kind="status",service="web"}`:  1,
		`sluice_service_instances{service="web",state="passing"}`:                    2,
		`sluice_service_instances{service="web",state="warning"}`:                    1,
		`sluice_service_instances{service="web",state="critical"}`:                   1,
		`sluice_service_instances{service="web",state="maintenance"}`:                1,
		`sluice_service_instances{service="web",state="probe_failing"}`:              1,
		`sluice_service_instances{service="web",state="ejected"}`:                    1,
		`sluice_service_instances{service="web",state="eligible"}`:                   1,
		`sluice_consul_errors_total{service="web"}`:                                  2,
		`sluice_consul_index{service="web"}`:                                         42,
		`sluice_consul_answers_total{service="web"}`:                                 1,
		`sluice_consul_last_success_timestamp_seconds{service="web"}`:                -1, // checked below
	} {
		if _, ok := want[key]; !ok {
			t.Fatalf("test table: no series %s", key)
		}
		want[key] = v
	}
	have := gather(t, c)
	// 5 instances x (up, inflight, ejections, 5 error kinds) + 2 services
	// x (7 states, 4 consul, panic).
	if len(want) != 5*8+2*12 {
		t.Fatalf("test table: want 64 series, have %d", len(want))
	}
	for key, w := range want {
		h, ok := have[key]
		switch {
		case !ok:
			t.Errorf("%s missing", key)
		case w >= 0 && h != w:
			t.Errorf("%s: want %v, have %v", key, w, h)
		}
	}
	for key := range have {
		if _, ok := want[key]; !ok {
			t.Errorf("unexpected series %s", key)
		}
	}
	last := have[`sluice_consul_last_success_timestamp_seconds{service="web"}`]
	if lo, hi := float64(before.UnixNano())/1e9, float64(after.UnixNano())/1e9; last < lo || last > hi {
		t.Errorf("last success %v not within [%v, %v]", last, lo, hi)
	}

	// n2/c leaves, api is dropped: their series go with them.
	if err := web.SetMembers(ctx, 43, []balance.Member{member("n1/a", balance.HealthPassing), member("n1/b", balance.HealthPassing)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "members", func() bool { return web.Load().ConsulIndex == 43 })
	pools.Store(&[]*balance.Pool{web})
	have = gather(t, c)
	for key := range have {
		if strings.Contains(key, `instance="n2/c"`) || strings.Contains(key, `service="api"`) {
			t.Errorf("series of a removed instance or service: %s", key)
		}
	}
	if wantN := 2*8 + 12; len(have) != wantN {
		t.Errorf("after removal: want %d series, have %d", wantN, len(have))
	}
	if h := have[`sluice_service_instances{service="web",state="ejected"}`]; h != 0 {
		t.Errorf("ejected after n2/c left: want 0, have %v", h)
	}
}

// TestPoolCollectorLint: names, types and help strings pass promlint.
func TestPoolCollectorLint(t *testing.T) {
	p := runPool(t, "web", nil)
	if err := p.SetMembers(context.Background(), 1, []balance.Member{member("n1/a", balance.HealthPassing)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "members", func() bool { return p.Load().Synced })
	problems, err := testutil.CollectAndLint(NewPoolCollector(func() []*balance.Pool { return []*balance.Pool{p} }))
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("%s: %s", pr.Metric, pr.Text)
	}
}

// TestPoolCollectorDuplicateService: of two pools of one service only the
// first is exported, so a scrape never fails on duplicate series.
func TestPoolCollectorDuplicateService(t *testing.T) {
	first, second := runPool(t, "web", nil), runPool(t, "web", nil)
	ctx := context.Background()
	if err := first.SetMembers(ctx, 1, []balance.Member{member("n1/a", balance.HealthPassing)}); err != nil {
		t.Fatal(err)
	}
	if err := second.SetMembers(ctx, 2, []balance.Member{member("n1/a", balance.HealthPassing)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "members", func() bool { return first.Load().Synced && second.Load().Synced })
	have := gather(t, NewPoolCollector(func() []*balance.Pool { return []*balance.Pool{first, second} }))
	if h := have[`sluice_consul_index{service="web"}`]; h != 1 {
		t.Errorf("consul index: want the first pool's 1, have %v", h)
	}
}
