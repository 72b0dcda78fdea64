package discovery

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/sluice-lb/sluice/balance"
)

// answer is one scripted reply of fakeHealth.
type answer struct {
	entries  []*api.ServiceEntry
	index    uint64
	err      error
	block    bool // block until the query's context ends
	filtered bool // QueryMeta.ResultsFilteredByACLs
}

// call is what fakeHealth saw of one query.
type call struct {
	service, tag string
	tags         []string // ServiceMultipleTags only
	q            api.QueryOptions
}

// fakeHealth serves scripted answers: each watch query is reported on
// calls and then waits for the next answer on answers. A query without a
// wait time (the confirmation of an empty answer) is answered at once with
// an empty set, filtered by ACLs when filtered is set, and recorded in
// confirms.
type fakeHealth struct {
	calls    chan call
	answers  chan answer
	filtered atomic.Bool
	mu       sync.Mutex
	confirms []api.QueryOptions
}

func newFake() *fakeHealth {
	return &fakeHealth{calls: make(chan call, 16), answers: make(chan answer)}
}

// confirmed returns the confirming queries seen so far.
func (f *fakeHealth) confirmed() []api.QueryOptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.QueryOptions(nil), f.confirms...)
}

func (f *fakeHealth) ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return f.query(call{service: service, tags: tags, q: *q}, q)
}

func (f *fakeHealth) Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return f.query(call{service: service, tag: tag, q: *q}, q)
}

