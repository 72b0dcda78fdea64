package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy/admin"
)

func TestParseRouteTag(t *testing.T) {
	for _, tc := range []struct {
		rest, host, prefix, err string
	}{
		{"/shop", "", "/shop", ""},
		{"/", "", "/", ""},
		{"Example.COM/api/v1", "example.com", "/api/v1", ""},
		{"127.0.0.1/x", "127.0.0.1", "/x", ""},
		{"my_host-1.example/a-b_c.~%20", "my_host-1.example", "/a-b_c.~%20", ""},
		{"", "", "", "no path prefix"},
		{"example.com", "", "", "no path prefix"},
		{"*.example.com/", "", "", "may hold only letters"},
		{"example.com:8080/", "", "", "may hold only letters"},
		{"a..b/", "", "", "empty label"},
		{"[::1]/", "", "", "may hold only letters"},
		{"/a b", "", "", "printable ASCII"},
		{"/a?b", "", "", "printable ASCII"},
		{"/a#b", "", "", "printable ASCII"},
		{"/a\x00", "", "", "printable ASCII"},
		{"/é", "", "", "printable ASCII"},
		{"/" + strings.Repeat("a", maxRouteTagLength), "", "", "longer than"},
		{strings.Repeat("a", 64) + "/", "", "", "longer than 63"},
	} {
		host, prefix, err := parseRouteTag(tc.rest)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: want an error containing %q, have %v", tc.rest, tc.err, err)
			}
			continue
		}
		if err != nil || host != tc.host || prefix != tc.prefix {
			t.Errorf("%q: have %q %q %v, want %q %q", tc.rest, host, prefix, err, tc.host, tc.prefix)
		}
	}
}

func TestDiscoverRoutesConflicts(t *testing.T) {
	cfg, diags := config.Parse("t.hcl", []byte(`
listener "a" {
  address = "127.0.0.1:8080"
  discover {}
  route "/" {
    service = "web"
  }
}
listener "b" {
  address = "127.0.0.1:8081"
  discover {
    tag_prefix = "b="
  }
}
listener "c" {
  address = "127.0.0.1:8082"
  route "/" {
    service = "web"
  }
}
`), config.Options{Getenv: func(string) string { return "" }})
	if diags.HasErrors() {
		t.Fatal(config.FormatDiagnostics(diags))
	}
	catalog := map[string][]string{
		"web":   {"sluice-route=/"},                                            // shadowed by the file's route
		"zeta":  {"sluice-route=/dup", "sluice-route=example.com/dup", "b=/z"}, // loses /dup to alpha
		"alpha": {"sluice-route=/dup", "sluice-route=bad"},
		"other": {"unrelated", "sluice-route=/o"},
	}
	type row struct{ listener, service, tag, label, state string }
	var have []row
	for _, r := range discoverRoutes(cfg, catalog) {
		have = append(have, row{r.listener, r.key.service, r.key.tag, r.label, r.state})
	}
	want := []row{
		{"a", "alpha", "sluice-route=/dup", "/dup", ""},
		{"a", "alpha", "sluice-route=bad", "bad", admin.RouteInvalid},
		{"a", "other", "sluice-route=/o", "/o", ""},
		{"a", "web", "sluice-route=/", "/", admin.RouteShadowed},
		{"a", "zeta", "sluice-route=/dup", "/dup", admin.RouteShadowed},
		{"a", "zeta", "sluice-route=example.com/dup", "example.com/dup", ""},
		{"b", "zeta", "b=/z", "/z", ""},
	}
	if !slices.Equal(have, want) {
		t.Fatalf("have\n%v\nwant\n%v", have, want)
	}
}

// TestDiscoverRoutesMaxRoutes: beyond max_routes winners, in service and
// tag order, routes are over_limit; shadowed and invalid ones do not
// count.
func TestDiscoverRoutesMaxRoutes(t *testing.T) {
	cfg, diags := config.Parse("t.hcl", []byte(`
listener "a" {
  address = "127.0.0.1:8080"
  discover {
    max_routes = 2
  }
}
`), config.Options{Getenv: func(string) string { return "" }})
	if diags.HasErrors() {
		t.Fatal(config.FormatDiagnostics(diags))
	}
	catalog := map[string][]string{
		"a": {"sluice-route=/a", "sluice-route=bad"},
		"b": {"sluice-route=/a", "sluice-route=/b"},
		"c": {"sluice-route=/c"},
		"d": {"sluice-route=/d"},
	}
	var have []string
	for _, r := range discoverRoutes(cfg, catalog) {
		have = append(have, r.key.service+" "+r.label+" "+r.state)
	}
	want := []string{"a /a ", "a bad invalid", "b /a shadowed", "b /b ", "c /c over_limit", "d /d over_limit"}
	if !slices.Equal(have, want) {
		t.Fatalf("have %q\nwant %q", have, want)
	}
}

