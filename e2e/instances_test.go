package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/sluice-lb/sluice/proxy/admin"
)

// Issue 12, parts 2-4: which instances count (passing_only, tags,
// node_meta, filter), datacenter failover, backup instances and panic
// mode, against real Consul agents.

// flaky is a backend whose answers (fail: 503 to everything) and health
// endpoint (sick: 500 on /health) can be broken on demand.
type flaky struct {
	name       string
	srv        *httptest.Server
	fail, sick atomic.Bool
	hits       atomic.Int64 // requests other than /health
	first      atomic.Int64 // unix nanos of the first such request after mark, 0 before
	last       atomic.Int64 // unix nanos of the last such request
	mark       atomic.Int64 // see first
}

func startFlaky(t testing.TB, name string) *flaky {
	t.Helper()
	b := &flaky{name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			if b.sick.Load() {
				w.WriteHeader(http.StatusInternalServerError)
			}
			return
		}
		now := time.Now().UnixNano()
		b.hits.Add(1)
		b.last.Store(now)
		if now >= b.mark.Load() {
			b.first.CompareAndSwap(0, now)
		}
		w.Header().Set("X-Backend", name)
		if b.fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, name)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *flaky) addr() string { return strings.TrimPrefix(b.srv.URL, "http://") }

// markNow makes first record the next request from now on.
func (b *flaky) markNow(now time.Time) {
	b.mark.Store(now.UnixNano())
	b.first.Store(0)
}

// registerFull registers an instance of service at b's address with a
// passing TTL check "check-<id>", tags and meta.
func registerFull(c *consulAgent, service, id, addr string, tags []string, meta map[string]string) {
	c.t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	var p int
	fmt.Sscan(port, &p)
	err := c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: service, Address: host, Port: p, Tags: tags, Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: "check-" + id, TTL: "1h", Status: api.HealthPassing},
	})
	if err != nil {
		c.t.Fatalf("register %s: %v", id, err)
	}
}

// served returns the backends that got requests while n more requests
// were answered through sluice.
func served(t *testing.T, l *load, n int64, bs ...*flaky) map[string]bool {
	t.Helper()
	// Requests picked before the change that the caller waited for may
	// still be in flight (one per client): let them finish first.
	flush := l.ok.Load()
	waitFor(t, 20*time.Second, "in-flight requests answered", func() bool { return l.ok.Load() >= flush+16 })
	before := make([]int64, len(bs))
	for i, b := range bs {
		before[i] = b.hits.Load()
	}
	start := l.ok.Load()
	waitFor(t, 20*time.Second, fmt.Sprintf("%d requests", n), func() bool { return l.ok.Load() >= start+n })
	out := map[string]bool{}
	for i, b := range bs {
		if b.hits.Load() > before[i] {
			out[b.name] = true
		}
	}
	return out
}

