package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/sluice-lb/sluice/proxy"
)

// TestMetrics: /metrics counts what the test sent, per route and code;
// instance series follow Consul health and leave with their instance; tcp
// bytes and open connections match the traffic.
func TestMetrics(t *testing.T) {
	consul := startConsul(t)
	a, b := startControlledBackend(t, "a", nil), startControlledBackend(t, "b", nil)
	consul.register("web", "web-a", a.addr(), nil)
	consul.register("web", "web-b", b.addr(), nil)
	echo := startBackendProcess(t, "tcp", "echo")
	consul.register("echo", "echo-1", echo.addr, nil)
	echoAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := startSluiceConfig(t, consul.Addr, fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/web" {
    service = "web"
  }
  route "/none" {
    service = "ghost"
  }
}
listener "echo" {
  address  = %q
  protocol = "tcp"
  service  = "echo"
}
service "web" {
  strategy = "round_robin"
  retry {
    attempts = 1
  }
}
`, echoAddr))
	waitFor(t, 10*time.Second, "instances", func() bool {
		return len(s.service("web").Instances) == 2 && len(s.service("echo").Instances) == 1
	})
	instA, instB := map[string]string{"service": "web", "instance": consulNode + "/web-a"}, map[string]string{"service": "web", "instance": consulNode + "/web-b"}

	// From the start: both reload results at 0, the start counted as the
	// last successful load, Consul state, the Go and process collectors.
	m := s.scrape()
	for _, result := range []string{"success", "failure"} {
		if got := m.value(t, "sluice_config_reloads_total", map[string]string{"result": result}); got != 0 {
			t.Errorf("sluice_config_reloads_total{result=%q} = %v at start", result, got)
		}
	}
	if got := m.value(t, "sluice_config_last_reload_success_timestamp_seconds", nil); got < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("sluice_config_last_reload_success_timestamp_seconds = %v", got)
	}
	web := map[string]string{"service": "web"}
	if got := m.value(t, "sluice_consul_last_success_timestamp_seconds", web); got < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("sluice_consul_last_success_timestamp_seconds{service=web} = %v", got)
	}
	if got := m.value(t, "sluice_consul_errors_total", web); got != 0 {
		t.Errorf("sluice_consul_errors_total{service=web} = %v", got)
	}
	if got, want := m.value(t, "sluice_consul_index", web), float64(s.service("web").ConsulIndex); got != want {
		t.Errorf("sluice_consul_index{service=web} = %v, /v1/services says %v", got, want)
	}
	if got := m.value(t, "sluice_retries_total", web); got != 0 {
		t.Errorf("sluice_retries_total{service=web} = %v", got)
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds", "sluice_service_instances"} {
		if len(m[name].GetMetric()) == 0 {
			t.Errorf("no %s", name)
		}
	}
	checkStates := func(when string, m metricFamilies, want map[string]float64) {
		t.Helper()
		for state, n := range want {
			if got := m.value(t, "sluice_service_instances", map[string]string{"service": "web", "state": state}); got != n {
				t.Errorf("%s: sluice_service_instances{service=web,state=%s} = %v, want %v", when, state, got, n)
			}
		}
	}
	checkStates("at start", m, map[string]float64{"passing": 2, "critical": 0, "eligible": 2, "ejected": 0, "probe_failing": 0})

	// Requests per route and code.
	const n200, n404, n503 = 20, 7, 5
	send := func(path string, want int, count int) {
		t.Helper()
		for i := 0; i < count; i++ {
			if status, _, _, err := s.get(path); err != nil || status != want {
				t.Fatalf("GET %s: %d (%v), want %d", path, status, err, want)
			}
		}
	}
	send("/web/x", http.StatusOK, n200)
	send("/nowhere", http.StatusNotFound, n404)
	send("/none", http.StatusServiceUnavailable, n503)
	public := map[string]string{"listener": "public"}
	waitFor(t, 5*time.Second, "request counters", func() bool {
		return s.scrape().sum("sluice_requests_total", public) >= n200+n404+n503
	})
	m = s.scrape()
	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"listener": "public", "route": "/web", "service": "web", "code": "200"}, n200},
		{map[string]string{"listener": "public", "route": proxy.NoRouteLabel, "service": "", "code": "404"}, n404},
		{map[string]string{"listener": "public", "route": "/none", "service": "ghost", "code": "503"}, n503},
		{public, n200 + n404 + n503},
	} {
		if got := m.sum("sluice_requests_total", c.labels); got != c.want {
			t.Errorf("sluice_requests_total%v = %v, want %v; the series: %s", c.labels, got, c.want, m.describe("sluice_requests_total"))
		}
	}
	if got := m.sum("sluice_request_duration_seconds", map[string]string{"listener": "public", "route": "/web", "service": "web"}); got != n200 {
		t.Errorf("sluice_request_duration_seconds{route=/web} count = %v, want %d", got, n200)
	}
	if got := m.sum("sluice_request_duration_seconds", map[string]string{"listener": "public", "route": "/none", "service": "ghost"}); got != n503 {
		t.Errorf("sluice_request_duration_seconds{route=/none} count = %v, want %d", got, n503)
	}

	// Instance health.
	for _, in := range []map[string]string{instA, instB} {
		if got := m.value(t, "sluice_instance_up", in); got != 1 {
			t.Errorf("sluice_instance_up%v = %v, want 1", in, got)
		}
		if got := m.value(t, "sluice_instance_inflight", in); got != 0 {
			t.Errorf("sluice_instance_inflight%v = %v, want 0", in, got)
		}
	}
	consul.setCheck("web-a", api.HealthCritical)
	waitFor(t, 10*time.Second, "web-a critical", func() bool { in, _ := s.instance("web", "web-a"); return !in.Eligible })
	m = s.scrape()
	if got := m.value(t, "sluice_instance_up", instA); got != 0 {
		t.Errorf("sluice_instance_up of critical web-a = %v, want 0", got)
	}
	if got := m.value(t, "sluice_instance_up", instB); got != 1 {
		t.Errorf("sluice_instance_up of web-b = %v, want 1", got)
	}
	checkStates("web-a critical", m, map[string]float64{"passing": 1, "critical": 1, "eligible": 1})
	consul.setCheck("web-a", api.HealthPassing)
	waitFor(t, 10*time.Second, "web-a passing", func() bool { in, _ := s.instance("web", "web-a"); return in.Eligible })
	if got := s.scrape().value(t, "sluice_instance_up", instA); got != 1 {
		t.Errorf("sluice_instance_up of web-a passing again = %v, want 1", got)
	}

	// Upstream errors: b answers 500s for a while.
	b.fail500.Store(true)
	var n500 int
	for i := 0; i < 6; i++ {
		status, _, _, err := s.get("/web/x")
		if err != nil {
			t.Fatal(err)
		}
		if status == http.StatusInternalServerError {
			n500++
		}
	}
	b.fail500.Store(false)
	if n500 == 0 {
		t.Fatal("no request reached web-b; the test proves nothing")
	}
	waitFor(t, 5*time.Second, "500s counted", func() bool {
		return s.scrape().sum("sluice_requests_total", map[string]string{"listener": "public", "code": "500"}) >= float64(n500)
	})
	m = s.scrape()
	if got := m.sum("sluice_requests_total", map[string]string{"listener": "public", "code": "500"}); got != float64(n500) {
		t.Errorf("sluice_requests_total{code=500} = %v, want %d", got, n500)
	}
	statusErrors := map[string]string{"service": "web", "instance": consulNode + "/web-b", "kind": "status"}
	if got := m.value(t, "sluice_upstream_errors_total", statusErrors); got != float64(n500) {
		t.Errorf("sluice_upstream_errors_total%v = %v, want %d", statusErrors, got, n500)
	}

	// A deregistered instance takes its series with it.
	instanceFamilies := []string{"sluice_instance_up", "sluice_instance_inflight", "sluice_upstream_errors_total", "sluice_instance_ejections_total"}
	for _, name := range instanceFamilies {
		if len(m.series(name, instB)) == 0 {
			t.Errorf("no %s series for web-b before it leaves", name)
		}
	}
	consul.deregister("web-b")
	waitFor(t, 10*time.Second, "web-b gone from /v1/services", func() bool { _, listed := s.instance("web", "web-b"); return !listed })
	m = s.scrape()
	for name, mf := range m {
		for _, metric := range mf.GetMetric() {
			if label(metric, "instance") == consulNode+"/web-b" {
				t.Errorf("%s still has a series for the deregistered web-b: %v", name, metric.GetLabel())
			}
		}
	}
	for _, name := range instanceFamilies[:2] {
		if len(m.series(name, instA)) == 0 {
			t.Errorf("%s lost web-a's series too", name)
		}
	}

	// TCP: bytes and open connections.
	echoLabels := map[string]string{"listener": "echo", "protocol": "tcp"}
	conn, err := net.DialTimeout("tcp", echoAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitFor(t, 5*time.Second, "one open tcp connection", func() bool {
		return s.scrape().sum("sluice_open_connections", echoLabels) == 1
	})
	payload := strings.Repeat("0123456789abcdef", 4096) // 64 KiB
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	echoed, err := io.ReadAll(conn)
	if err != nil || string(echoed) != payload {
		t.Fatalf("echo: %d bytes (%v), want %d", len(echoed), err, len(payload))
	}
	conn.Close()
	waitFor(t, 5*time.Second, "tcp connection closed and counted", func() bool {
		m := s.scrape()
		return m.sum("sluice_open_connections", echoLabels) == 0 &&
			m.sum("sluice_tcp_bytes_total", map[string]string{"listener": "echo", "direction": "in"}) >= float64(len(payload)) &&
			m.sum("sluice_tcp_bytes_total", map[string]string{"listener": "echo", "direction": "out"}) >= float64(len(payload))
	})
	m = s.scrape()
	for _, dir := range []string{"in", "out"} {
		labels := map[string]string{"listener": "echo", "direction": dir}
		if got := m.value(t, "sluice_tcp_bytes_total", labels); got != float64(len(payload)) {
			t.Errorf("sluice_tcp_bytes_total%v = %v, want %d", labels, got, len(payload))
		}
	}

	// HTTP: the client's idle keep-alive connections are open until it
	// closes them.
	httpLabels := map[string]string{"listener": "public", "protocol": "http"}
	if got := m.value(t, "sluice_open_connections", httpLabels); got < 1 {
		t.Errorf("sluice_open_connections%v = %v with the client's idle connection open", httpLabels, got)
	}
	s.client.CloseIdleConnections()
	waitFor(t, 5*time.Second, "http connections closed", func() bool {
		return s.scrape().value(t, "sluice_open_connections", httpLabels) == 0
	})
}