// fakeDisco is a Consul catalog and health API over one set of instances,
// which the test changes with set: catalog queries block until the next
// set, health queries answer the tagged instances of a service at once
// (index 0) and then block until cancelled.
type fakeDisco struct {
	mu        sync.Mutex
	instances map[string][]*api.ServiceEntry
	index     uint64
	changed   chan struct{}
}

func newFakeDisco() *fakeDisco {
	return &fakeDisco{instances: map[string][]*api.ServiceEntry{}, index: 1, changed: make(chan struct{})}
}

// set replaces service's instances: addr -> tags.
func (f *fakeDisco) set(service string, instances map[string][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var entries []*api.ServiceEntry
	for _, addr := range slices.Sorted(maps.Keys(instances)) {
		host, port, _ := net.SplitHostPort(addr)
		var p int
		fmt.Sscan(port, &p)
		entries = append(entries, &api.ServiceEntry{
			Node:    &api.Node{Node: "n1", Address: "127.0.0.1"},
			Service: &api.AgentService{ID: service + "-" + port, Service: service, Address: host, Port: p, Tags: instances[addr]},
			Checks:  api.HealthChecks{{Status: api.HealthPassing}},
		})
	}
	if entries == nil {
		delete(f.instances, service)
	} else {
		f.instances[service] = entries
	}
	f.index++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeDisco) Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
	f.mu.Lock()
	if q.WaitIndex >= f.index {
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-q.Context().Done():
			return nil, nil, q.Context().Err()
		}
		f.mu.Lock()
	}
	defer f.mu.Unlock()
	out := map[string][]string{}
	for name, entries := range f.instances {
		out[name] = []string{}
		for _, e := range entries {
			out[name] = append(out[name], e.Service.Tags...)
		}
	}
	return out, &api.QueryMeta{LastIndex: f.index}, nil
}

