package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy"
)

// fakeConsul answers every first query of a service at once (index 1, the
// instances set for it) and blocks later ones until they are cancelled. It
// counts the queries per consul address, service and tag.
type fakeConsul struct {
	mu        sync.Mutex
	instances map[string][]*api.ServiceEntry // by service
	queries   map[string]int                 // by "address service tag"
}

func newFakeConsul() *fakeConsul {
	return &fakeConsul{instances: map[string][]*api.ServiceEntry{}, queries: map[string]int{}}
}

func (f *fakeConsul) add(service, id, addr string) {
	host, port, _ := net.SplitHostPort(addr)
	var p int
	fmt.Sscan(port, &p)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instances[service] = append(f.instances[service], &api.ServiceEntry{
		Node:    &api.Node{Node: "n1", Address: "127.0.0.1"},
		Service: &api.AgentService{ID: id, Service: service, Address: host, Port: p},
		Checks:  api.HealthChecks{{Status: api.HealthPassing}},
	})
}

func (f *fakeConsul) count(address, service, tag string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.queries[address+" "+service+" "+tag]
}

// client returns the HealthAPI of one consul block.
func (f *fakeConsul) client(c config.Consul) (discovery.HealthAPI, error) {
	return fakeHealth{f, c.Address}, nil
}

type fakeHealth struct {
	f       *fakeConsul
	address string
}

func (h fakeHealth) Service(service, tag string, _ bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	h.f.mu.Lock()
	h.f.queries[h.address+" "+service+" "+tag]++
	entries := h.f.instances[service]
	h.f.mu.Unlock()
	if q.WaitIndex == 0 {
		return entries, &api.QueryMeta{LastIndex: 1}, nil
	}
	<-q.Context().Done()
	return nil, nil, q.Context().Err()
}

// testApp is an app over a fake Consul, with its configuration file.
type testApp struct {
	*app
	t    *testing.T
	fake *fakeConsul
	file string
	logs *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startApp writes src to a file and starts an app with it; it stops when
// the test ends.
func startApp(t *testing.T, fc *fakeConsul, src string) *testApp {
	t.Helper()
	ta := &testApp{t: t, fake: fc, file: filepath.Join(t.TempDir(), "sluice.hcl"), logs: &lockedBuffer{}}
	ta.write(src)
	cfg := ta.load()
	logger := hclog.New(&hclog.LoggerOptions{Output: ta.logs, Level: hclog.Debug})
	a, err := newApp(ta.file, "test", logger)
	if err != nil {
		t.Fatal(err)
	}
	a.newHealth = fc.client
	if err := a.start(cfg); err != nil {
		t.Fatal(err)
	}
	ta.app = a
	t.Cleanup(func() { a.shutdown(time.Second) })
	return ta
}

func (ta *testApp) write(src string) {
	ta.t.Helper()
	if err := os.WriteFile(ta.file, []byte(src), 0o644); err != nil {
		ta.t.Fatal(err)
	}
}

func (ta *testApp) load() *config.Config {
	ta.t.Helper()
	cfg, diags := config.Load(ta.file, config.Options{})
	if diags.HasErrors() {
		ta.t.Fatalf("config: %v", config.FormatDiagnostics(diags))
	}
	return cfg
}

// synced waits until every service's pool has its first answer.
func (ta *testApp) synced() {
	ta.t.Helper()
	ctx, cancel := context.WithTimeout(ta.t.Context(), 5*time.Second)
	defer cancel()
	if !waitSynced(ctx, ta.currentPools()) {
		ta.t.Fatal("a service never synced")
	}
}

// handedOut holds the addresses freeAddr returned, so that a test never
// gets one twice (the kernel may hand a closed port out again).
var handedOut sync.Map

// freeAddr returns a loopback address that was free a moment ago and that
// no other freeAddr call in this process returned.
func freeAddr(t *testing.T) string {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, dup := handedOut.LoadOrStore(addr, true); !dup {
			return addr
		}
	}
}

