package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// load runs concurrent GETs through sluice until stop is closed and counts
// failures (transport errors and non-200 answers).
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	examples   []string
	wg         sync.WaitGroup
	stop       chan struct{}
	stopOnce   sync.Once
}

func startLoad(s *sluice, workers int) *load {
	l := &load{stop: make(chan struct{})}
	for i := 0; i < workers; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				status, _, body, err := s.get("/")
				if err == nil && status == http.StatusOK {
					l.ok.Add(1)
					continue
				}
				l.failed.Add(1)
				l.mu.Lock()
				if len(l.examples) < 5 {
					l.examples = append(l.examples, fmt.Sprintf("%d %v %s", status, err, strings.TrimSpace(body)))
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// finish stops the workers and waits for them; it may be called again.
func (l *load) finish() { l.stopOnce.Do(func() { close(l.stop) }); l.wg.Wait() }

// TestKillBackendUnderLoad: kill -9 of one backend process under steady
// load costs no client request, and the instance gets no traffic 1 s later
// although Consul still calls it passing.
func TestKillBackendUnderLoad(t *testing.T) {
	consul := startConsul(t)
	var victims []*backendProcess
	for _, name := range []string{"a", "b", "c"} {
		b := startBackendProcess(t, "http", name)
		victims = append(victims, b)
		consul.register("web", "web-"+name, b.addr, nil)
	}
	s := startSluice(t, consul.Addr, "web", `
service "web" {
  strategy = "round_robin"
  health_check {
    type     = "tcp"
    interval = "500ms"
    timeout  = "200ms"
    fall     = 2
  }
  passive {
    consecutive_failures = 3
    ejection_time        = "30s"
  }
  retry {
    attempts = 3
  }
}
`)
	waitFor(t, 10*time.Second, "three instances", func() bool { return len(s.service("web").Instances) == 3 })
	l := startLoad(s, 8)
	waitFor(t, 10*time.Second, "steady load", func() bool { return l.ok.Load() > 300 })

	victims[1].kill()
	killed := time.Now()
	time.Sleep(time.Second) // the bound: no traffic 1 s after the kill
	in, _ := s.instance("web", "web-b")
	at1s, okAt1s := in.Requests, l.ok.Load()
	// Picks after the 1 s mark: 1000 answers, each round robin's pick
	// among the instances sluice holds eligible.
	waitFor(t, 10*time.Second, "load after the 1 s mark", func() bool { return l.ok.Load() >= okAt1s+1000 })
	l.finish()

	in, _ = s.instance("web", "web-b")
	t.Logf("after the kill: %d ok, %d failed; web-b: %+v (kill %v ago)", l.ok.Load(), l.failed.Load(), in, time.Since(killed).Round(time.Millisecond))
	if l.failed.Load() != 0 {
		t.Errorf("%d client requests failed, e.g. %v", l.failed.Load(), l.examples)
	}
	if in.Eligible || in.Consul != "passing" {
		t.Errorf("killed instance: want ineligible while Consul says passing, have %+v", in)
	}
	if in.Requests != at1s {
		t.Errorf("killed instance picked %d more times after 1 s", in.Requests-at1s)
	}
}

// TestProbeCatchesWhatConsulMisses: an instance failing sluice's probe path
// leaves rotation within fall x interval + interval while Consul still says
// passing, and returns after rise passes.
func TestProbeCatchesWhatConsulMisses(t *testing.T) {
	consul := startConsul(t)
	a, b := startControlledBackend(t, "a", nil), startControlledBackend(t, "b", nil)
	consul.register("web", "web-a", a.addr(), nil)
	consul.register("web", "web-b", b.addr(), nil)
	const interval, fall, rise = 200 * time.Millisecond, 2, 2
	s := startSluice(t, consul.Addr, "web", fmt.Sprintf(`
service "web" {
  strategy = "round_robin"
  health_check {
    type     = "http"
    path     = "/health"
    interval = "%v"
    timeout  = "100ms"
    rise     = %d
    fall     = %d
  }
}
`, interval, rise, fall))
	waitFor(t, 10*time.Second, "both probed passing", func() bool {
		a, _ := s.instance("web", "web-a")
		b, _ := s.instance("web", "web-b")
		return a.Probe == "passing" && b.Probe == "passing"
	})

	b.healthFail.Store(true)
	failedAt := time.Now()
	waitFor(t, 10*time.Second, "web-b probe failing", func() bool {
		in, _ := s.instance("web", "web-b")
		return in.Probe == "failing" && !in.Eligible && in.Consul == "passing"
	})
	took := time.Since(failedAt)
	// fall x interval + interval, with the 10% jitter and a margin for a
	// loaded machine.
	bound := time.Duration(fall)*interval + interval
	if took > bound*11/10+300*time.Millisecond {
		t.Errorf("probe took %v to remove the instance; bound %v", took, bound)
	}
	before := b.hits.Load()
	counts := sendN(t, s, 40)
	if b.hits.Load() != before || counts["b"] != 0 {
		t.Fatalf("probe-failing instance still got traffic: %v", counts)
	}

	b.healthFail.Store(false)
	waitFor(t, 10*time.Second, "web-b back after rise passes", func() bool {
		in, _ := s.instance("web", "web-b")
		return in.Probe == "passing" && in.Eligible
	})
	if counts := sendN(t, s, 40); counts["b"] == 0 {
		t.Errorf("recovered instance gets no traffic: %v", counts)
	}
	if !strings.Contains(s.proc.out.String(), "probe state changed") {
		t.Error("probe transitions not logged")
	}
}

// TestPassiveEjectsFailingInstance: an instance that starts answering 500s
// is ejected after consecutive_failures, and clients then see successes.
func TestPassiveEjectsFailingInstance(t *testing.T) {
	consul := startConsul(t)
	a, b, c := startControlledBackend(t, "a", nil), startControlledBackend(t, "b", nil), startControlledBackend(t, "c", nil)
	for _, be := range []*controlledBackend{a, b, c} {
		consul.register("web", "web-"+be.name, be.addr(), nil)
	}
	s := startSluice(t, consul.Addr, "web", `
service "web" {
  strategy = "round_robin"
  passive {
    consecutive_failures = 3
    ejection_time        = "1m"
  }
}
`)
	waitFor(t, 10*time.Second, "three instances", func() bool { return len(s.service("web").Instances) == 3 })
	c.fail500.Store(true)
	errors500 := 0
	for i := 0; i < 30; i++ {
		status, _, _, err := s.get("/")
		if err != nil {
			t.Fatal(err)
		}
		if status == http.StatusInternalServerError {
			errors500++
		}
	}
	// The pool owner publishes the ejection after the third failure is
	// counted; on a loaded machine the next pick of web-c (two requests
	// later) may come first, so one more 500 is allowed, never more.
	if errors500 < 3 || errors500 > 4 {
		t.Errorf("want consecutive_failures (3) 500s before the ejection (4 when the next pick wins the race with it), have %d", errors500)
	}
	in, _ := s.instance("web", "web-c")
	if !in.Ejected || in.Eligible {
		t.Fatalf("web-c: want ejected, have %+v", in)
	}
	counts := sendN(t, s, 60)
	if counts["c"] != 0 || counts["a"] == 0 || counts["b"] == 0 {
		t.Errorf("after ejection: %v", counts)
	}
	if !strings.Contains(s.proc.out.String(), "instance ejected") {
		t.Error("ejection not logged")
	}
}

// TestFailoverRules: a POST whose connection died after it was sent is not
// sent again; a GET is retried on another instance; with nothing eligible
// the answer is a 503 naming the service, and one instance passing again
// serves within a second.
func TestFailoverRules(t *testing.T) {
	consul := startConsul(t)
	bodies := make(chan string, 1000)
	a, b := startControlledBackend(t, "a", bodies), startControlledBackend(t, "b", bodies)
	consul.register("web", "web-a", a.addr(), nil)
	consul.register("web", "web-b", b.addr(), nil)
	s := startSluice(t, consul.Addr, "web", `
service "web" {
  strategy = "round_robin"
  retry {
    attempts = 2
  }
}
`)
	waitFor(t, 10*time.Second, "two instances", func() bool { return len(s.service("web").Instances) == 2 })
	a.drop.Store(true) // a reads each request, then drops the connection

	var failedPosts int
	const posts = 20
	for i := 0; i < posts; i++ {
		resp, err := s.client.Post("http://"+s.Front+"/", "text/plain", strings.NewReader(fmt.Sprintf("post-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusBadGateway {
			failedPosts++
		}
	}
	received := map[string]int{}
	for len(bodies) > 0 {
		received[<-bodies]++
	}
	for i := 0; i < posts; i++ {
		if n := received[fmt.Sprintf("post-%d", i)]; n != 1 {
			t.Errorf("post-%d reached backends %d times", i, n)
		}
	}
	if failedPosts == 0 {
		t.Error("no POST reached the dropping backend; the test proves nothing")
	}

	// Idempotent requests are retried on the other instance.
	for i := 0; i < 20; i++ {
		req, _ := http.NewRequest(http.MethodPut, "http://"+s.Front+"/", strings.NewReader(fmt.Sprintf("put-%d", i)))
		resp, err := s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Backend") != "b" {
			t.Fatalf("PUT %d: want 200 from b, have %d from %q", i, resp.StatusCode, resp.Header.Get("X-Backend"))
		}
	}
	a.drop.Store(false)

	consul.setCheck("web-a", api.HealthCritical)
	consul.setCheck("web-b", api.HealthCritical)
	waitFor(t, 5*time.Second, "503", func() bool { status, _, _, _ := s.get("/"); return status == http.StatusServiceUnavailable })
	_, _, body, _ := s.get("/")
	if !strings.Contains(body, `"service":"web"`) || !strings.Contains(body, `"error"`) {
		t.Errorf("503 body: %s", body)
	}
	consul.setCheck("web-b", api.HealthPassing)
	back := time.Now()
	waitFor(t, 5*time.Second, "200 again", func() bool { status, _, _, _ := s.get("/"); return status == http.StatusOK })
	if took := time.Since(back); took > time.Second {
		t.Errorf("one instance passing again: 200 took %v, want within 1 s", took)
	}
}

func TestWebSocketH2CAndAccessLog(t *testing.T) {
	consul := startConsul(t)
	a := startControlledBackend(t, "a", nil)
	consul.register("web", "web-a", a.addr(), nil)
	logPath := filepath.Join(t.TempDir(), "access.log")
	s := startSluiceConfig(t, consul.Addr, fmt.Sprintf(`
listener "public" {
  address    = "FRONT"
  access_log = %q
  route "/" {
    service = "web"
  }
}
`, logPath))
	waitFor(t, 10*time.Second, "instance", func() bool { return len(s.service("web").Instances) == 1 })

	echo, err := wsRoundTrip(s.Front, "/ws", "hello over websocket")
	if err != nil || echo != "hello over websocket" {
		t.Fatalf("websocket echo: %q %v", echo, err)
	}

	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protocols}}
	resp, err := h2c.Get("http://" + s.Front + "/h2")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Proto != "HTTP/2.0" || resp.StatusCode != http.StatusOK {
		t.Errorf("h2c: want HTTP/2.0 200, have %s %d", resp.Proto, resp.StatusCode)
	}

	waitFor(t, 5*time.Second, "access log lines", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Count(string(b), "\n") >= 2
	})
	b, _ := os.ReadFile(logPath)
	for _, want := range []string{"listener=public service=web instance=e2e/web-a", "path=/h2 status=200 bytes=1", "path=/ws status=101", "attempts=1"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("access log lacks %q:\n%s", want, b)
		}
	}
}

