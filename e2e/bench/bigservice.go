package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// bigOptions of `bench consul`.
type bigOptions struct {
	sluice, consul string
	sizes          []int
	rate           int
	duration       time.Duration
	rounds         int
	profile        string
}

// bigRow is one measured window: sluice and the agent following one
// service of n instances whose checks flip between passing and warning.
type bigRow struct {
	n, round     int
	flips        int
	answers      uint64        // sluice_consul_answers_total grew by this much
	window       time.Duration // wall time between the two CPU readings
	sluiceCPU    time.Duration // process CPU time (user + system)
	consulCPU    time.Duration
	sluiceTotalS float64 // sluice's CPU over the whole run, for the profile
}

// runBigService is `bench consul`: for each size N a fresh Consul dev
// agent with one service "big" of N instances (TTL checks, loopback
// addresses nobody dials) and sluice following it; then, for each round,
// flips random checks between passing and warning at -rate per second for
// -d and reports the CPU time both processes spent over that window.
// Nothing sluice routes changes: warning instances stay eligible.
func runBigService(args []string) error {
	var o bigOptions
	fs := flag.NewFlagSet("bench consul", flag.ContinueOnError)
	fs.StringVar(&o.sluice, "sluice", "bin/sluice", "sluice binary")
	fs.StringVar(&o.consul, "consul", "bin/consul", "consul binary")
	sizes := fs.String("n", "100,1000,5000", "comma-separated service sizes")
	fs.IntVar(&o.rate, "rate", 20, "check flips per second")
	fs.DurationVar(&o.duration, "d", 15*time.Second, "duration of each window")
	fs.IntVar(&o.rounds, "rounds", 3, "windows per size")
	fs.StringVar(&o.profile, "cpuprofile", "", "folder for sluice's CPU profiles, one per size (sluice run -cpuprofile)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-n: bad size %q", s)
		}
		o.sizes = append(o.sizes, n)
	}
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return err
		}
	}
	fmt.Printf("machine: %s\n", machine())
	fmt.Printf("one service of N instances, %d check flips/s (passing <-> warning), windows of %v; CPU is process CPU time (user+system)\n\n", o.rate, o.duration)
	fmt.Println("| N | round | flips | answers | sluice CPU s | sluice % of a core | sluice ms/answer | agent CPU s | agent ms/answer |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, n := range o.sizes {
		if err := bigOne(&o, n); err != nil {
			return fmt.Errorf("N=%d: %w", n, err)
		}
	}
	return nil
}

func bigOne(o *bigOptions, n int) error {
	work, err := os.MkdirTemp("", "sluice-bench-consul-")
	if err != nil {
		return err
	}
	var procs []*proc
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop(syscall.SIGTERM)
		}
		os.RemoveAll(work)
	}()
	ports := []int{freePort(), freePort(), freePort(), freePort()}
	consulAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	agent, err := start(work, "consul", "0,1", nil, o.consul, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]), "-serf-lan-port", strconv.Itoa(ports[1]), "-serf-wan-port", strconv.Itoa(ports[2]),
		"-server-port", strconv.Itoa(ports[3]), "-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }", "-log-level", "warn")
	if err != nil {
		return err
	}
	procs = append(procs, agent)
	if err := waitHTTP("http://"+consulAddr+"/v1/status/leader", 200, 30*time.Second); err != nil {
		return err
	}
	if err := registerMany(consulAddr, n); err != nil {
		return err
	}
	if err := waitCatalog(consulAddr, n, 2*time.Minute); err != nil {
		return err
	}

	adminAddr := fmt.Sprintf("127.0.0.1:%d", freePort())
	cfg := filepath.Join(work, "sluice.hcl")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