func (f *fakeDisco) Service(service, tag string, _ bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	if q.WaitIndex != 0 {
		<-q.Context().Done()
		return nil, nil, q.Context().Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*api.ServiceEntry
	for _, e := range f.instances[service] {
		if tag == "" || slices.Contains(e.Service.Tags, tag) {
			out = append(out, e)
		}
	}
	return out, &api.QueryMeta{LastIndex: f.index}, nil
}

// startDiscoApp starts an app over f with src; the test goroutine is its
// app goroutine (see pump).
func startDiscoApp(t *testing.T, f *fakeDisco, src string) *testApp {
	t.Helper()
	ta := &testApp{t: t, file: filepath.Join(t.TempDir(), "sluice.hcl"), logs: &lockedBuffer{}}
	ta.write(src)
	cfg := ta.load()
	a, err := newApp(ta.file, "test", hclog.New(&hclog.LoggerOptions{Output: ta.logs, Level: hclog.Debug}))
	if err != nil {
		t.Fatal(err)
	}
	a.newHealth = func(config.Consul) (discovery.HealthAPI, error) { return f, nil }
	a.newCatalog = func(config.Consul) (discovery.CatalogAPI, error) { return f, nil }
	if err := a.start(cfg); err != nil {
		t.Fatal(err)
	}
	ta.app = a
	t.Cleanup(func() { a.shutdown(time.Second) })
	return ta
}

// pump runs what serve's loop runs for discovery until cond holds.
func (ta *testApp) pump(what string, cond func() bool) {
	ta.t.Helper()
	deadline := time.After(5 * time.Second)
	for !cond() {
		select {
		case u := <-ta.disco.updates:
			ta.onCatalog(u)
		case <-ta.disco.ready:
			ta.reconcileDiscovery(false)
		case <-deadline:
			ta.t.Fatalf("timed out waiting for %s; routes %+v", what, *ta.routeStatus.Load())
		}
	}
}

// route returns the /v1/routes entry of a discovered route, by tag.
func (ta *testApp) route(listener, service, tag string) (admin.RouteStatus, bool) {
	rec := getJSON[admin.RoutesResponse](ta.t, ta.admin.ln.Addr().String(), "/v1/routes")
	for _, l := range rec.Listeners {
		for _, r := range l.Routes {
			if l.Name == listener && r.Service == service && r.Tag == tag {
				return r, true
			}
		}
	}
	return admin.RouteStatus{}, false
}

func getJSON[T any](t *testing.T, addr, path string) T {
	t.Helper()
	var out T
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDiscoveredRoutes(t *testing.T) {
	f := newFakeDisco()
	web, tagged, untagged := backend(t, "web"), backend(t, "tagged"), backend(t, "untagged")
	f.set("web", map[string][]string{web: nil})
	front := freeAddr(t)
	src := fmt.Sprintf(`
admin {
  address = %q
}
listener "public" {
  address = %q
  discover {}
  route "/" {
    service = "web"
  }
}
service_defaults {
  strategy = "round_robin"
}
`, freeAddr(t), front)
	ta := startDiscoApp(t, f, src)
	ta.pump("the first catalog answer", func() bool { return ta.disco.catalog != nil })

	// A tagged service: a route to its tagged instances only.
	f.set("shop", map[string][]string{tagged: {"sluice-route=/shop"}, untagged: {"other"}})
	ta.pump("/shop active", func() bool {
		r, _ := ta.route("public", "shop", "sluice-route=/shop")
		return r.State == admin.RouteActive
	})
	for range 4 {
		if code, body := get(t, "http://"+front+"/shop/x"); code != 200 || body != "tagged" {
			t.Fatalf("/shop: have %d %q", code, body)
		}
	}
	if code, body := get(t, "http://"+front+"/x"); code != 200 || body != "web" {
		t.Fatalf("/: have %d %q", code, body)
	}
	r, _ := ta.route("public", "shop", "sluice-route=/shop")
	if r.Pool != "shop[sluice-route=/shop]" || r.Origin != admin.OriginDiscovered || r.Route != "/shop" {
		t.Fatalf("route %+v", r)
	}
	svc := getJSON[admin.ServicesResponse](t, ta.admin.ln.Addr().String(), "/v1/services")
	if len(svc.Services) != 2 || svc.Services[1].Name != "shop[sluice-route=/shop]" || svc.Services[1].Strategy != "round_robin" ||
		len(svc.Services[1].Instances) != 1 {
		t.Fatalf("services %+v", svc)
	}

	// Invalid, shadowed by the file, and a conflict between two services.
	f.set("bad", map[string][]string{web: {"sluice-route=nopath"}})
	f.set("web", map[string][]string{web: {"sluice-route=/"}})
	f.set("b-dup", map[string][]string{untagged: {"sluice-route=/dup"}})
	f.set("a-dup", map[string][]string{tagged: {"sluice-route=/dup"}})
	ta.pump("/dup active", func() bool {
		r, _ := ta.route("public", "a-dup", "sluice-route=/dup")
		return r.State == admin.RouteActive
	})
	for _, tc := range []struct{ service, tag, state, reason string }{
		{"bad", "sluice-route=nopath", admin.RouteInvalid, "no path prefix"},
		{"web", "sluice-route=/", admin.RouteShadowed, `the configuration file routes "/" to service "web"`},
		{"b-dup", "sluice-route=/dup", admin.RouteShadowed, `service "a-dup"`},
	} {
		if r, ok := ta.route("public", tc.service, tc.tag); !ok || r.State != tc.state || !strings.Contains(r.Reason, tc.reason) {
			t.Errorf("%s %s: have %+v", tc.service, tc.tag, r)
		}
	}
	if code, body := get(t, "http://"+front+"/dup"); code != 200 || body != "tagged" {
		t.Fatalf("/dup: have %d %q", code, body)
	}
	// An unrelated change: the invalid tag is not logged again.
	f.set("unrelated", map[string][]string{web: nil})
	ta.pump("the unrelated service", func() bool { _, ok := ta.disco.catalog["unrelated"]; return ok })
	if n := strings.Count(ta.logs.String(), `discovered route not used: listener=public service=bad`); n != 1 {
		t.Errorf("invalid tag logged %d times, want 1:\n%s", n, ta.logs)
	}

	// A reload keeps the discovered runtime and changes its policy.
	pool := ta.disco.runtimes[discoKey{"shop", "sluice-route=/shop"}].svc.pool
	ta.write(strings.Replace(src, `"round_robin"`, `"least_connections"`, 1))
	ta.reload()
	if s := ta.disco.runtimes[discoKey{"shop", "sluice-route=/shop"}]; s == nil || s.svc.pool != pool || pool.Load().Strategy != "least_connections" {
		t.Fatalf("after reload: runtime %+v", s)
	}
	if code, body := get(t, "http://"+front+"/shop"); code != 200 || body != "tagged" {
		t.Fatalf("/shop after reload: have %d %q", code, body)
	}

	// The tag goes: the route goes.
	f.set("shop", map[string][]string{tagged: {"other"}})
	ta.pump("/shop gone", func() bool { _, ok := ta.route("public", "shop", "sluice-route=/shop"); return !ok })
	if code, _ := get(t, "http://"+front+"/shop"); code != 200 {
		// "/" still catches it.
		t.Fatalf("/shop after the tag went: %d", code)
	}
	if _, ok := ta.disco.runtimes[discoKey{"shop", "sluice-route=/shop"}]; ok {
		t.Fatal("the runtime of a removed route still runs")
	}
	// The winner goes: the shadowed one takes over.
	f.set("a-dup", nil)
	ta.pump("b-dup active", func() bool {
		r, _ := ta.route("public", "b-dup", "sluice-route=/dup")
		return r.State == admin.RouteActive
	})
	if code, body := get(t, "http://"+front+"/dup"); code != 200 || body != "untagged" {
		t.Fatalf("/dup: have %d %q", code, body)
	}

	// Discovery off by reload: every discovered route and runtime goes.
	ta.write(strings.Replace(src, "discover {}", "", 1))
	ta.reload()
	if len(ta.disco.runtimes) != 0 || ta.disco.watch != nil {
		t.Fatalf("discovery still runs: %d runtimes", len(ta.disco.runtimes))
	}
	if _, ok := ta.route("public", "b-dup", "sluice-route=/dup"); ok {
		t.Fatal("b-dup still listed")
	}
}

func TestDiscoveredRouteWithoutFileRoutes(t *testing.T) {
	f := newFakeDisco()
	shop := backend(t, "shop")
	f.set("shop", map[string][]string{shop: {"sluice-route=Shop.Example/"}})
	front := freeAddr(t)
	ta := startDiscoApp(t, f, fmt.Sprintf(`
admin {
  address = %q
}
listener "public" {
  address = %q
  discover {}
}
`, freeAddr(t), front))
	ta.pump("the route", func() bool {
		r, _ := ta.route("public", "shop", "sluice-route=Shop.Example/")
		return r.State == admin.RouteActive
	})
	req, _ := http.NewRequest(http.MethodGet, "http://"+front+"/x", nil)
	req.Host = "shop.example"
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("have %v %v", resp, err)
	}
	resp.Body.Close()
	if code, body := get(t, "http://"+front+"/x"); code != http.StatusNotFound || !strings.Contains(body, "no route") {
		t.Fatalf("another host: have %d %s", code, body)
	}
	// The last instance goes: 404.
	f.set("shop", nil)
	ta.pump("no route", func() bool { _, ok := ta.route("public", "shop", "sluice-route=Shop.Example/"); return !ok })
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("after the last instance went: have %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestCatalogErrorsCounted: a failed catalog query is counted and its
// first occurrence, and the recovery, go to the event feed.
func TestCatalogErrorsCounted(t *testing.T) {
	front, adm := freeAddr(t), freeAddr(t)
	ta := startApp(t, newFakeConsul(), configText(baseConfig, "FRONT", front, "ADMIN", adm))
	fail := discovery.CatalogUpdate{Err: errors.New("Unexpected response code: 500")}
	ta.onCatalog(fail)
	ta.onCatalog(fail)
	ta.onCatalog(discovery.CatalogUpdate{Services: map[string][]string{}, Index: 2})
	if m := scrape(t, adm); !strings.Contains(m, "sluice_consul_catalog_errors_total 2") {
		t.Errorf("catalog errors not counted twice:\n%s", grepLines(m, "sluice_consul_catalog"))
	}
	events, _ := ta.events.Events()
	var kinds []string
	for _, e := range events {
		if e.Kind == balance.EventConsulError || e.Kind == balance.EventConsulRecovery {
			kinds = append(kinds, string(e.Kind)+" "+e.Detail)
		}
	}
	want := []string{string(balance.EventConsulError) + " catalog watch: Unexpected response code: 500", string(balance.EventConsulRecovery) + " catalog watch"}
	if !slices.Equal(kinds, want) { // oldest first
		t.Errorf("events %q, want %q", kinds, want)
	}
}