func (f *fakeHealth) query(c call, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	if q.WaitTime == 0 {
		f.mu.Lock()
		f.confirms = append(f.confirms, *q)
		f.mu.Unlock()
		return nil, &api.QueryMeta{LastIndex: 1, ResultsFilteredByACLs: f.filtered.Load()}, nil
	}
	f.calls <- c
	ctx := q.Context()
	select {
	case a := <-f.answers:
		if a.block {
			<-ctx.Done()
			return nil, nil, ctx.Err()
		}
		if a.err != nil {
			return nil, nil, a.err
		}
		return a.entries, &api.QueryMeta{LastIndex: a.index, ResultsFilteredByACLs: a.filtered}, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// harness runs a watcher over a fake until the test ends.
type harness struct {
	fake *fakeHealth
	out  chan Update
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, opts Options) *harness {
	t.Helper()
	h := &harness{fake: newFake(), out: make(chan Update), logs: &syncBuffer{}}
	opts.Service = "web"
	opts.Logger = hclog.New(&hclog.LoggerOptions{Output: h.logs, Level: hclog.Debug})
	if opts.BackoffMin == 0 {
		opts.BackoffMin = time.Millisecond
		opts.BackoffMax = 2 * time.Millisecond
	}
	w := NewWatcher(h.fake, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx, h.out); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

const timeout = 5 * time.Second

// serve waits for the next query, answers it and returns what was asked.
func (h *harness) serve(t *testing.T, a answer) call {
	t.Helper()
	var c call
	select {
	case c = <-h.fake.calls:
	case <-time.After(timeout):
		t.Fatal("no query issued")
	}
	select {
	case h.fake.answers <- a:
	case <-time.After(timeout):
		t.Fatal("query not waiting for an answer")
	}
	return c
}

func (h *harness) next(t *testing.T) Update {
	t.Helper()
	select {
	case u := <-h.out:
		return u
	case <-time.After(timeout):
		t.Fatal("no update published")
	}
	return Update{}
}

// expectNone asserts nothing was published before the watcher issued its next query.
func (h *harness) expectNone(t *testing.T) call {
	t.Helper()
	select {
	case u := <-h.out:
		t.Fatalf("unexpected update %+v", u)
	case c := <-h.fake.calls:
		return c
	case <-time.After(timeout):
		t.Fatal("no query issued")
	}
	return call{}
}

func entry(id, node, addr string, port int, checks ...*api.HealthCheck) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node:    &api.Node{Node: node, Address: "10.0.0.1"},
		Service: &api.AgentService{ID: id, Service: "web", Address: addr, Port: port, Weights: api.AgentWeights{Passing: 1, Warning: 1}},
		Checks:  checks,
	}
}

func check(id, status string) *api.HealthCheck { return &api.HealthCheck{CheckID: id, Status: status} }

func ids(u Update) string {
	var s []string
	for _, in := range u.Instances {
		s = append(s, in.ID)
	}
	return strings.Join(s, ",")
}

func TestIndexRules(t *testing.T) {
	h := start(t, Options{Stale: true, Tag: "blue"})
	c := h.serve(t, answer{index: 10})
	if c.service != "web" || c.tag != "blue" || c.q.WaitIndex != 0 || !c.q.AllowStale || !c.q.UseCache {
		t.Fatalf("first query: %+v", c)
	}
	if u := h.next(t); u.Err != nil || u.Index != 10 || len(u.Instances) != 0 {
		t.Fatalf("first answer (empty) must be published: %+v", u)
	}

	// Same index: nothing published, the next query blocks on 10.
	c = h.serve(t, answer{index: 10, entries: []*api.ServiceEntry{entry("b", "n1", "127.0.0.1", 2), entry("a", "n1", "127.0.0.1", 1)}})
	if c.q.WaitIndex != 10 {
		t.Fatalf("want WaitIndex 10, have %d", c.q.WaitIndex)
	}
	c = h.expectNone(t)
	if c.q.WaitIndex != 10 {
		t.Fatalf("want WaitIndex 10 after same index, have %d", c.q.WaitIndex)
	}

	// New index: published, sorted.
	h.fake.answers <- answer{index: 12, entries: []*api.ServiceEntry{entry("b", "n1", "127.0.0.1", 2), entry("a", "n1", "127.0.0.1", 1)}}
	if u := h.next(t); ids(u) != "n1/a,n1/b" || u.Index != 12 {
		t.Fatalf("want n1/a,n1/b at 12, have %s at %d", ids(u), u.Index)
	}

	// Index backwards: published, and the next query starts over at 0.
	h.serve(t, answer{index: 5})
	if u := h.next(t); u.Index != 5 {
		t.Fatalf("want index 5 published, have %+v", u)
	}
	if c := h.serve(t, answer{index: 0}); c.q.WaitIndex != 0 {
		t.Fatalf("want WaitIndex reset to 0, have %d", c.q.WaitIndex)
	}
	h.next(t)
	// Index 0 from Consul is treated as 1.
	if c := h.serve(t, answer{index: 1}); c.q.WaitIndex != 1 {
		t.Fatalf("want WaitIndex 1 after index 0, have %d", c.q.WaitIndex)
	}
}

func TestErrorBackoffAndResume(t *testing.T) {
	h := start(t, Options{})
	c := h.serve(t, answer{index: 3, entries: []*api.ServiceEntry{entry("a", "n1", "", 1)}})
	if c.q.AllowStale || c.q.UseCache {
		t.Fatalf("Stale=false must not allow stale or cache: %+v", c.q)
	}
	h.next(t)
	h.serve(t, answer{err: errors.New("connection refused")})
	if u := h.next(t); u.Err == nil || u.Instances != nil || u.Service != "web" {
		t.Fatalf("want error update, have %+v", u)
	}
	// After an error the query does not block and the answer is
	// published even at the same index.
	c = h.serve(t, answer{index: 3, entries: []*api.ServiceEntry{entry("a", "n1", "", 1)}})
	if c.q.WaitIndex != 0 {
		t.Fatalf("want WaitIndex 0 after an error, have %d", c.q.WaitIndex)
	}
	if u := h.next(t); u.Err != nil || ids(u) != "n1/a" {
		t.Fatalf("want recovery update, have %+v", u)
	}
	if !strings.Contains(h.logs.String(), "watch failed") || !strings.Contains(h.logs.String(), "retry_in") {
		t.Errorf("error not logged: %s", h.logs.String())
	}
}

func TestNextBackoff(t *testing.T) {
	d := time.Duration(0)
	for i, want := range []time.Duration{50, 100, 200, 400, 400} {
		d = nextBackoff(d, 50*time.Millisecond, 400*time.Millisecond)
		lo, hi := max(50*time.Millisecond, want*time.Millisecond*4/5), want*time.Millisecond
		if d < lo || d > hi {
			t.Fatalf("step %d: want %v..%v, have %v", i, lo, hi, d)
		}
		d = hi // strip jitter for the next step
	}
}

func TestWatchdogReissues(t *testing.T) {
	h := start(t, Options{Wait: 16 * time.Millisecond, WatchdogMargin: time.Millisecond})
	h.serve(t, answer{index: 4})
	h.next(t)
	c := h.serve(t, answer{block: true})
	if c.q.WaitIndex != 4 {
		t.Fatalf("want WaitIndex 4, have %d", c.q.WaitIndex)
	}
	// The overrunning query is cancelled and re-issued at the same index,
	// without an error update.
	c = h.expectNone(t)
	if c.q.WaitIndex != 4 {
		t.Fatalf("re-issued query: want WaitIndex 4, have %d", c.q.WaitIndex)
	}
	if !strings.Contains(h.logs.String(), "overran") {
		t.Errorf("watchdog not logged: %s", h.logs.String())
	}
}

func TestAggregateHealth(t *testing.T) {
	for _, tc := range []struct {
		name   string
		checks []*api.HealthCheck
		want   balance.Health
	}{
		{"no checks", nil, balance.HealthPassing},
		{"all passing", []*api.HealthCheck{check("serfHealth", api.HealthPassing), check("svc", api.HealthPassing)}, balance.HealthPassing},
		{"service warning", []*api.HealthCheck{check("serfHealth", api.HealthPassing), check("svc", api.HealthWarning)}, balance.HealthWarning},
		{"service critical", []*api.HealthCheck{check("svc", api.HealthCritical), check("svc2", api.HealthWarning)}, balance.HealthCritical},
		{"node critical", []*api.HealthCheck{check("serfHealth", api.HealthCritical), check("svc", api.HealthPassing)}, balance.HealthCritical},
		{"node maintenance", []*api.HealthCheck{check("svc", api.HealthCritical), check("_node_maintenance", api.HealthCritical)}, balance.HealthMaintenance},
		{"service maintenance", []*api.HealthCheck{check("_service_maintenance:web-1", api.HealthCritical)}, balance.HealthMaintenance},
	} {
		if have := aggregateHealth(tc.checks); have != tc.want {
			t.Errorf("%s: want %s, have %s", tc.name, tc.want, have)
		}
	}
}

func TestWeightRules(t *testing.T) {
	for _, tc := range []struct {
		name    string
		meta    map[string]string
		tags    []string
		weights api.AgentWeights
		health  string
		want    int
		warns   int
	}{
		{"meta", map[string]string{"weight": "3"}, nil, api.AgentWeights{Passing: 7}, "", 3, 0},
		{"tag", nil, []string{"x", "weight=4"}, api.AgentWeights{Passing: 7}, "", 4, 0},
		{"consul weights", nil, nil, api.AgentWeights{Passing: 7, Warning: 2}, "", 7, 0},
		{"consul warning weight", nil, nil, api.AgentWeights{Passing: 7, Warning: 2}, api.HealthWarning, 2, 0},
		{"default", nil, nil, api.AgentWeights{}, "", 1, 0},
		{"max", map[string]string{"weight": "10000"}, nil, api.AgentWeights{}, "", 10000, 0},
		{"meta abc falls to tag", map[string]string{"weight": "abc"}, []string{"weight=5"}, api.AgentWeights{}, "", 5, 1},
		{"meta zero", map[string]string{"weight": "0"}, nil, api.AgentWeights{Passing: 2}, "", 2, 1},
		{"meta negative", map[string]string{"weight": "-3"}, nil, api.AgentWeights{}, "", 1, 1},
		{"meta fraction", map[string]string{"weight": "2.5"}, nil, api.AgentWeights{}, "", 1, 1},
		{"meta too big", map[string]string{"weight": "99999"}, nil, api.AgentWeights{}, "", 1, 1},
		{"meta and tag bad", map[string]string{"weight": "x"}, []string{"weight=y"}, api.AgentWeights{}, "", 1, 2},
		{"meta leading zero", map[string]string{"weight": "07"}, nil, api.AgentWeights{}, "", 1, 1},
		{"meta plus sign", map[string]string{"weight": "+7"}, nil, api.AgentWeights{}, "", 1, 1},
		{"meta spaces", map[string]string{"weight": " 7 "}, nil, api.AgentWeights{}, "", 1, 1},
		{"meta hex", map[string]string{"weight": "0x10"}, nil, api.AgentWeights{}, "", 1, 1},
		{"meta underscore", map[string]string{"weight": "1_000"}, nil, api.AgentWeights{}, "", 1, 1},
		{"meta empty", map[string]string{"weight": ""}, nil, api.AgentWeights{Passing: 4}, "", 4, 1},
		{"meta non-ASCII digit", map[string]string{"weight": "٣"}, nil, api.AgentWeights{}, "", 1, 1},
		{"bad tag skipped for a later valid one", nil, []string{"weight=x", "weight=6"}, api.AgentWeights{}, "", 6, 1},
		{"first valid tag wins", nil, []string{"weight=6", "weight=8", "weight=x"}, api.AgentWeights{}, "", 6, 0},
		{"every bad tag logged", nil, []string{"weight=x", "weight=y", "weight=09"}, api.AgentWeights{Passing: 3}, "", 3, 3},
		{"same bad tag twice logged once", nil, []string{"weight=x", "weight=x"}, api.AgentWeights{}, "", 1, 1},
		{"meta valid, bad tag not read", map[string]string{"weight": "2"}, []string{"weight=x"}, api.AgentWeights{}, "", 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncBuffer{}
			w := NewWatcher(nil, Options{Service: "web", Logger: hclog.New(&hclog.LoggerOptions{Output: logs})})
			e := entry("web-1", "n1", "127.0.0.1", 1)
			e.Service.Meta, e.Service.Tags, e.Service.Weights = tc.meta, tc.tags, tc.weights
			if tc.health != "" {
				e.Checks = []*api.HealthCheck{check("svc", tc.health)}
			}
			for i := 0; i < 3; i++ { // repeated answers warn once
				ins := w.instances([]*api.ServiceEntry{e})
				if ins[0].Weight != tc.want {
					t.Fatalf("want weight %d, have %d", tc.want, ins[0].Weight)
				}
			}
			have := strings.Count(logs.String(), "invalid instance weight")
			if have != tc.warns {
				t.Fatalf("want %d warnings, have %d: %s", tc.warns, have, logs.String())
			}
			if tc.warns > 0 && !strings.Contains(logs.String(), "instance=n1/web-1") {
				t.Fatalf("warning does not name the instance: %s", logs.String())
			}
			// An instance that leaves and comes back with the bad value is
			// warned about again, and the warned set does not grow unbounded.
			w.instances(nil)
			if len(w.warned) != 0 {
				t.Fatalf("warned set not pruned: %v", w.warned)
			}
		})
	}
}

