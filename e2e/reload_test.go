package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/admin"
)

// mixedLoad runs clients against one URL until stop: half keep their
// connections alive, half open a new connection per request. Each client
// sends at most one request every 5 ms, so that the reloads under test get
// the CPU too.
type mixedLoad struct {
	ok, failed, refused atomic.Int64
	mu                  sync.Mutex
	examples            []string
	wg                  sync.WaitGroup
	stop                chan struct{}
}

func startMixedLoad(url string, clients int) *mixedLoad {
	l := &mixedLoad{stop: make(chan struct{})}
	for i := 0; i < clients; i++ {
		tr := &http.Transport{DisableKeepAlives: i%2 == 1}
		client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer tr.CloseIdleConnections()
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				resp, err := client.Get(url)
				var status int
				var body []byte
				if err == nil {
					status = resp.StatusCode
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				if err == nil && status == http.StatusOK {
					l.ok.Add(1)
					continue
				}
				l.failed.Add(1)
				if errors.Is(err, syscall.ECONNREFUSED) {
					l.refused.Add(1)
				}
				l.mu.Lock()
				if len(l.examples) < 5 {
					l.examples = append(l.examples, fmt.Sprintf("keep-alive=%v: %d %v %s", !tr.DisableKeepAlives, status, err, strings.TrimSpace(string(body))))
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *mixedLoad) finish() { close(l.stop); l.wg.Wait() }

// getFrom sends GET url with the given cookies (nil for none) and returns
// the status, the X-Backend header and the answer's cookies.
func getFrom(client *http.Client, url string, cookies ...*http.Cookie) (int, string, []*http.Cookie, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", nil, err
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Backend"), resp.Cookies(), err
}

// TestReloadUnderLoad: 20 SIGHUPs alternating between two files that differ
// in strategies, routes, probe settings and one listener cost the listener
// present in both no request and no refused connection, and close neither
// a kept-alive http connection nor a tcp connection; a sticky cookie
// (secret generated at start) keeps its instance through every reload; the
// request counters never reset; the generation counts every reload.
func TestReloadUnderLoad(t *testing.T) {
	consul := startConsul(t)
	for _, n := range []string{"a", "b", "c"} {
		consul.register("web", "web-"+n, startBackend(t, "web-"+n).addr(), nil)
		consul.register("sess", "sess-"+n, startBackend(t, "sess-"+n).addr(), nil)
	}
	consul.register("extra", "extra-1", startBackend(t, "extra").addr(), nil)
	consul.register("echo", "echo-1", startBackendProcess(t, "tcp", "echo").addr, nil)
	side := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	echoAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	echoListener := fmt.Sprintf(`
listener "echo" {
  address  = %q
  protocol = "tcp"
  service  = "echo"
}
`, echoAddr)

	configA := echoListener + `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
  route "/sess" {
    service = "sess"
  }
}
service "web" {
  strategy = "round_robin"
  health_check {
    interval = "500ms"
    timeout  = "200ms"
  }
}
service "sess" {
  strategy = "round_robin"
  sticky {
    mode = "cookie"
  }
}
`
	configB := echoListener + fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
  route "/sess" {
    service = "sess"
  }
  route "/extra" {
    service = "extra"
  }
}
listener "side" {
  address = %q
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "least_connections"
  health_check {
    interval = "1s"
    timeout  = "300ms"
  }
}
service "sess" {
  strategy = "random"
  sticky {
    mode = "cookie"
  }
}
`, side)

	s := startSluiceConfig(t, consul.Addr, configA)
	waitFor(t, 10*time.Second, "web and sess instances", func() bool {
		return len(s.service("web").Instances) == 3 && len(s.service("sess").Instances) == 3
	})
	if st := s.status(); st.Generation != 1 || st.LastReload != nil || st.Config != s.Path {
		t.Fatalf("status after start: %+v", st)
	}

	// The sticky client: its first answer pins it to an instance.
	front := "http://" + s.Front
	status, pinned, cookies, err := getFrom(s.client, front+"/sess")
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /sess: %d %v", status, err)
	}
	var cookie *http.Cookie
	for _, c := range cookies {
		if c.Name == "sluice_sess" {
			cookie = c
		}
	}
	if cookie == nil {
		t.Fatalf("GET /sess set no sluice_sess cookie: %v", cookies)
	}
	checkSticky := func(when string) {
		t.Helper()
		for i := 0; i < 5; i++ {
			status, backend, _, err := getFrom(s.client, front+"/sess", cookie)
			if err != nil || status != http.StatusOK || backend != pinned {
				t.Fatalf("%s: sticky client got %d from %q (%v), want 200 from %s", when, status, backend, err, pinned)
			}
		}
	}
	checkSticky("before the reloads")

	// Two connections held open across every reload: an http keep-alive
	// connection to the public listener and a tcp connection to the echo
	// listener. Each must still work after each reload.
	held, err := net.DialTimeout("tcp", s.Front, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldReader := bufio.NewReader(held)
	echoConn, err := net.DialTimeout("tcp", echoAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer echoConn.Close()
	echoReader := bufio.NewReader(echoConn)
	checkHeld := func(when string) {
		t.Helper()
		held.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(held, "GET / HTTP/1.1\r\nHost: e2e\r\n\r\n"); err != nil {
			t.Fatalf("%s: held http connection: %v", when, err)
		}
		resp, err := http.ReadResponse(heldReader, nil)
		if err != nil {
			t.Fatalf("%s: held http connection: %v", when, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("%s: held http connection: %s, close %v", when, resp.Status, resp.Close)
		}
		echoConn.SetDeadline(time.Now().Add(10 * time.Second))
		line := when + "\n"
		if _, err := io.WriteString(echoConn, line); err != nil {
			t.Fatalf("%s: held tcp connection: %v", when, err)
		}
		if got, err := echoReader.ReadString('\n'); err != nil || got != line {
			t.Fatalf("%s: held tcp connection echoed %q (%v)", when, got, err)
		}
	}
	checkHeld("before the reloads")
	viaRoot := 1 // requests of the test itself counted under route "/"

	rootRequests := func() float64 {
		return s.scrape().sum("sluice_requests_total", map[string]string{"listener": "public", "route": "/"})
	}
	l := startMixedLoad(front+"/", 8)
	waitFor(t, 10*time.Second, "load running", func() bool { return l.ok.Load() > 100 })

	lastCount := rootRequests()
	const reloads = 20
	for i := 1; i <= reloads; i++ {
		inB := i%2 == 1
		body := configA
		if inB {
			body = configB
		}
		st := s.reload(body)
		if st.Generation != i+1 {
			t.Fatalf("reload %d: generation %d", i, st.Generation)
		}
		// Let the load run on the new configuration.
		okAt := l.ok.Load()
		waitFor(t, 10*time.Second, "load after the reload", func() bool { return l.ok.Load() >= okAt+40 })

		when := fmt.Sprintf("after reload %d", i)
		checkSticky(when)
		checkHeld(when)
		viaRoot++
		status, backend, _, err := getFrom(s.client, front+"/extra")
		if inB {
			if err != nil || status != http.StatusOK || backend != "extra" {
				t.Fatalf("%s: GET /extra: %d from %q (%v), want 200 from extra", when, status, backend, err)
			}
			status, backend, _, err := getFrom(s.client, "http://"+side+"/")
			if err != nil || status != http.StatusOK || !strings.HasPrefix(backend, "web-") {
				t.Fatalf("%s: GET side /: %d from %q (%v), want 200 from web", when, status, backend, err)
			}
		} else {
			viaRoot++
			if err != nil || status != http.StatusOK || !strings.HasPrefix(backend, "web-") {
				t.Fatalf("%s: GET /extra without its route: %d from %q (%v), want 200 from web", when, status, backend, err)
			}
			waitFor(t, 5*time.Second, "the removed listener to stop accepting", func() bool {
				c, err := net.DialTimeout("tcp", side, 2*time.Second)
				if err == nil {
					c.Close()
				}
				return err != nil
			})
		}
		count := rootRequests()
		if count < lastCount {
			t.Fatalf("%s: sluice_requests_total{listener=public,route=/} went down from %v to %v", when, lastCount, count)
		}
		lastCount = count
	}
	l.finish()

	t.Logf("%d requests ok, %d failed, %d refused across %d reloads", l.ok.Load(), l.failed.Load(), l.refused.Load(), reloads)
	if l.failed.Load() != 0 || l.refused.Load() != 0 {
		t.Errorf("%d requests failed (%d connections refused), e.g. %q", l.failed.Load(), l.refused.Load(), l.examples)
	}
	if st := s.status(); st.Generation != reloads+1 || st.LastReload == nil || st.LastReload.Result != "success" {
		t.Errorf("status after %d reloads: %+v", reloads, st)
	}
	want := float64(l.ok.Load()) + float64(viaRoot)
	ok200 := map[string]string{"listener": "public", "route": "/", "service": "web", "code": "200"}
	waitFor(t, 5*time.Second, "request counter to catch up", func() bool {
		return s.scrape().sum("sluice_requests_total", ok200) >= want
	})
	m := s.scrape()
	if got := m.sum("sluice_requests_total", ok200); got != want {
		t.Errorf("sluice_requests_total%v = %v, want %v (every 200 the clients got since the start)", ok200, got, want)
	}
	if got := m.value(t, "sluice_config_reloads_total", map[string]string{"result": "success"}); got != reloads {
		t.Errorf("sluice_config_reloads_total{result=success} = %v, want %d", got, reloads)
	}
	if got := m.value(t, "sluice_config_reloads_total", map[string]string{"result": "failure"}); got != 0 {
		t.Errorf("sluice_config_reloads_total{result=failure} = %v, want 0", got)
	}
}

// webConfig is one http listener routing "/" to service web with the given
// strategy.
func webConfig(strategy string) string {
	return fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = %q
}
`, strategy)
}

// TestReloadInvalidFile: a file with an error changes nothing; the error is
// reported with its position in /v1/status and the log, and counted.
func TestReloadInvalidFile(t *testing.T) {
	consul := startConsul(t)
	consul.register("web", "web-a", startBackend(t, "a").addr(), nil)
	s := startSluiceConfig(t, consul.Addr, webConfig("round_robin"))
	waitFor(t, 10*time.Second, "instance", func() bool { return len(s.service("web").Instances) == 1 })

	invalid := webConfig("nope")
	st := s.reloadFailing(invalid)

	// The error's position: the value "nope" in the file as written.
	var want string
	for i, line := range strings.Split(s.renderConfig(invalid), "\n") {
		if col := strings.Index(line, `"nope"`); col >= 0 {
			want = fmt.Sprintf("%s:%d,%d: ", s.Path, i+1, col+1)
		}
	}
	if len(st.LastReload.Diagnostics) != 1 || !strings.HasPrefix(st.LastReload.Diagnostics[0], want) ||
		!strings.Contains(st.LastReload.Diagnostics[0], `"nope"`) {
		t.Fatalf("diagnostics %q: want one starting with %q and naming \"nope\"", st.LastReload.Diagnostics, want)
	}
	if st.Generation != 1 {
		t.Errorf("generation %d after a failed reload, want 1", st.Generation)
	}
	for i := 0; i < 10; i++ {
		if status, backend, _, err := s.get("/"); err != nil || status != http.StatusOK || backend != "a" {
			t.Fatalf("old configuration after the failed reload: %d from %q (%v)", status, backend, err)
		}
	}
	if got := s.service("web").Strategy; got != "round_robin" {
		t.Errorf("strategy %q after a failed reload, want round_robin", got)
	}
	m := s.scrape()
	if got := m.value(t, "sluice_config_reloads_total", map[string]string{"result": "failure"}); got != 1 {
		t.Errorf("sluice_config_reloads_total{result=failure} = %v, want 1", got)
	}
	if got := m.value(t, "sluice_config_reloads_total", map[string]string{"result": "success"}); got != 0 {
		t.Errorf("sluice_config_reloads_total{result=success} = %v, want 0", got)
	}
	logged := false
	for _, line := range strings.Split(s.proc.out.String(), "\n") {
		if strings.Contains(line, st.LastReload.Diagnostics[0]) && strings.Contains(strings.ToUpper(line), "ERROR") {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no error line in the log with %q", st.LastReload.Diagnostics[0])
	}

	// Fixed, the file applies.
	st = s.reload(webConfig("least_connections"))
	if st.Generation != 2 || len(st.LastReload.Diagnostics) != 0 {
		t.Errorf("status after the fixed reload: %+v", st)
	}
	if got := s.service("web").Strategy; got != "least_connections" {
		t.Errorf("strategy %q after the reload, want least_connections", got)
	}
}

// TestReloadBusyPort: a reload adding a listener whose port is taken fails
// whole: its route change is not applied either, and the old listener
// serves on.
func TestReloadBusyPort(t *testing.T) {
	consul := startConsul(t)
	consul.register("web", "web-a", startBackend(t, "a").addr(), nil)
	consul.register("other", "other-b", startBackend(t, "b").addr(), nil)
	s := startSluiceConfig(t, consul.Addr, webConfig("round_robin"))
	waitFor(t, 10*time.Second, "instance", func() bool { return len(s.service("web").Instances) == 1 })

	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	busy := held.Addr().String()
	changed := fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = "other"
  }
}
listener "side" {
  address = %q
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "round_robin"
}
`, busy)
	st := s.reloadFailing(changed)
	named := false
	for _, d := range st.LastReload.Diagnostics {
		named = named || strings.Contains(d, busy)
	}
	if !named {
		t.Errorf("diagnostics %q do not name %s", st.LastReload.Diagnostics, busy)
	}
	for i := 0; i < 10; i++ {
		if status, backend, _, err := s.get("/"); err != nil || status != http.StatusOK || backend != "a" {
			t.Fatalf("after the failed reload: %d from %q (%v), want 200 from a (route change not applied)", status, backend, err)
		}
	}
	for _, svc := range s.services().Services {
		if svc.Name == "other" {
			t.Errorf("service other of the failed reload is running: %+v", svc)
		}
	}

	// With the port free, the same file applies whole.
	held.Close()
	s.reload(changed)
	if status, backend, _, err := s.get("/"); err != nil || status != http.StatusOK || backend != "b" {
		t.Errorf("after the reload: GET / %d from %q (%v), want 200 from b", status, backend, err)
	}
	if status, backend, _, err := getFrom(s.client, "http://"+busy+"/"); err != nil || status != http.StatusOK || backend != "a" {
		t.Errorf("after the reload: GET side / %d from %q (%v), want 200 from a", status, backend, err)
	}
}

// fetchServices reads /v1/services without failing the test (for use off
// the test goroutine).
func fetchServices(client *http.Client, adminAddr string) (admin.ServicesResponse, error) {
	var out admin.ServicesResponse
	resp, err := client.Get("http://" + adminAddr + "/v1/services")
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&out)
	return out, err
}

// TestReloadKeepsState: an ejected instance and a probe-failing one stay
// out across a reload that changes nothing, one that changes the strategy
// and one that changes the probe's interval; no reload makes the instance
// list flap or resets the Consul index or the instance counters.
func TestReloadKeepsState(t *testing.T) {
	consul := startConsul(t)
	a, b, c := startControlledBackend(t, "a", nil), startControlledBackend(t, "b", nil), startControlledBackend(t, "c", nil)
	for _, be := range []*controlledBackend{a, b, c} {
		consul.register("web", "web-"+be.name, be.addr(), nil)
	}
	config := func(strategy, interval string) string {
		return fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = %q
  health_check {
    type     = "http"
    path     = "/health"
    interval = %q
    timeout  = "100ms"
    rise     = 2
    fall     = 2
  }
  passive {
    consecutive_failures = 3
    ejection_time        = "10m"
    max_ejection_percent = 100
  }
  retry {
    attempts = 1
  }
}
`, strategy, interval)
	}
	s := startSluiceConfig(t, consul.Addr, config("round_robin", "200ms"))
	waitFor(t, 10*time.Second, "three instances probed passing", func() bool {
		svc := s.service("web")
		passing := 0
		for _, in := range svc.Instances {
			if in.Probe == "passing" {
				passing++
			}
		}
		return passing == 3
	})

	c.fail500.Store(true)
	waitFor(t, 10*time.Second, "web-c ejected", func() bool {
		s.get("/")
		in, _ := s.instance("web", "web-c")
		return in.Ejected
	})
	b.healthFail.Store(true)
	waitFor(t, 10*time.Second, "web-b probe failing", func() bool {
		in, _ := s.instance("web", "web-b")
		return in.Probe == "failing" && !in.Eligible
	})
	before := s.service("web")
	requests := map[string]uint64{}
	for _, in := range before.Instances {
		requests[in.ID] = in.Requests
	}
	ejections := map[string]string{"instance": consulNode + "/web-c"}
	ejectionsBefore := s.scrape().sum("sluice_instance_ejections_total", ejections)
	if ejectionsBefore != 1 {
		t.Fatalf("sluice_instance_ejections_total of web-c = %v, want 1", ejectionsBefore)
	}

	// Watch /v1/services through both reloads: every answer must show the
	// same three instances in the same state.
	stop := make(chan struct{})
	watched := make(chan []string)
	go func() {
		var flaps []string
		defer func() { watched <- flaps }()
		client := &http.Client{Timeout: 10 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := fetchServices(client, s.Admin)
			if err != nil {
				flaps = append(flaps, err.Error())
				continue
			}
			if problem := stateProblem(resp, before.ConsulIndex); problem != "" && len(flaps) < 5 {
				flaps = append(flaps, problem)
			}
		}
	}()

	check := func(when, strategy string) {
		t.Helper()
		svc := s.service("web")
		if problem := stateProblem(admin.ServicesResponse{Services: []admin.Service{svc}}, before.ConsulIndex); problem != "" {
			t.Errorf("%s: %s", when, problem)
		}
		if svc.Strategy != strategy {
			t.Errorf("%s: strategy %q, want %q", when, svc.Strategy, strategy)
		}
		for _, in := range svc.Instances {
			if in.Requests < requests[in.ID] {
				t.Errorf("%s: %s requests went down from %d to %d", when, in.ID, requests[in.ID], in.Requests)
			}
		}
		hitsB, hitsC := b.hits.Load(), c.hits.Load()
		for i := 0; i < 20; i++ {
			if status, backend, _, err := s.get("/"); err != nil || status != http.StatusOK || backend != "a" {
				t.Fatalf("%s: %d from %q (%v), want 200 from a", when, status, backend, err)
			}
		}
		if b.hits.Load() != hitsB || c.hits.Load() != hitsC {
			t.Errorf("%s: the instances that are out got traffic (b %d, c %d)", when, b.hits.Load()-hitsB, c.hits.Load()-hitsC)
		}
		if got := s.scrape().sum("sluice_instance_ejections_total", ejections); got != ejectionsBefore {
			t.Errorf("%s: sluice_instance_ejections_total of web-c = %v, want %v", when, got, ejectionsBefore)
		}
	}
	s.reload(config("round_robin", "200ms"))
	check("after a reload that changes nothing", "round_robin")
	s.reload(config("least_connections", "200ms"))
	check("after a reload that changes the strategy", "least_connections")
	s.reload(config("least_connections", "300ms"))
	check("after a reload that changes the probe interval", "least_connections")
	close(stop)
	if flaps := <-watched; len(flaps) > 0 {
		t.Errorf("/v1/services during the reloads: %q", flaps)
	}
}

