package e2e

import (
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// sendN sends n GETs through sluice from 8 goroutines and counts answers
// per backend; any non-200 fails the test.
func sendN(t *testing.T, s *sluice, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	work := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		work <- struct{}{}
	}
	close(work)
	var failure string
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				status, name, body, err := s.get("/")
				mu.Lock()
				if err != nil || status != http.StatusOK {
					failure = strings.TrimSpace(body)
					if err != nil {
						failure = err.Error()
					}
					counts["!error"]++
				} else {
					counts[name]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if counts["!error"] > 0 {
		t.Fatalf("%d of %d requests failed, e.g. %s", counts["!error"], n, failure)
	}
	return counts
}

func TestWeightsFromConsul(t *testing.T) {
	consul := startConsul(t)
	a, b, c := startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")
	bad := startBackend(t, "bad")
	consul.register("web", "web-a", a.addr(), map[string]string{"weight": "1"})
	consul.register("web", "web-b", b.addr(), nil)
	consul.register("web", "web-c", c.addr(), map[string]string{"weight": "3"})
	consul.register("other", "other-bad", bad.addr(), map[string]string{"weight": "abc"})

	s := startSluice(t, consul.Addr, "web", `
service "web" {
  strategy = "weighted_round_robin"
}
listener "other" {
  address = "127.0.0.1:`+itoa(freePort(t))+`"
  route "/" {
    service = "other"
  }
}
`)
	waitFor(t, 10*time.Second, "three web instances", func() bool { return len(s.service("web").Instances) == 3 })
	svc := s.service("web")
	if svc.Strategy != "weighted_round_robin" || svc.ConsulIndex == 0 {
		t.Errorf("service status: %+v", svc)
	}
	for _, in := range svc.Instances {
		want := map[string]int{"e2e/web-a": 1, "e2e/web-b": 1, "e2e/web-c": 3}[in.ID]
		if in.Weight != want || in.Consul != "passing" || !in.Eligible || in.Probe != "unknown" || in.Ejected {
			t.Errorf("instance %s: want weight %d passing eligible, have %+v", in.ID, want, in)
		}
		if in.Address == "" {
			t.Errorf("instance %s: no address", in.ID)
		}
	}
	other := s.service("other")
	if len(other.Instances) != 1 || other.Instances[0].Weight != 1 {
		t.Errorf("bad weight must fall back to 1: %+v", other.Instances)
	}
	if !strings.Contains(s.proc.out.String(), "invalid instance weight") || !strings.Contains(s.proc.out.String(), "other-bad") {
		t.Errorf("bad weight not logged with the instance ID")
	}

	const n = 1000
	counts := sendN(t, s, n)
	share := float64(counts["c"]) / n
	if math.Abs(share-0.6) > 0.05 {
		t.Errorf("weight 3 of 1,1,3: want 60%% ±5%% of %d requests, have %.1f%% (%v)", n, share*100, counts)
	}
	if counts["a"] == 0 || counts["b"] == 0 {
		t.Errorf("weight-1 instances starved: %v", counts)
	}
	in, _ := s.instance("web", "web-c")
	if in.Requests < uint64(counts["c"]) {
		t.Errorf("admin requests of web-c: want >= %d, have %d", counts["c"], in.Requests)
	}
}

// TestConsulChangesDrainInstances checks critical, deregistration and
// maintenance, each taking the instance out of rotation.
func TestConsulChangesDrainInstances(t *testing.T) {
	consul := startConsul(t)
	backends := map[string]*backend{}
	for _, name := range []string{"a", "b", "c", "d"} {
		backends[name] = startBackend(t, name)
		consul.register("web", "web-"+name, backends[name].addr(), nil)
	}
	s := startSluice(t, consul.Addr, "web", "")
	waitFor(t, 10*time.Second, "four instances", func() bool { return len(s.service("web").Instances) == 4 })
	sendN(t, s, 40)

	// drained asserts the instance gets no requests once the admin API says
	// it is out, while the others keep answering.
	drained := func(name string) {
		t.Helper()
		before := backends[name].hits.Load()
		counts := sendN(t, s, 100)
		if have := backends[name].hits.Load() - before; have != 0 || counts[name] != 0 {
			t.Fatalf("%s got %d requests after it left the pool", name, have)
		}
	}

	consul.setCheck("web-a", api.HealthCritical)
	waitFor(t, 5*time.Second, "web-a critical", func() bool {
		in, _ := s.instance("web", "web-a")
		return in.Consul == "critical" && !in.Eligible
	})
	drained("a")

	consul.deregister("web-b")
	waitFor(t, 5*time.Second, "web-b removed", func() bool { _, ok := s.instance("web", "web-b"); return !ok })
	drained("b")

	consul.maintenance("web-c", true)
	waitFor(t, 5*time.Second, "web-c maintenance", func() bool {
		in, _ := s.instance("web", "web-c")
		return in.Consul == "maintenance" && !in.Eligible
	})
	drained("c")

	// Back from critical and out of maintenance: traffic returns.
	consul.setCheck("web-a", api.HealthPassing)
	consul.maintenance("web-c", false)
	waitFor(t, 5*time.Second, "web-a and web-c eligible", func() bool {
		a, _ := s.instance("web", "web-a")
		c, _ := s.instance("web", "web-c")
		return a.Eligible && c.Eligible
	})
	counts := sendN(t, s, 90)
	if counts["a"] == 0 || counts["c"] == 0 || counts["d"] == 0 || counts["b"] != 0 {
		t.Errorf("after recovery: %v", counts)
	}

	// Nothing eligible: 503 with a JSON body naming the service.
	for _, id := range []string{"web-a", "web-c", "web-d"} {
		consul.setCheck(id, api.HealthCritical)
	}
	waitFor(t, 5*time.Second, "no eligible instance", func() bool {
		status, _, _, _ := s.get("/")
		return status == http.StatusServiceUnavailable
	})
	_, _, body, _ := s.get("/")
	if !strings.Contains(body, `"service":"web"`) {
		t.Errorf("503 body does not name the service: %s", body)
	}
}

// TestConsulOutageKeepsLastPool stops the agent under traffic, then starts a
// fresh agent with a different registration and checks the pool resyncs.
func TestConsulOutageKeepsLastPool(t *testing.T) {
	consul := startConsul(t)
	a, b, c := startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")
	consul.register("web", "web-a", a.addr(), nil)
	consul.register("web", "web-b", b.addr(), nil)
	consul.register("web", "web-c", c.addr(), nil)
	s := startSluice(t, consul.Addr, "web", "")
	waitFor(t, 10*time.Second, "three instances", func() bool { return len(s.service("web").Instances) == 3 })
	indexBefore := s.service("web").ConsulIndex

	consul.stop()
	waitFor(t, 15*time.Second, "consul error reported", func() bool { return s.service("web").ConsulError != "" })
	counts := sendN(t, s, 150)
	if counts["a"] == 0 || counts["b"] == 0 || counts["c"] == 0 {
		t.Fatalf("last pool not serving during the outage: %v", counts)
	}

	// A fresh agent on the same address knows only b and c now; its index
	// restarts lower than the one sluice holds.
	consul.start()
	consul.register("web", "web-b", b.addr(), nil)
	consul.register("web", "web-c", c.addr(), nil)
	waitFor(t, 30*time.Second, "pool resynced to b and c", func() bool {
		svc := s.service("web")
		return svc.ConsulError == "" && len(svc.Instances) == 2
	})
	if idx := s.service("web").ConsulIndex; idx >= indexBefore && indexBefore > 1000 {
		t.Logf("index before %d, after %d", indexBefore, idx)
	}
	counts = sendN(t, s, 60)
	if counts["a"] != 0 || counts["b"] == 0 || counts["c"] == 0 {
		t.Errorf("after resync: %v", counts)
	}
}

func TestHealthzWaitsForConsul(t *testing.T) {
	// No agent at this address: /healthz stays 503 while traffic gets 503s.
	addr := "127.0.0.1:" + itoa(freePort(t))
	cfg := writeConfig(t, `
consul {
  address = "`+addr+`"
}
admin {
  address = "127.0.0.1:`+itoa(freePort(t))+`"
}
listener "public" {
  address = "127.0.0.1:`+itoa(freePort(t))+`"
  route "/" {
    service = "web"
  }
}
`)
	p := startProcess(t, binary(t, "SLUICE_BIN", "sluice"), "run", "-config", cfg)
	adminAddr := regexp.MustCompile(`admin \{\s+address = "([^"]+)"`).FindStringSubmatch(readFile(t, cfg))[1]
	waitFor(t, 10*time.Second, "admin up", func() bool {
		resp, err := http.Get("http://" + adminAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: want clean exit, have %v", err)
	}
}

func TestValidateAndStartupErrors(t *testing.T) {
	bin := binary(t, "SLUICE_BIN", "sluice")
	bad := writeConfig(t, `listener "public" {
  address = "127.0.0.1:8080"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "fastest"
  slow_start = "soon"
  colour = "blue"
}
`)
	out, err := exec.Command(bin, "validate", "-config", bad).CombinedOutput()
	if code := exitCode(err); code != 1 {
		t.Fatalf("validate bad file: want exit 1, have %d: %s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(bad) + `:(\d+),(\d+): `)
	var lineNos []string
	for _, l := range lines {
		m := re.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("line not FILE:LINE,COL: %q", l)
		}
		lineNos = append(lineNos, m[1])
	}
	if strings.Join(lineNos, ",") != "8,9,10" {
		t.Fatalf("want three problems on lines 8,9,10, have:\n%s", out)
	}

	// run with the same file prints the same and does not start.
	out, err = exec.Command(bin, "run", "-config", bad).CombinedOutput()
	if code := exitCode(err); code != 1 || len(strings.Split(strings.TrimSpace(string(out)), "\n")) != 3 {
		t.Fatalf("run bad file: want exit 1 and 3 lines, have %d:\n%s", code, out)
	}

	good := writeConfig(t, `listener "public" {
  address = "127.0.0.1:8080"
  route "/" {
    service = "web"
  }
}
`)
	out, err = exec.Command(bin, "validate", "-config", good).CombinedOutput()
	if exitCode(err) != 0 || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 || !strings.Contains(string(out), "ok") {
		t.Fatalf("validate good file: want exit 0 and one line, have %v:\n%s", err, out)
	}

	// A listener address in use is a clear start-up error.
	busy, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := writeConfig(t, `listener "public" {
  address = "`+busy.Addr().String()+`"
  route "/" {
    service = "web"
  }
}
`)
	out, err = exec.Command(bin, "run", "-config", inUse).CombinedOutput()
	if exitCode(err) != 1 || !strings.Contains(string(out), "already in use") || !strings.Contains(string(out), `listener "public"`) {
		t.Fatalf("address in use: want exit 1 naming the listener, have %v:\n%s", err, out)
	}

	out, err = exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "sluice ") {
		t.Fatalf("version: %v %s", err, out)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sluice.hcl")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