func TestInstanceConversion(t *testing.T) {
	w := NewWatcher(nil, Options{Service: "web"})
	a := entry("web-1", "n1", "", 8080)
	a.Service.Tags = []string{"blue"}
	a.Service.Meta = map[string]string{"k": "v"}
	b := entry("web-1", "n2", "127.0.0.2", 8081)
	c := entry("api-0", "n1", "127.0.0.3", 9000)
	ins := w.instances([]*api.ServiceEntry{a, b, c})
	want := []struct{ id, hostport string }{
		{"n1/api-0", "127.0.0.3:9000"},
		{"n1/web-1", "10.0.0.1:8080"}, // node address fallback
		{"n2/web-1", "127.0.0.2:8081"},
	}
	if len(ins) != len(want) {
		t.Fatalf("want %d instances, have %d", len(want), len(ins))
	}
	for i, w := range want {
		if ins[i].ID != w.id || ins[i].HostPort() != w.hostport {
			t.Errorf("instance %d: want %s %s, have %s %s", i, w.id, w.hostport, ins[i].ID, ins[i].HostPort())
		}
	}
	// Tags and meta are copies, not aliases of the api structs.
	a.Service.Tags[0] = "green"
	a.Service.Meta["k"] = "changed"
	if ins[1].Tags[0] != "blue" || ins[1].Meta["k"] != "v" {
		t.Errorf("instance aliases api data: %v %v", ins[1].Tags, ins[1].Meta)
	}
	if ins[1].Node != "n1" || ins[1].ServiceID != "web-1" || ins[1].Health != balance.HealthPassing {
		t.Errorf("node/health: %+v", ins[1])
	}
}