// stateProblem describes how service web in resp differs from the state
// TestReloadKeepsState set up, or returns "".
func stateProblem(resp admin.ServicesResponse, index uint64) string {
	for _, svc := range resp.Services {
		if svc.Name != "web" {
			continue
		}
		if !svc.Synced || svc.ConsulIndex != index || len(svc.Instances) != 3 {
			return fmt.Sprintf("synced %v, consul_index %d (want %d), %d instances", svc.Synced, svc.ConsulIndex, index, len(svc.Instances))
		}
		for _, in := range svc.Instances {
			var ok bool
			switch in.ID {
			case consulNode + "/web-a":
				ok = in.Eligible
			case consulNode + "/web-b":
				ok = in.Probe == "failing" && !in.Eligible
			case consulNode + "/web-c":
				ok = in.Ejected && !in.Eligible
			}
			if !ok {
				return fmt.Sprintf("instance %+v", in)
			}
		}
		return ""
	}
	return "service web not listed"
}

// TestReloadAddsService: a reload adding a service and a route to it
// serves the route as soon as the generation changes, without a 503, and
// /healthz stays 200 throughout.
func TestReloadAddsService(t *testing.T) {
	consul := startConsul(t)
	consul.register("web", "web-a", startBackend(t, "web").addr(), nil)
	consul.register("api", "api-a", startBackend(t, "api").addr(), nil)
	s := startSluiceConfig(t, consul.Addr, webConfig("round_robin"))
	waitFor(t, 10*time.Second, "instance", func() bool { return len(s.service("web").Instances) == 1 })

	// Until the reload, /api goes to web by route "/"; after it, to api.
	// Every answer on the way must be a 200, and so must /healthz.
	stop := make(chan struct{})
	type tally struct {
		ok       int
		problems []string
	}
	results := make(chan tally, 2)
	poll := func(url string) {
		var r tally
		defer func() { results <- r }()
		client := &http.Client{Timeout: 10 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			status, backend, _, err := getFrom(client, url)
			if err == nil && status == http.StatusOK {
				r.ok++
			} else if len(r.problems) < 5 {
				r.problems = append(r.problems, fmt.Sprintf("%s: %d from %q (%v)", url, status, backend, err))
			}
		}
	}
	go poll("http://" + s.Front + "/api")
	go poll("http://" + s.Admin + "/healthz")

	s.reload(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
  route "/api" {
    service = "api"
  }
}
service "web" {
  strategy = "round_robin"
}
service "api" {
  strategy = "round_robin"
}
`)
	// The first request after the generation changed.
	status, backend, _, err := s.get("/api")
	if err != nil || status != http.StatusOK || backend != "api" {
		t.Errorf("first GET /api after the reload: %d from %q (%v), want 200 from api", status, backend, err)
	}
	close(stop)
	for i := 0; i < 2; i++ {
		if r := <-results; len(r.problems) > 0 || r.ok == 0 {
			t.Errorf("%d ok, problems: %q", r.ok, r.problems)
		}
	}
	if svc := s.service("api"); !svc.Synced || len(svc.Instances) != 1 {
		t.Errorf("service api after the reload: %+v", svc)
	}
}