// backend serves its name on a loopback port until the test ends.
func backend(t *testing.T, name string) string {
	return backendFunc(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
}

func backendFunc(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const baseConfig = `
admin {
  address = "ADMIN"
}
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "round_robin"
  sticky {
    mode = "cookie"
  }
  health_check {
    path     = "/"
    interval = "1s"
  }
}
`

func configText(src string, addrs ...string) string {
	return strings.NewReplacer(addrs...).Replace(src)
}

func TestTranslate(t *testing.T) {
	cfg, diags := config.Parse("t.hcl", []byte(`
listener "l" {
  address = "127.0.0.1:1"
  route "/" {
    service = "a"
  }
}
service "a" {
  tag        = "blue"
  weight_key = "w"
  strategy   = "least_connections"
  slow_start = "10s"
  sticky {
    mode = "cookie"
  }
  passive {
    consecutive_failures = 3
  }
  retry {
    attempts        = 3
    per_try_timeout = "2s"
  }
  health_check {
    type     = "tcp"
    interval = "5s"
  }
}
service "b" {
  sticky {
    mode   = "header"
    header = "X-User"
  }
}
`), config.Options{})
	if diags.HasErrors() {
		t.Fatal(config.FormatDiagnostics(diags))
	}
	secret := []byte("process secret")
	a := cfg.Services["a"]
	pol, err := poolPolicy("a", a, secret)
	if err != nil {
		t.Fatal(err)
	}
	if pol.Strategy != "least_connections" || pol.SlowStart != 10*time.Second || pol.Builder == nil {
		t.Errorf("policy of a: %+v", pol)
	}
	if pol.Passive == nil || pol.Passive.ConsecutiveFailures != 3 || pol.Passive.EjectionTime != 30*time.Second ||
		pol.Passive.MaxEjectionTime != 300*time.Second || pol.Passive.MaxEjectionPercent != 50 {
		t.Errorf("passive of a: %+v", pol.Passive)
	}
	fwd := forwardOptions("a", a, nil, nil)
	want := proxy.ServiceOptions{Name: "a", Attempts: 3, PerTryTimeout: 2 * time.Second, StickyCookie: "sluice_a",
		ResponseHeaderTimeout: proxy.DefaultResponseHeaderTimeout, ResponseBodyTimeout: proxy.DefaultResponseBodyTimeout}
	if fwd != want {
		t.Errorf("forwarding of a:\nhave %+v\nwant %+v", fwd, want)
	}
	po := probeOptions(a.HealthCheck, nil)
	if po.Type != "tcp" || po.Interval != 5*time.Second || po.Timeout != time.Second || po.Rise != 2 || po.Fall != 3 || po.Path != "" {
		t.Errorf("probe of a: %+v", po)
	}
	wo := watchOptions("a", a, cfg.Consul, nil)
	if wo.Service != "a" || wo.Tag != "blue" || wo.WeightKey != "w" || !wo.Stale {
		t.Errorf("watch of a: %+v", wo)
	}
	b := cfg.Services["b"]
	if fwd := forwardOptions("b", b, nil, nil); fwd.StickyHeader != "X-User" || fwd.StickyCookie != "" || fwd.Attempts != proxy.DefaultAttempts {
		t.Errorf("forwarding of b: %+v", fwd)
	}
	if _, err := poolPolicy("b", b, secret); err != nil {
		t.Errorf("policy of b: %v", err)
	}
}

// TestApplyUnchangedKeepsEverything: applying the same file again keeps
// every runtime object and sends no new Consul query.
func TestApplyUnchangedKeepsEverything(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	src := configText(baseConfig, "FRONT", front, "ADMIN", adm)
	ta := startApp(t, fc, src)
	ta.synced()
	if code, body := get(t, "http://"+front+"/"); code != 200 || body != "w1" {
		t.Fatalf("before: %d %q", code, body)
	}
	svc := ta.services["web"]
	pool, watch, probe, lst, admin := svc.pool, svc.watch, svc.probe, ta.listeners[0], ta.admin
	// The first query is answered; the second blocks until cancelled.
	waitUntil(t, "the blocking query", func() bool { return fc.count("127.0.0.1:8500", "web", "") >= 2 })
	queries := fc.count("127.0.0.1:8500", "web", "")

	ta.reload()
	if st := ta.status().(Status); st.Generation != 2 || st.LastReload == nil || st.LastReload.Result != "success" {
		t.Fatalf("status after reload: %+v", st)
	}
	if ta.services["web"] != svc || svc.pool != pool || svc.watch != watch || svc.probe != probe ||
		ta.listeners[0] != lst || ta.admin != admin {
		t.Error("an unchanged reload replaced a runtime object")
	}
	if n := fc.count("127.0.0.1:8500", "web", ""); n != queries {
		t.Errorf("an unchanged reload sent Consul queries: %d before, %d after", queries, n)
	}
	if code, body := get(t, "http://"+front+"/"); code != 200 || body != "w1" {
		t.Errorf("after: %d %q", code, body)
	}
}

// TestApplyChanges: each kind of change replaces only what depends on it.
func TestApplyChanges(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	fc.add("api", "a1", backend(t, "a1"))
	front, adm := freeAddr(t), freeAddr(t)
	ta := startApp(t, fc, configText(baseConfig, "FRONT", front, "ADMIN", adm))
	ta.synced()
	svc := ta.services["web"]
	pool, watch, probe, lst := svc.pool, svc.watch, svc.probe, ta.listeners[0]

	// Strategy, tag and probe change; a route and a service are added.
	extra := freeAddr(t)
	ta.write(configText(`
admin {
  address = "ADMIN"
}
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
  route "/api" {
    service = "api"
  }
}
listener "more" {
  address = "EXTRA"
  route "/" {
    service = "api"
  }
}
service "web" {
  strategy = "least_connections"
  tag      = "v2"
  sticky {
    mode = "cookie"
  }
}
`, "FRONT", front, "ADMIN", adm, "EXTRA", extra))
	ta.reload()
	if st := ta.status().(Status); st.LastReload.Result != "success" {
		t.Fatalf("reload: %+v", st.LastReload)
	}
	if ta.services["web"] != svc || svc.pool != pool {
		t.Fatal("the pool of a kept service was replaced")
	}
	if s := pool.Load().Strategy; s != "least_connections" {
		t.Errorf("strategy after reload: %s", s)
	}
	if svc.watch == watch {
		t.Error("a changed tag kept the old watch")
	}
	if svc.probe != nil || probe == nil {
		t.Error("a removed health_check kept its prober")
	}
	if ta.listeners[0] != lst {
		t.Error("a listener at the same address was replaced")
	}
	waitUntil(t, "a query with the new tag", func() bool { return fc.count("127.0.0.1:8500", "web", "v2") > 0 })
	// The new service's routes are live at once (it had its answer).
	if code, body := get(t, "http://"+front+"/api"); code != 200 || body != "a1" {
		t.Errorf("new route: %d %q", code, body)
	}
	if code, body := get(t, "http://"+extra+"/"); code != 200 || body != "a1" {
		t.Errorf("new listener: %d %q", code, body)
	}

	// A consul block change replaces every watch and keeps the pools.
	apiSvc := ta.services["api"]
	apiPool, apiWatch := apiSvc.pool, apiSvc.watch
	src, _ := os.ReadFile(ta.file)
	ta.write("consul {\n  address = \"127.0.0.2:8500\"\n}\n" + string(src))
	ta.reload()
	if apiSvc.pool != apiPool || apiSvc.watch == apiWatch {
		t.Error("a consul change must keep the pool and replace the watch")
	}
	waitUntil(t, "a query to the new consul", func() bool { return fc.count("127.0.0.2:8500", "api", "") > 0 })

	// Removing the extra listener and the api service.
	ta.write(configText(baseConfig, "FRONT", front, "ADMIN", adm))
	ta.reload()
	if _, ok := ta.services["api"]; ok {
		t.Error("a removed service is still running")
	}
	waitUntil(t, "the removed listener to close", func() bool {
		c, err := net.Dial("tcp", extra)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

// TestReloadFailsWhole: a new listener on a busy port fails the reload,
// and the route change in the same file is not applied.
func TestReloadFailsWhole(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	fc.add("api", "a1", backend(t, "a1"))
	front, adm := freeAddr(t), freeAddr(t)
	ta := startApp(t, fc, configText(baseConfig, "FRONT", front, "ADMIN", adm))
	ta.synced()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	ta.write(configText(`
admin {
  address = "ADMIN"
}
listener "public" {
  address = "FRONT"
  route "/" {
    service = "api"
  }
}
listener "busy" {
  address = "BUSY"
  route "/" {
    service = "api"
  }
}
`, "FRONT", front, "ADMIN", adm, "BUSY", busy.Addr().String()))
	ta.reload()
	st := ta.status().(Status)
	if st.Generation != 1 || st.LastReload.Result != "failure" || len(st.LastReload.Diagnostics) != 1 ||
		!strings.Contains(st.LastReload.Diagnostics[0], busy.Addr().String()) {
		t.Errorf("status: %+v %+v", st, st.LastReload)
	}
	if code, body := get(t, "http://"+front+"/"); code != 200 || body != "w1" {
		t.Errorf("a failed reload changed the route: %d %q", code, body)
	}
	if _, ok := ta.services["api"]; ok {
		t.Error("a failed reload started a service")
	}
}

// TestReloadInvalidFile: an invalid file changes nothing and is reported
// with FILE:LINE,COL.
func TestReloadInvalidFile(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	ta := startApp(t, fc, configText(baseConfig, "FRONT", front, "ADMIN", adm))
	ta.synced()
	ta.write(strings.Replace(configText(baseConfig, "FRONT", front, "ADMIN", adm), `"round_robin"`, `"nope"`, 1))
	ta.reload()
	st := ta.status().(Status)
	want := ta.file + ":12,"
	if st.Generation != 1 || st.LastReload.Result != "failure" || len(st.LastReload.Diagnostics) == 0 ||
		!strings.HasPrefix(st.LastReload.Diagnostics[0], want) {
		t.Errorf("status: %+v %+v; want a diagnostic at %s", st, st.LastReload, want)
	}
	if !strings.Contains(ta.logs.String(), want) {
		t.Errorf("log lacks the diagnostic:\n%s", ta.logs.String())
	}
	if s := ta.services["web"].pool.Load().Strategy; s != "round_robin" {
		t.Errorf("strategy changed to %s", s)
	}
	if code, _ := get(t, "http://"+front+"/"); code != 200 {
		t.Errorf("after a failed reload: %d", code)
	}
}

// TestReloadKeepsPoolState: probe verdicts and in-flight counts survive a
// reload that changes the strategy, and one that replaces the prober.
func TestReloadKeepsPoolState(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backendFunc(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	fc.add("web", "w2", backend(t, "w2"))
	front, adm := freeAddr(t), freeAddr(t)
	src := configText(`
admin {
  address = "ADMIN"
}
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "round_robin"
  health_check {
    interval = "100ms"
    timeout  = "100ms"
    fall     = 1
  }
}
`, "FRONT", front, "ADMIN", adm)
	ta := startApp(t, fc, src)
	ta.synced()
	pool := ta.services["web"].pool
	member := func(id string) balance.MemberStatus {
		for _, m := range pool.Load().Members {
			if m.ID == id {
				return m
			}
		}
		t.Fatalf("%s not in the pool", id)
		return balance.MemberStatus{}
	}
	waitUntil(t, "the probe to take w1 out", func() bool { return member("n1/w1").Probe == balance.ProbeFailing })
	res, err := pool.Load().Picker.Pick(balance.PickInfo{})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Cancel()
	if res.Endpoint.ID != "n1/w2" {
		t.Fatalf("picked %s with w1 out", res.Endpoint.ID)
	}
	for _, change := range []struct{ from, to string }{
		{`"round_robin"`, `"least_connections"`}, // the pool's policy
		{`"100ms"`, `"200ms"`},                   // the prober
	} {
		src = strings.Replace(src, change.from, change.to, 1)
		ta.write(src)
		ta.reload()
		if st := ta.status().(Status); st.LastReload.Result != "success" {
			t.Fatalf("reload to %s: %+v", change.to, st.LastReload)
		}
		if ta.services["web"].pool != pool {
			t.Fatal("the pool was replaced")
		}
		if m := member("n1/w1"); m.Probe != balance.ProbeFailing || m.Eligible {
			t.Errorf("after the change to %s, w1: probe %s, eligible %v", change.to, m.Probe, m.Eligible)
		}
		if n := member("n1/w2").Stats.Inflight(); n != 1 {
			t.Errorf("after the change to %s, w2 in flight: %d", change.to, n)
		}
	}
	if s := pool.Load().Strategy; s != "least_connections" {
		t.Errorf("strategy %s", s)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReloadReopensAccessLog: after logrotate renames an access-log file, a
// reload makes sluice write to a new file at the configured path; lines
// written before stay in the renamed one.
func TestReloadReopensAccessLog(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	src := strings.Replace(configText(baseConfig, "FRONT", front, "ADMIN", adm),
		`address = "`+front+`"`, `address = "`+front+`"`+"\n  access_log = \""+logPath+"\"", 1)
	ta := startApp(t, fc, src)
	ta.synced()
	lines := func(path string) int {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "\n")
	}
	get(t, "http://"+front+"/before")
	waitUntil(t, "the first line", func() bool { return lines(logPath) == 1 })
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	ta.reload()
	if st := ta.status().(Status); st.LastReload.Result != "success" {
		t.Fatalf("reload: %+v", st.LastReload)
	}
	get(t, "http://"+front+"/after")
	waitUntil(t, "a line in the new file", func() bool { return lines(logPath) == 1 })
	if n := lines(logPath + ".1"); n != 1 {
		t.Errorf("the rotated file has %d lines, want 1", n)
	}
	if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "path=/after") {
		t.Errorf("new file: %q", b)
	}
	if fi, err := os.Stat(logPath); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("new file mode: %v %v", fi.Mode(), err)
	}
}