func TestParseWeight(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"1", 1, true},
		{"42", 42, true},
		{"10000", 10000, true},
		{"0", 0, false},
		{"00", 0, false},
		{"01", 0, false},
		{"10001", 0, false},
		{"99999", 0, false},
		{"100000", 0, false},
		{"", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"1\n", 0, false},
		{"0x1", 0, false},
		{"1_0", 0, false},
		{"1e3", 0, false},
		{"1.0", 0, false},
		{"\u0661", 0, false}, // ARABIC-INDIC DIGIT ONE
		{"\uff11", 0, false}, // FULLWIDTH DIGIT ONE
	} {
		have, ok := parseWeight(tc.in)
		if have != tc.want || ok != tc.ok {
			t.Errorf("parseWeight(%q): want %d %v, have %d %v", tc.in, tc.want, tc.ok, have, ok)
		}
	}
}

// FuzzParseWeight checks that parseWeight accepts a value iff it is the
// canonical decimal form (strconv.Itoa) of an integer in MinWeight..MaxWeight.
func FuzzParseWeight(f *testing.F) {
	for _, s := range []string{
		"1", "7", "10", "9999", "10000", "10001", "0", "00", "007", "-0", "-1", "+1",
		" 1", "1 ", "\t1", "0x10", "0b1", "0o7", "1_000", "1e3", "1.", "", "\u0661",
		"99999999999999999999", "-9223372036854775808",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		have, ok := parseWeight(s)
		n, err := strconv.Atoi(s)
		want := err == nil && n >= MinWeight && n <= MaxWeight && strconv.Itoa(n) == s
		if ok != want {
			t.Fatalf("parseWeight(%q): want ok=%v, have ok=%v (%d)", s, want, ok, have)
		}
		if ok && have != n {
			t.Fatalf("parseWeight(%q): want %d, have %d", s, n, have)
		}
		if !ok && have != 0 {
			t.Fatalf("parseWeight(%q): rejected with value %d", s, have)
		}
	})
}

