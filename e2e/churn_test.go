package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// BenchmarkChurn measures what check churn on services sluice does not
// route to costs sluice with discovery on: 1,000 unrelated instances (20
// services of 50, no route tag), 50 check flips a second for 15 s, while
// sluice watches the catalog (a discover block, one discovered route) and
// one HCL service. It prints the CPU time sluice and the Consul agent used
// over the flips. Run it with `make bench-churn`; SLUICE_CHURN_SECONDS sets
// the duration. Linux only (/proc).
func BenchmarkChurn(b *testing.B) {
	seconds := 15
	if v, err := strconv.Atoi(os.Getenv("SLUICE_CHURN_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	const services, perService, flipsPerSecond = 20, 50, 50
	consul := startConsul(b)
	web, shop := startBackend(b, "web"), startBackend(b, "shop")
	consul.register("web", "web-1", web.addr(), nil)
	s := startSluiceConfig(b, consul.Addr, `
listener "public" {
  address = "FRONT"
  discover {}
  route "/" {
    service = "web"
  }
}
`)
	tagged := consul.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "shop-1", Name: "shop", Address: "127.0.0.1",
		Port: portOf(b, shop.addr()), Tags: []string{"sluice-route=/shop"}})
	if tagged != nil {
		b.Fatal(tagged)
	}
	waitFor(b, 10*time.Second, "the discovered route", func() bool {
		_, backend, _, err := s.get("/shop")
		return err == nil && backend == "shop"
	})

	var ids []string
	for i := range services {
		for j := range perService {
			id := fmt.Sprintf("churn-%02d-%03d", i, j)
			consul.register(fmt.Sprintf("churn-%02d", i), id, fmt.Sprintf("127.0.0.1:%d", 20000+i*perService+j), nil)
			ids = append(ids, id)
		}
	}
	b.Logf("registered %d unrelated instances", len(ids))

	b.ResetTimer()
	for range b.N {
		sluice0, consul0 := cpuTime(b, s.proc.cmd.Process.Pid), cpuTime(b, consul.proc.cmd.Process.Pid)
		start := time.Now()
		tick := time.NewTicker(time.Second / flipsPerSecond)
		flips := 0
		status := map[string]string{}
		for time.Since(start) < time.Duration(seconds)*time.Second {
			<-tick.C
			id := ids[rand.IntN(len(ids))]
			next := api.HealthCritical
			if status[id] == api.HealthCritical {
				next = api.HealthPassing
			}
			status[id] = next
			consul.setCheck(id, next)
			flips++
		}
		tick.Stop()
		elapsed := time.Since(start)
		sluiceCPU, consulCPU := cpuTime(b, s.proc.cmd.Process.Pid)-sluice0, cpuTime(b, consul.proc.cmd.Process.Pid)-consul0
		b.Logf("%d check flips in %v (%.0f/s) over %d unrelated instances", flips, elapsed.Round(time.Millisecond),
			float64(flips)/elapsed.Seconds(), len(ids))
		b.Logf("sluice (discovery on): %v CPU (%.2f%% of one core; /proc counts in 10ms steps)", sluiceCPU, 100*sluiceCPU.Seconds()/elapsed.Seconds())
		b.Logf("consul agent:          %v CPU (%.2f%% of one core)", consulCPU, 100*consulCPU.Seconds()/elapsed.Seconds())
		b.ReportMetric(100*sluiceCPU.Seconds()/elapsed.Seconds(), "sluice-cpu-%")
		b.ReportMetric(100*consulCPU.Seconds()/elapsed.Seconds(), "consul-cpu-%")
	}
	b.StopTimer()
	if code, backend, _, err := s.get("/shop"); err != nil || code != http.StatusOK || backend != "shop" {
		b.Fatalf("the discovered route after the churn: %d %q %v", code, backend, err)
	}
}

func portOf(t testing.TB, addr string) int {
	t.Helper()
	_, port, _ := strings.Cut(addr, ":")
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// cpuTime returns the user and system CPU time that process pid has used.
func cpuTime(t testing.TB, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("CPU time needs /proc (Linux): %v", err)
	}
	// Fields after the command name, which ends at the last ')': state
	// is field 3, utime 14 and stime 15.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		t.Fatalf("unexpected /proc/%d/stat: %q", pid, s)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("unexpected /proc/%d/stat: %q", pid, s)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks
}