consul {
  address = %q
}
admin {
  address = %q
}
listener "http" {
  address = "127.0.0.1:%d"
  route "/" {
    service = "big"
  }
}
service "big" {
  strategy = "round_robin"
}
`, consulAddr, adminAddr, freePort())), 0o644); err != nil {
		return err
	}
	argv := []string{o.sluice, "run", "-config", cfg}
	if o.profile != "" {
		argv = append(argv, "-cpuprofile", filepath.Join(o.profile, fmt.Sprintf("sluice-%d.pprof", n)))
	}
	sl, err := start(work, "sluice", "0,1", nil, argv...)
	if err != nil {
		return err
	}
	procs = append(procs, sl)
	if err := waitHTTP("http://"+adminAddr+"/healthz", 200, 30*time.Second); err != nil {
		return err
	}
	answers := func() (uint64, error) {
		return scrapeCounter("http://"+adminAddr+"/metrics", `sluice_consul_answers_total{service="big"}`)
	}
	// Settle: the agent has synced every registration and sluice has the
	// whole set.
	prev, err := answers()
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(time.Minute); ; {
		time.Sleep(time.Second)
		cur, err := answers()
		if err != nil {
			return err
		}
		if cur == prev {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sluice's answers do not settle (%d in the last second)", cur-prev)
		}
		prev = cur
	}

	state := make([]bool, n) // true: warning
	client := &http.Client{Timeout: 10 * time.Second}
	for round := 1; round <= o.rounds; round++ {
		a0, err := answers()
		if err != nil {
			return err
		}
		s0, c0, t0 := cpuTicks(sl.pid()), cpuTicks(agent.pid()), time.Now()
		flips := 0
		tick := time.NewTicker(time.Second / time.Duration(o.rate))
		for end := t0.Add(o.duration); time.Now().Before(end); {
			<-tick.C
			i := rand.N(n)
			verb := "warn"
			if state[i] {
				verb = "pass"
			}
			if err := agentPut(client, consulAddr, "/v1/agent/check/"+verb+"/check-big-"+strconv.Itoa(i)); err != nil {
				tick.Stop()
				return err
			}
			state[i] = !state[i]
			flips++
		}
		tick.Stop()
		// The answers to the last flips arrive within the window's tail.
		time.Sleep(500 * time.Millisecond)
		s1, c1, window := cpuTicks(sl.pid()), cpuTicks(agent.pid()), time.Since(t0)
		a1, err := answers()
		if err != nil {
			return err
		}
		r := bigRow{n: n, round: round, flips: flips, answers: a1 - a0, window: window,
			sluiceCPU: ticksToDuration(s1 - s0), consulCPU: ticksToDuration(c1 - c0)}
		perAnswer := func(d time.Duration) string {
			if r.answers == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)/float64(r.answers))
		}
		fmt.Printf("| %d | %d | %d | %d | %.2f | %.1f%% | %s | %.2f | %s |\n", r.n, r.round, r.flips, r.answers,
			r.sluiceCPU.Seconds(), 100*r.sluiceCPU.Seconds()/r.window.Seconds(), perAnswer(r.sluiceCPU),
			r.consulCPU.Seconds(), perAnswer(r.consulCPU))
	}
	return nil
}

func ticksToDuration(t int64) time.Duration { return time.Duration(t) * time.Second / clockTick }

// registerMany registers big-0..big-(n-1) with passing TTL checks, 16 at a time.
func registerMany(consulAddr string, n int) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				id := "big-" + strconv.Itoa(i)
				err := register(consulAddr, "big", id, fmt.Sprintf("127.0.0.1:%d", 10000+i%50000))
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// waitCatalog polls until the service's health endpoint lists n instances.
func waitCatalog(consulAddr string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get("http://" + consulAddr + "/v1/health/service/big")
		if err == nil {
			var entries []json.RawMessage
			err = json.NewDecoder(resp.Body).Decode(&entries)
			resp.Body.Close()
			if err == nil && len(entries) == n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the catalog does not list %d instances within %v", n, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func agentPut(c *http.Client, consulAddr, path string) error {
	req, _ := http.NewRequest(http.MethodPut, "http://"+consulAddr+path, nil)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("consul PUT %s: %s", path, resp.Status)
	}
	return nil
}

// scrapeCounter reads one series of a Prometheus text exposition.
func scrapeCounter(url, series string) (uint64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return uint64(f), err
		}
	}
	return 0, fmt.Errorf("%s: no series %s", url, series)
}