func TestAddressRules(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	for _, tc := range []struct {
		name              string
		svcAddr, nodeAddr string
		port              int
		wantAddr          string // Instance.Address
		wantInvalid       string
	}{
		{"ipv4", "10.1.2.3", "10.0.0.1", 80, "10.1.2.3", ""},
		{"ipv6", "2001:db8::1", "10.0.0.1", 80, "2001:db8::1", ""},
		{"ipv4-mapped ipv6", "::ffff:10.1.2.3", "10.0.0.1", 80, "::ffff:10.1.2.3", ""},
		{"loopback", "127.0.0.1", "", 80, "127.0.0.1", ""},
		{"hostname", "web-1.service.consul", "10.0.0.1", 80, "web-1.service.consul", ""},
		{"hostname with final dot", "db.example.", "", 80, "db.example.", ""},
		{"hostname with underscore", "my_service", "", 80, "my_service", ""},
		{"hostname of 253", strings.Repeat(long(63)+".", 3) + long(61), "", 80, strings.Repeat(long(63)+".", 3) + long(61), ""},
		{"node address fallback", "", "10.0.0.9", 80, "10.0.0.9", ""},
		{"lowest port", "10.1.2.3", "", 1, "10.1.2.3", ""},
		{"highest port", "10.1.2.3", "", 65535, "10.1.2.3", ""},
		{"no address", "", "", 80, "", "no address"},
		{"bad service address does not fall back", "not an address", "10.0.0.1", 80, "not an address", "address is neither an IP address nor a hostname"},
		{"host:port", "10.1.2.3:80", "", 80, "10.1.2.3:80", "address is neither an IP address nor a hostname"},
		{"bracketed ipv6", "[::1]", "", 80, "[::1]", "address is neither an IP address nor a hostname"},
		{"ipv6 zone", "fe80::1%eth0", "", 80, "fe80::1%eth0", "IP address with a zone"},
		{"unspecified ipv4", "0.0.0.0", "", 80, "0.0.0.0", "unspecified IP address"},
		{"unspecified ipv6", "::", "", 80, "::", "unspecified IP address"},
		{"octet out of range", "300.1.1.1", "", 80, "300.1.1.1", "address is neither an IP address nor a hostname"},
		{"octet with leading zero", "010.1.1.1", "", 80, "010.1.1.1", "address is neither an IP address nor a hostname"},
		{"digits only", "167772161", "", 80, "167772161", "address is neither an IP address nor a hostname"},
		{"label starts with dash", "-web", "", 80, "-web", "address is neither an IP address nor a hostname"},
		{"label ends with dash", "web-.example", "", 80, "web-.example", "address is neither an IP address nor a hostname"},
		{"empty label", "a..b", "", 80, "a..b", "address is neither an IP address nor a hostname"},
		{"leading dot", ".web", "", 80, ".web", "address is neither an IP address nor a hostname"},
		{"root only", ".", "", 80, ".", "address is neither an IP address nor a hostname"},
		{"label of 64", long(64) + ".example", "", 80, long(64) + ".example", "address is neither an IP address nor a hostname"},
		{"hostname of 254", strings.Repeat(long(63)+".", 3) + long(62), "", 80, strings.Repeat(long(63)+".", 3) + long(62), "address is neither an IP address nor a hostname"},
		{"space", "web 1", "", 80, "web 1", "address is neither an IP address nor a hostname"},
		{"newline", "web\nx", "", 80, "web\nx", "address is neither an IP address nor a hostname"},
		{"unicode", "bücher.example", "", 80, "bücher.example", "address is neither an IP address nor a hostname"},
		{"url", "http://web", "", 80, "http://web", "address is neither an IP address nor a hostname"},
		{"port 0", "10.1.2.3", "", 0, "10.1.2.3", "port outside 1-65535"},
		{"port too big", "10.1.2.3", "", 65536, "10.1.2.3", "port outside 1-65535"},
		{"negative port", "10.1.2.3", "", -1, "10.1.2.3", "port outside 1-65535"},
		{"bad address and port: address first", "", "", 0, "", "no address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncBuffer{}
			w := NewWatcher(nil, Options{Service: "web", Logger: hclog.New(&hclog.LoggerOptions{Output: logs})})
			e := entry("web-1", "n1", tc.svcAddr, tc.port)
			e.Node.Address = tc.nodeAddr
			ins := w.instances([]*api.ServiceEntry{e})
			if len(ins) != 1 {
				t.Fatalf("want the instance listed, have %+v", ins)
			}
			if have := ins[0]; have.Address != tc.wantAddr || have.Invalid != tc.wantInvalid {
				t.Fatalf("want address %q invalid %q, have %q %q", tc.wantAddr, tc.wantInvalid, have.Address, have.Invalid)
			}
			if have, want := strings.Count(logs.String(), "invalid instance address"), min(len(tc.wantInvalid), 1); have != want {
				t.Fatalf("want %d warnings, have %d: %s", want, have, logs.String())
			}
		})
	}
}

func TestInvalidInstanceLoggedOnce(t *testing.T) {
	h := start(t, Options{})
	good, bad := entry("web-1", "n1", "10.1.2.3", 80), entry("web-2", "n1", "10.1.2.4", 0)
	for i, a := range []answer{
		{index: 2, entries: []*api.ServiceEntry{good, bad}},
		{index: 3, entries: []*api.ServiceEntry{bad, good}},
		{index: 4, entries: []*api.ServiceEntry{good, bad}},
		{index: 5, entries: []*api.ServiceEntry{good}}, // gone: forgotten
		{index: 6, entries: []*api.ServiceEntry{good, bad}},
	} {
		h.serve(t, a)
		u := h.next(t)
		if len(u.Instances) != len(a.entries) || u.Instances[0].Invalid != "" {
			t.Fatalf("answer %d: want %d instances, the first valid, have %+v", i, len(a.entries), u.Instances)
		}
		if len(a.entries) == 2 && u.Instances[1].Invalid != "port outside 1-65535" {
			t.Fatalf("answer %d: want the second invalid, have %+v", i, u.Instances[1])
		}
	}
	if have := strings.Count(h.logs.String(), "invalid instance address"); have != 2 {
		t.Fatalf("want 2 warnings (first sight, return), have %d: %s", have, h.logs.String())
	}
	if !strings.Contains(h.logs.String(), "instance=n1/web-2") || !strings.Contains(h.logs.String(), "port=0") {
		t.Fatalf("warning does not name the instance and port: %s", h.logs.String())
	}
}