// TestTCPListener: echo round trip with half-close through a tcp listener;
// with one backend process killed, new connections still succeed.
func TestTCPListener(t *testing.T) {
	consul := startConsul(t)
	e1, e2 := startBackendProcess(t, "tcp", "echo1"), startBackendProcess(t, "tcp", "echo2")
	consul.register("echo", "echo-1", e1.addr, nil)
	consul.register("echo", "echo-2", e2.addr, nil)
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := startSluiceConfig(t, consul.Addr, fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = "unused"
  }
}
listener "echo" {
  address  = %q
  protocol = "tcp"
  service  = "echo"
}
service "echo" {
  strategy = "round_robin"
  retry {
    attempts = 2
  }
}
`, tcpAddr))
	waitFor(t, 10*time.Second, "two echo instances", func() bool { return len(s.service("echo").Instances) == 2 })

	roundTrip := func(i int) error {
		c, err := net.DialTimeout("tcp", tcpAddr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := strings.Repeat(fmt.Sprintf("message %d ", i), 1000)
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		// Half-close: the backend sees EOF, echoes everything, then closes.
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		got, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("echo: %d bytes, want %d", len(got), len(msg))
		}
		return nil
	}
	for i := 0; i < 10; i++ {
		if err := roundTrip(i); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	e1.kill()
	for i := 0; i < 20; i++ {
		if err := roundTrip(100 + i); err != nil {
			t.Fatalf("after kill, connection %d: %v", i, err)
		}
	}
	in, _ := s.instance("echo", "echo-1")
	if in.Inflight != 0 {
		t.Errorf("echo-1 in flight %d after its connections ended", in.Inflight)
	}
}