func names(m map[string]bool) string {
	var out []string
	for _, n := range []string{"a", "b", "c", "d", "e", "l1", "l2", "r1", "p1", "k1"} {
		if m[n] {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// instanceOf returns the status of instance id (a full sluice ID) of service.
func instanceOf(s *sluice, service, id string) (admin.Instance, bool) {
	for _, in := range s.service(service).Instances {
		if in.ID == id {
			return in, true
		}
	}
	return admin.Instance{}, false
}

// queryBackend makes the blocking query sluice makes (stale, cached, with
// an index) for service with tags and q's node meta and filter, and
// returns which Consul backend answered it ("streaming" or
// "blocking-query") and the service IDs of the answer.
func queryBackend(t *testing.T, c *consulAgent, service string, tags []string, q api.QueryOptions) (string, []string) {
	t.Helper()
	q.AllowStale, q.UseCache = true, true
	_, meta, err := c.Client.Health().ServiceMultipleTags(service, tags, false, &q)
	if err != nil {
		t.Fatal(err)
	}
	q.WaitIndex, q.WaitTime = meta.LastIndex, 100*time.Millisecond
	entries, meta, err := c.Client.Health().ServiceMultipleTags(service, tags, false, &q)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	return meta.QueryBackend, ids
}

// TestPassingOnly: with passing_only, a warning instance is listed but
// gets no traffic, with its reason; turned off by a reload, it serves.
func TestPassingOnly(t *testing.T) {
	consul := startConsul(t)
	a, b := startFlaky(t, "a"), startFlaky(t, "b")
	consul.register("web", "web-a", a.addr(), nil)
	consul.register("web", "web-b", b.addr(), nil)
	consul.setCheck("web-b", api.HealthWarning)
	body := `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy     = "round_robin"
  passing_only = %v
}
`
	s := startSluiceConfig(t, consul.Addr, fmt.Sprintf(body, true))
	waitFor(t, 10*time.Second, "web-b listed", func() bool { _, ok := s.instance("web", "web-b"); return ok })
	if in, _ := s.instance("web", "web-b"); in.Eligible || in.Reason != "consul warning (passing_only)" || in.Consul != "warning" {
		t.Fatalf("web-b: want ineligible with reason consul warning (passing_only), have %+v", in)
	}
	l := startLoad(s, 2)
	defer l.finish()
	if have := names(served(t, l, 50, a, b)); have != "a" {
		t.Fatalf("passing_only: want traffic to a only, have %s", have)
	}
	s.reload(fmt.Sprintf(body, false))
	if have := names(served(t, l, 50, a, b)); have != "a,b" {
		t.Fatalf("passing_only off: want traffic to a and b, have %s", have)
	}
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d failed requests: %v", n, l.examples)
	}
}

// TestTags: an instance must carry every tag of tags (as Consul compares
// tags: case-insensitively); tag is shorthand for one; a reload changes
// the set.
func TestTags(t *testing.T) {
	consul := startConsul(t)
	a, b, c := startFlaky(t, "a"), startFlaky(t, "b"), startFlaky(t, "c")
	registerFull(consul, "web", "web-a", a.addr(), []string{"blue", "v2"}, nil)
	registerFull(consul, "web", "web-b", b.addr(), []string{"Blue"}, nil)
	registerFull(consul, "web", "web-c", c.addr(), []string{"v2"}, nil)
	body := `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "round_robin"
  %s
}
`
	backend, ids := queryBackend(t, consul, "web", []string{"blue", "v2"}, api.QueryOptions{})
	t.Logf("Consul answered the query with two tags from the %q backend: %v", backend, ids)
	s := startSluiceConfig(t, consul.Addr, fmt.Sprintf(body, `tags = ["blue", "v2"]`))
	l := startLoad(s, 2)
	defer l.finish()
	if have := names(served(t, l, 50, a, b, c)); have != "a" {
		t.Fatalf(`tags = ["blue", "v2"]: want traffic to a only, have %s`, have)
	}
	if n := len(s.service("web").Instances); n != 1 {
		t.Fatalf("want 1 instance listed, have %d", n)
	}
	s.reload(fmt.Sprintf(body, `tag = "blue"`))
	waitFor(t, 10*time.Second, "a and b listed", func() bool { return len(s.service("web").Instances) == 2 })
	if have := names(served(t, l, 50, a, b, c)); have != "a,b" {
		t.Fatalf(`tag = "blue": want traffic to a and b, have %s`, have)
	}
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d failed requests: %v", n, l.examples)
	}
}

// TestNodeMeta: only instances on nodes whose meta matches node_meta.
// The nodes are registered in the catalog (external nodes, no checks:
// passing).
func TestNodeMeta(t *testing.T) {
	consul := startConsul(t)
	a, b := startFlaky(t, "a"), startFlaky(t, "b")
	for _, n := range []struct {
		node, rack string
		be         *flaky
	}{{"node-r1", "r1", a}, {"node-r2", "r2", b}} {
		host, port, _ := net.SplitHostPort(n.be.addr())
		var p int
		fmt.Sscan(port, &p)
		_, err := consul.Client.Catalog().Register(&api.CatalogRegistration{
			Node: n.node, Address: "127.0.0.1", NodeMeta: map[string]string{"rack": n.rack},
			Service: &api.AgentService{ID: "web-" + n.be.name, Service: "web", Address: host, Port: p},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	backend, ids := queryBackend(t, consul, "web", nil, api.QueryOptions{NodeMeta: map[string]string{"rack": "r1"}})
	t.Logf("Consul answered the query with node meta from the %q backend: %v", backend, ids)
	s := startSluiceConfig(t, consul.Addr, `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  node_meta = { rack = "r1" }
}
`)
	waitFor(t, 10*time.Second, "node-r1/web-a listed", func() bool { _, ok := instanceOf(s, "web", "node-r1/web-a"); return ok })
	if n := len(s.service("web").Instances); n != 1 {
		t.Fatalf("want 1 instance listed, have %+v", s.service("web").Instances)
	}
	l := startLoad(s, 2)
	defer l.finish()
	if have := names(served(t, l, 50, a, b)); have != "a" {
		t.Fatalf("node_meta rack=r1: want traffic to a only, have %s", have)
	}
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d failed requests: %v", n, l.examples)
	}
}

// TestFilter: a Consul filter expression selects the instances, through
// the agent's streaming backend as sluice queries (stale, cached,
// blocking): Consul answers it filtered from streaming, and an instance
// whose meta changes to match joins at once.
func TestFilter(t *testing.T) {
	consul := startConsul(t)
	a, b := startFlaky(t, "a"), startFlaky(t, "b")
	registerFull(consul, "web", "web-a", a.addr(), nil, map[string]string{"version": "2"})
	registerFull(consul, "web", "web-b", b.addr(), nil, map[string]string{"version": "1"})
	const filter = `Service.Meta.version == "2"`
	s := startSluiceConfig(t, consul.Addr, fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "round_robin"
  filter   = %q
}
`, filter))
	// The query sluice makes, made here: Consul serves it from the
	// streaming backend, filtered.
	backend, ids := queryBackend(t, consul, "web", nil, api.QueryOptions{Filter: filter})
	if backend != api.QueryBackendStreaming || strings.Join(ids, ",") != "web-a" {
		t.Fatalf("want web-a alone from the streaming backend, have %v from %q", ids, backend)
	}
	t.Logf("Consul answered the filtered blocking query from the %q backend", backend)

	l := startLoad(s, 2)
	defer l.finish()
	if have := names(served(t, l, 50, a, b)); have != "a" {
		t.Fatalf("filter: want traffic to a only, have %s", have)
	}
	registerFull(consul, "web", "web-b", b.addr(), nil, map[string]string{"version": "2"})
	waitFor(t, 5*time.Second, "web-b listed once its meta matches", func() bool { _, ok := s.instance("web", "web-b"); return ok })
	if have := names(served(t, l, 50, a, b)); have != "a,b" {
		t.Fatalf("filter after the change: want traffic to a and b, have %s", have)
	}
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d failed requests: %v", n, l.examples)
	}
}

// startConsulDC runs a dev agent of datacenter dc joined over the WAN to
// the agent wan (its serf WAN port), and waits until wan lists both
// datacenters.
func startConsulDC(t *testing.T, dc string, wan *consulAgent) *consulAgent {
	t.Helper()
	c := &consulAgent{t: t, ports: [4]int{freePort(t), freePort(t), freePort(t), freePort(t)}}
	c.Addr = fmt.Sprintf("127.0.0.1:%d", c.ports[0])
	c.hcl = []string{fmt.Sprintf("datacenter = %q", dc), fmt.Sprintf("retry_join_wan = [\"127.0.0.1:%d\"]", wan.ports[2])}
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	c.Client = client
	c.start()
	waitFor(t, 30*time.Second, "WAN join of "+dc, func() bool {
		dcs, err := wan.Client.Catalog().Datacenters()
		return err == nil && len(dcs) == 2
	})
	return c
}

// TestFailoverDatacenter: with every local instance critical (and
// answering 503) under load, traffic goes to dc2 within 1 s with no
// failed request (retries reach dc2 during the switch); one local instance
// passing again takes the traffic back within 1 s.
func TestFailoverDatacenter(t *testing.T) {
	dc1 := startConsul(t)
	dc2 := startConsulDC(t, "dc2", dc1)
	l1, l2, r1 := startFlaky(t, "l1"), startFlaky(t, "l2"), startFlaky(t, "r1")
	dc1.register("web", "web-l1", l1.addr(), nil)
	dc1.register("web", "web-l2", l2.addr(), nil)
	dc2.register("web", "web-r1", r1.addr(), nil)
	s := startSluiceConfig(t, dc1.Addr, `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "round_robin"
  failover {
    datacenters = ["dc2"]
  }
  retry {
    attempts = 3
  }
}
`)
	waitFor(t, 10*time.Second, "dc2/e2e/web-r1 listed, standby", func() bool {
		in, ok := instanceOf(s, "web", "dc2/"+consulNode+"/web-r1")
		return ok && in.Datacenter == "dc2" && in.Eligible && in.Standby
	})
	if svc := s.service("web"); svc.Serving != "local" || len(svc.Instances) != 3 {
		t.Fatalf("want 3 instances, local serving, have %q %+v", svc.Serving, svc.Instances)
	}
	l := startLoad(s, 4)
	defer l.finish()
	if have := names(served(t, l, 100, l1, l2, r1)); have != "l1,l2" {
		t.Fatalf("before: want traffic to l1 and l2, have %s", have)
	}

	// Every local instance fails and goes critical.
	t0 := time.Now()
	r1.markNow(t0)
	l1.fail.Store(true)
	l2.fail.Store(true)
	dc1.setCheck("web-l1", api.HealthCritical)
	dc1.setCheck("web-l2", api.HealthCritical)
	waitFor(t, 5*time.Second, "dc2 serving", func() bool { return s.service("web").Serving == "dc2" })
	settled := time.Now()
	if have := names(served(t, l, 100, l1, l2, r1)); have != "r1" {
		t.Fatalf("after local critical: want traffic to r1 only, have %s", have)
	}
	lastLocal := time.Unix(0, max(l1.last.Load(), l2.last.Load()))
	toDC2 := max(lastLocal.Sub(t0), 0)
	firstDC2 := time.Unix(0, r1.first.Load()).Sub(t0)
	t.Logf("failover to dc2: first answer from dc2 %v after the change, last request to a local instance %v after (dc2 serving seen after %v)",
		firstDC2, toDC2, settled.Sub(t0))
	if toDC2 > time.Second {
		t.Errorf("traffic reached local instances %v after they went critical; want within 1s", toDC2)
	}

	// One local instance passes again.
	t1 := time.Now()
	l1.markNow(t1)
	l1.fail.Store(false)
	dc1.setCheck("web-l1", api.HealthPassing)
	waitFor(t, 5*time.Second, "local serving", func() bool { return s.service("web").Serving == "local" })
	if have := names(served(t, l, 100, l1, l2, r1)); have != "l1" {
		t.Fatalf("after l1 passing: want traffic to l1 only, have %s", have)
	}
	back := time.Unix(0, l1.first.Load()).Sub(t1)
	lastDC2 := max(time.Unix(0, r1.last.Load()).Sub(t1), 0)
	t.Logf("failback to local: first answer from l1 %v after it passed, last request to dc2 %v after", back, lastDC2)
	if back > time.Second || lastDC2 > time.Second {
		t.Errorf("traffic back to local after %v (last to dc2 after %v); want within 1s", back, lastDC2)
	}
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d failed requests during the switches: %v", n, l.examples)
	}
	t.Logf("%d requests answered, 0 failed", l.ok.Load())
}

// TestBackupInstances: an instance with the backup tag gets traffic only
// while no primary is eligible.
func TestBackupInstances(t *testing.T) {
	consul := startConsul(t)
	p1, k1 := startFlaky(t, "p1"), startFlaky(t, "k1")
	registerFull(consul, "web", "web-p1", p1.addr(), nil, nil)
	registerFull(consul, "web", "web-k1", k1.addr(), []string{"backup"}, nil)
	s := startSluiceConfig(t, consul.Addr, `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  backup_tag = "backup"
}
`)
	waitFor(t, 10*time.Second, "web-k1 listed as a standby backup", func() bool {
		in, ok := s.instance("web", "web-k1")
		return ok && in.Backup && in.Eligible && in.Standby
	})
	l := startLoad(s, 2)
	defer l.finish()
	if have := names(served(t, l, 100, p1, k1)); have != "p1" {
		t.Fatalf("primary up: want traffic to p1 only, have %s", have)
	}
	consul.setCheck("web-p1", api.HealthCritical)
	waitFor(t, 5*time.Second, "local backup serving", func() bool { return s.service("web").Serving == "local backup" })
	if have := names(served(t, l, 100, p1, k1)); have != "k1" {
		t.Fatalf("primary critical: want traffic to k1 only, have %s", have)
	}
	consul.setCheck("web-p1", api.HealthPassing)
	waitFor(t, 5*time.Second, "local serving", func() bool { return s.service("web").Serving == "local" })
	if have := names(served(t, l, 100, p1, k1)); have != "p1" {
		t.Fatalf("primary back: want traffic to p1 only, have %s", have)
	}
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d failed requests: %v", n, l.examples)
	}
}

// TestPanicThreshold: with probes failing on most instances, panic mode
// serves every instance Consul calls healthy (never the critical one);
// below the threshold it does not.
func TestPanicThreshold(t *testing.T) {
	consul := startConsul(t)
	bs := []*flaky{startFlaky(t, "a"), startFlaky(t, "b"), startFlaky(t, "c"), startFlaky(t, "d"), startFlaky(t, "e")}
	for _, b := range bs {
		consul.register("web", "web-"+b.name, b.addr(), nil)
	}
	consul.setCheck("web-e", api.HealthCritical)
	s := startSluiceConfig(t, consul.Addr, `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy        = "round_robin"
  panic_threshold = 50
  health_check {
    path     = "/health"
    interval = "100ms"
    timeout  = "100ms"
    rise     = 1
    fall     = 1
  }
}
`)
	waitFor(t, 10*time.Second, "five instances", func() bool { return len(s.service("web").Instances) == 5 })
	l := startLoad(s, 2)
	defer l.finish()
	probe := func(id string) string { in, _ := s.instance("web", id); return in.Probe }

	// One of four failing: no panic, it is out.
	bs[0].sick.Store(true)
	waitFor(t, 5*time.Second, "web-a probe failing", func() bool { return probe("web-a") == "failing" })
	if svc := s.service("web"); svc.Panic {
		t.Fatal("panic mode with 3 of 4 healthy")
	}
	if have := names(served(t, l, 100, bs...)); have != "b,c,d" {
		t.Fatalf("one probe failing: want traffic to b, c, d, have %s", have)
	}

	// Three of four failing: panic mode serves all four.
	bs[1].sick.Store(true)
	bs[2].sick.Store(true)
	waitFor(t, 5*time.Second, "panic mode", func() bool { return s.service("web").Panic })
	if have := names(served(t, l, 100, bs...)); have != "a,b,c,d" {
		t.Fatalf("panic: want traffic to a, b, c, d (not the critical e), have %s", have)
	}
	if in, _ := s.instance("web", "web-a"); in.Reason != "eligible (panic mode)" || in.Probe != "failing" {
		t.Fatalf("web-a in panic: %+v", in)
	}
	if v := s.scrape().value(t, "sluice_service_panic", map[string]string{"service": "web"}); v != 1 {
		t.Fatalf("sluice_service_panic = %v, want 1", v)
	}

	// Recovery ends it.
	for _, b := range bs[:3] {
		b.sick.Store(false)
	}
	waitFor(t, 5*time.Second, "panic mode over", func() bool { return !s.service("web").Panic })
	if v := s.scrape().value(t, "sluice_service_panic", map[string]string{"service": "web"}); v != 0 {
		t.Fatalf("sluice_service_panic = %v, want 0", v)
	}
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d failed requests: %v", n, l.examples)
	}
}