func TestInstanceIdentity(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []*api.ServiceEntry
		want    []string // ID, then Invalid when not ""
	}{
		{"one node", []*api.ServiceEntry{entry("web-1", "n1", "10.1.0.1", 80)}, []string{"n1/web-1"}},
		{"same service ID on two nodes",
			[]*api.ServiceEntry{entry("web-1", "n2", "10.1.0.2", 80), entry("web-1", "n1", "10.1.0.1", 80)},
			[]string{"n1/web-1", "n2/web-1"}},
		{"slash in node or service ID",
			[]*api.ServiceEntry{entry("c", "a/b", "10.1.0.1", 80), entry("b/c", "a", "10.1.0.2", 80)},
			[]string{"a%2Fb/c", "a/b/c"}},
		{"escaped-looking node name",
			[]*api.ServiceEntry{entry("c", "a%2Fb", "10.1.0.1", 80), entry("c", "a/b", "10.1.0.2", 80)},
			[]string{"a%252Fb/c", "a%2Fb/c"}},
		{"no node", []*api.ServiceEntry{{Service: &api.AgentService{ID: "web-1", Address: "10.1.0.1", Port: 80}}}, []string{"/web-1"}},
		{"listed twice", []*api.ServiceEntry{entry("web-1", "n1", "10.1.0.2", 80), entry("web-1", "n1", "10.1.0.1", 80), entry("web-2", "n1", "10.1.0.3", 80)},
			[]string{"n1/web-1", "listed more than once by Consul", "n1/web-2"}},
		{"nil entries", []*api.ServiceEntry{nil, {Node: &api.Node{Node: "n1"}}, entry("web-1", "n1", "10.1.0.1", 80)}, []string{"n1/web-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncBuffer{}
			w := NewWatcher(nil, Options{Service: "web", Logger: hclog.New(&hclog.LoggerOptions{Output: logs})})
			first := w.instances(tc.entries)
			var have []string
			for _, in := range first {
				have = append(have, in.ID)
				if in.Invalid != "" {
					have = append(have, in.Invalid)
				}
			}
			if strings.Join(have, " | ") != strings.Join(tc.want, " | ") {
				t.Fatalf("want %q, have %q", tc.want, have)
			}
			// Consul's order does not matter: every rotation of the answer
			// gives the same set, down to the entry kept of a repeat.
			for r := 1; r < len(tc.entries); r++ {
				rotated := append(append([]*api.ServiceEntry(nil), tc.entries[r:]...), tc.entries[:r]...)
				if again := w.instances(rotated); !reflect.DeepEqual(again, first) {
					t.Fatalf("rotation %d: want %+v, have %+v", r, first, again)
				}
			}
		})
	}
}

func TestIdentityStableWhenNodeJoins(t *testing.T) {
	h := start(t, Options{})
	a, b := entry("web-1", "n1", "10.1.0.1", 80), entry("web-1", "n2", "10.1.0.2", 80)
	h.serve(t, answer{index: 2, entries: []*api.ServiceEntry{a}})
	if u := h.next(t); ids(u) != "n1/web-1" {
		t.Fatalf("want n1/web-1, have %s", ids(u))
	}
	// A second node registers the same service ID: the first instance
	// keeps its ID (and so its counters, cookie and hash slots).
	h.serve(t, answer{index: 3, entries: []*api.ServiceEntry{b, a}})
	u := h.next(t)
	if ids(u) != "n1/web-1,n2/web-1" {
		t.Fatalf("want n1/web-1,n2/web-1, have %s", ids(u))
	}
	if u.Instances[0].HostPort() != "10.1.0.1:80" || u.Instances[1].HostPort() != "10.1.0.2:80" {
		t.Fatalf("addresses swapped: %+v", u.Instances)
	}
	h.serve(t, answer{index: 4, entries: []*api.ServiceEntry{a, a}})
	u = h.next(t)
	if len(u.Instances) != 1 || u.Instances[0].Invalid == "" {
		t.Fatalf("want one invalid instance for a repeated entry, have %+v", u.Instances)
	}
	h.serve(t, answer{index: 5, entries: []*api.ServiceEntry{a, a}})
	h.next(t)
	if have := strings.Count(h.logs.String(), "listed more than once"); have != 1 {
		t.Fatalf("want the repeat logged once, have %d: %s", have, h.logs.String())
	}
}

func TestEmptyAnswerConfirmed(t *testing.T) {
	h := start(t, Options{Stale: true, Datacenter: "dc2"})
	// A service without instances: the empty answer is confirmed once and
	// published as an empty set.
	h.serve(t, answer{index: 7})
	if u := h.next(t); u.Err != nil || len(u.Instances) != 0 || u.Index != 7 {
		t.Fatalf("want an empty set at 7, have %+v", u)
	}
	cs := h.fake.confirmed()
	if len(cs) != 1 {
		t.Fatalf("want 1 confirming query, have %d", len(cs))
	}
	if q := cs[0]; q.WaitIndex != 0 || q.UseCache || !q.AllowStale || q.Datacenter != "dc2" {
		t.Fatalf("confirming query must be non-streaming, without index, stale as configured: %+v", q)
	}
	// The same empty answer again publishes nothing and asks nothing more;
	// neither does a non-empty one.
	h.serve(t, answer{index: 7})
	h.serve(t, answer{index: 8, entries: []*api.ServiceEntry{entry("a", "n1", "10.1.0.1", 80)}})
	h.next(t)
	h.expectNone(t)
	if n := len(h.fake.confirmed()); n != 1 {
		t.Fatalf("want 1 confirming query in all, have %d", n)
	}
}

func TestACLFilteredAnswerIsAnError(t *testing.T) {
	h := start(t, Options{Stale: true})
	good := answer{index: 4, entries: []*api.ServiceEntry{entry("a", "n1", "10.1.0.1", 80)}}
	h.serve(t, good)
	h.next(t)

	// The token loses its policy: the streaming answer is empty with no
	// marker, the confirming query says it was filtered.
	h.fake.filtered.Store(true)
	for i := 0; i < 4; i++ {
		c := h.serve(t, answer{index: 9})
		if i > 0 && c.q.WaitIndex != 0 {
			t.Fatalf("retry %d: want a query without index, have WaitIndex %d", i, c.q.WaitIndex)
		}
		u := h.next(t)
		if !errors.Is(u.Err, ErrACL) || u.Instances != nil {
			t.Fatalf("retry %d: want an ACL error, have %+v", i, u)
		}
		if want := `consul ACL: results filtered: the token lacks service:read on "web" or node:read on its nodes`; u.Err.Error() != want {
			t.Fatalf("want error %q, have %q", want, u.Err)
		}
	}
	if have := strings.Count(h.logs.String(), "[WARN]  watch failed"); have != 1 {
		t.Fatalf("want the ACL error logged once, have %d: %s", have, h.logs.String())
	}
	if !strings.Contains(h.logs.String(), `service=web error="consul ACL: results filtered`) {
		t.Fatalf("warning does not name the service and the error: %s", h.logs.String())
	}

	// The policy is attached: the next answer (without index) recovers.
	h.fake.filtered.Store(false)
	if c := h.serve(t, good); c.q.WaitIndex != 0 {
		t.Fatalf("want a query without index, have WaitIndex %d", c.q.WaitIndex)
	}
	if u := h.next(t); u.Err != nil || ids(u) != "n1/a" {
		t.Fatalf("want recovery, have %+v", u)
	}
	if !strings.Contains(h.logs.String(), "watch recovered") {
		t.Fatalf("recovery not logged: %s", h.logs.String())
	}

	// Filtered again after a good answer: logged again. An answer that
	// carries the marker itself needs no confirmation.
	confirms := len(h.fake.confirmed())
	h.serve(t, answer{index: 11, filtered: true})
	if u := h.next(t); !errors.Is(u.Err, ErrACL) {
		t.Fatalf("want an ACL error, have %+v", u)
	}
	if n := len(h.fake.confirmed()); n != confirms {
		t.Fatalf("a marked answer was confirmed: %d -> %d confirming queries", confirms, n)
	}
	if have := strings.Count(h.logs.String(), "[WARN]  watch failed"); have != 2 {
		t.Fatalf("want the ACL error logged again after recovery, have %d: %s", have, h.logs.String())
	}
}

func TestRejectedTokenIsAnACLError(t *testing.T) {
	h := start(t, Options{})
	for _, tc := range []struct{ body, want string }{
		{"ACL not found", "ACL not found"},
		{"rpc error: code = Unknown desc = ACL not found", "ACL not found"}, // the same error, through streaming
		{"Permission denied", "Permission denied"},
	} {
		h.serve(t, answer{err: api.StatusError{Code: 403, Body: tc.body}})
		u := h.next(t)
		if !errors.Is(u.Err, ErrACL) || u.Err.Error() != "consul ACL: the token was refused (403 "+tc.want+")" {
			t.Fatalf("want an ACL error for 403 %s, have %v", tc.body, u.Err)
		}
	}
	// Other status errors are left as they are.
	h.serve(t, answer{err: api.StatusError{Code: 500, Body: "No cluster leader"}})
	if u := h.next(t); errors.Is(u.Err, ErrACL) || !strings.Contains(u.Err.Error(), "No cluster leader") {
		t.Fatalf("want the 500 as it is, have %v", u.Err)
	}
	if have := strings.Count(h.logs.String(), "[WARN]  watch failed"); have != 3 {
		t.Fatalf("want one warning per distinct error in a row (3), have %d: %s", have, h.logs.String())
	}
}

func TestErrorLoggedOncePerRun(t *testing.T) {
	h := start(t, Options{})
	refused, leader := errors.New("connection refused"), errors.New("No cluster leader")
	for _, err := range []error{refused, refused, refused, leader, leader, refused} {
		h.serve(t, answer{err: err})
		h.next(t)
	}
	logs := h.logs.String()
	if have := strings.Count(logs, "[WARN]  watch failed"); have != 3 {
		t.Fatalf("want 3 warnings (refused, leader, refused), have %d: %s", have, logs)
	}
	if have := strings.Count(logs, "[DEBUG] watch still failing"); have != 3 {
		t.Fatalf("want the 3 repeats at debug level, have %d: %s", have, logs)
	}
	h.serve(t, answer{index: 2, entries: []*api.ServiceEntry{entry("a", "n1", "10.1.0.1", 80)}})
	h.next(t)
	h.serve(t, answer{err: refused})
	h.next(t)
	if have := strings.Count(h.logs.String(), "[WARN]  watch failed"); have != 4 {
		t.Fatalf("want the error logged again after a good answer, have %d: %s", have, h.logs.String())
	}
}

// TestNoLeaderPause: Consul's answer while its servers have no leader caps
// the pause before the next query, so the first answer after an election
// is not held back by a grown backoff.
func TestNoLeaderPause(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{errors.New("Unexpected response code: 500 (rpc error making call: No cluster leader)"), true},
		{errors.Join(errors.New("wrapped"), errors.New("No cluster leader")), true},
		{errors.New("Unexpected response code: 500 (rpc error: code = Unavailable desc = error reading from server: EOF)"), false},
		{errors.New("dial tcp 127.0.0.1:8500: connect: connection refused"), false},
	} {
		if got := isNoLeader(tc.err); got != tc.want {
			t.Errorf("isNoLeader(%q) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestQueryFilters: tags, node meta and the filter expression reach every
// query Consul sees, the confirmation of an empty answer included; one
// tag uses Service, several ServiceMultipleTags.
func TestQueryFilters(t *testing.T) {
	cases := []struct {
		name     string
		opts     Options
		wantTag  string
		wantTags []string
	}{
		{"none", Options{}, "", nil},
		{"tag", Options{Tag: "blue"}, "blue", nil},
		{"one of tags", Options{Tags: []string{"blue"}}, "blue", nil},
		{"tags", Options{Tags: []string{"blue", "v2"}}, "", []string{"blue", "v2"}},
		{"tag and tags, repeats once", Options{Tag: "blue", Tags: []string{"v2", "blue"}}, "", []string{"blue", "v2"}},
		{"node meta and filter", Options{NodeMeta: map[string]string{"rack": "r1"}, Filter: `Service.Meta.version == "2"`}, "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Stale = true
			h := start(t, tc.opts)
			for i, c := range []call{h.serve(t, answer{index: 3})} {
				if c.tag != tc.wantTag || strings.Join(c.tags, ",") != strings.Join(tc.wantTags, ",") {
					t.Fatalf("query %d: want tag %q tags %v, have %q %v", i, tc.wantTag, tc.wantTags, c.tag, c.tags)
				}
				if !maps.Equal(c.q.NodeMeta, tc.opts.NodeMeta) || c.q.Filter != tc.opts.Filter {
					t.Fatalf("query %d: want node meta %v filter %q, have %v %q", i, tc.opts.NodeMeta, tc.opts.Filter, c.q.NodeMeta, c.q.Filter)
				}
			}
			h.next(t)
			cs := h.fake.confirmed()
			if len(cs) != 1 || !maps.Equal(cs[0].NodeMeta, tc.opts.NodeMeta) || cs[0].Filter != tc.opts.Filter {
				t.Fatalf("confirming query: want the same node meta and filter, have %+v", cs)
			}
		})
	}
}

// singleTagHealth is a HealthAPI without ServiceMultipleTags.
type singleTagHealth struct{ HealthAPI }

// TestSeveralTagsNeedMultiTagAPI: a client that cannot send several tags
// makes the watch fail (in band) rather than drop a tag.
func TestSeveralTagsNeedMultiTagAPI(t *testing.T) {
	w := NewWatcher(singleTagHealth{newFake()}, Options{Service: "web", Tags: []string{"a", "b"}, BackoffMin: time.Millisecond, BackoffMax: time.Millisecond})
	out := make(chan Update)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx, out)
	select {
	case u := <-out:
		if u.Err == nil || !strings.Contains(u.Err.Error(), "2 tags") {
			t.Fatalf("want an error about 2 tags, have %+v", u)
		}
	case <-time.After(timeout):
		t.Fatal("no update")
	}
}
