// Command bench measures sluice side by side with HAProxy and nginx on this
// machine, in one run: the same three Go backends behind each, the proxy
// under test pinned to CPU 0, load generator and backends to CPU 1, runs
// alternating between contenders for several rounds. It prints a markdown
// table of medians and writes it, the raw figures and a chart into a results
// folder. Run it with `make bench`; loopback only.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "backend":
			err = runBackend(os.Args[2:])
		case "tcpload":
			err = runTCPLoad(os.Args[2:])
		case "httprate":
			err = runHTTPRate(os.Args[2:])
		case "connload":
			err = runConnLoad(os.Args[2:])
		case "consul":
			err = runBigService(os.Args[2:])
		default:
			err = run(os.Args[1:])
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := run(nil); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// options of a bench run.
type options struct {
	rounds    int
	duration  time.Duration
	out       string
	sluice    string
	consul    string
	changes   int
	skipKill  bool
	workloads string
	profile   string
}

func run(args []string) error {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of every workload and contender (A B C, A B C, ...)")
	fs.DurationVar(&o.duration, "d", 5*time.Second, "duration of each run")
	fs.StringVar(&o.out, "out", "", "results folder (default results/bench-<time>)")
	fs.StringVar(&o.sluice, "sluice", "bin/sluice", "sluice binary")
	fs.StringVar(&o.consul, "consul", "bin/consul", "consul binary")
	fs.IntVar(&o.changes, "changes", 50, "Consul changes per kind for the reaction figures")
	fs.BoolVar(&o.skipKill, "skip-kill", false, "skip the kill -9 failover runs")
	fs.StringVar(&o.workloads, "only", "", "comma-separated workload names to run (default all)")
	fs.StringVar(&o.profile, "cpuprofile", "", "file for sluice's CPU profile over the whole run (sluice run -cpuprofile)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ensureTools(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if o.out == "" {
		o.out = filepath.Join("results", "bench-"+time.Now().UTC().Format("20060102-150405"))
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "sluice-bench-")
	if err != nil {
		return err
	}
	env, err := setup(&o, self, work)
	defer env.teardown()
	if err != nil {
		return fmt.Errorf("%w (configs and logs kept in %s)", err, work)
	}
	defer os.RemoveAll(work)
	fmt.Printf("machine: %s\nresults: %s\n\n", machine(), o.out)

	rows, err := measure(&o, env)
	if err != nil {
		return err
	}
	react, err := reaction(&o, env)
	if err != nil {
		return fmt.Errorf("reaction: %w", err)
	}
	var kills []killResult
	if !o.skipKill {
		if kills, err = killRuns(&o, env); err != nil {
			return fmt.Errorf("kill runs: %w", err)
		}
	}
	return report(&o, rows, react, kills)
}

// ensureTools installs HAProxy, nginx and wrk from Debian's packages when
// one is missing, and says so.
func ensureTools() error {
	var missing []string
	for _, tool := range []string{"haproxy", "nginx", "wrk", "taskset", "h2load"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Printf("missing %s: installing haproxy nginx-light wrk util-linux nghttp2-client from Debian's packages\n", strings.Join(missing, ", "))
	cmd := exec.Command("apt-get", "install", "-y", "haproxy", "nginx-light", "wrk", "util-linux", "nghttp2-client")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("apt-get install (run as root, or install haproxy nginx-light wrk nghttp2-client yourself): %w", err)
	}
	return nil
}

// contender is one way to reach the backends.
type contender struct {
	name     string
	httpAddr string // "" when it does not proxy HTTP
	tcpAddr  string // "" when it does not proxy TCP
	tlsAddr  string // HTTPS (HTTP/1.1 and h2 by ALPN); "" when none
	proc     *proc  // nil for direct
}

// env is everything setup started.
type env struct {
	work       string
	self       string
	consulAddr string
	adminAddr  string
	procs      []*proc
	backends   []*backendProc
	contenders []*contender
}

type backendProc struct {
	name, httpAddr, tcpAddr string
	proc                    *proc
}

func (e *env) teardown() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].stop(syscall.SIGTERM)
	}
	for _, b := range e.backends {
		b.proc.stop(syscall.SIGKILL)
	}
}

func (e *env) startBackend(b *backendProc) error {
	p, err := start(e.work, b.name, "1", nil, e.self, "backend", "-name", b.name, "-http", b.httpAddr, "-tcp", b.tcpAddr)
	if err != nil {
		return err
	}
	b.proc = p
	if err := waitTCP(b.httpAddr, 10*time.Second); err != nil {
		return err
	}
	return waitTCP(b.tcpAddr, 10*time.Second)
}

func setup(o *options, self, work string) (*env, error) {
	e := &env{work: work, self: self}
	// Consul dev agent on free ports (CPU 1: it is not under test).
	ports := []int{freePort(), freePort(), freePort(), freePort()}
	e.consulAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	p, err := start(work, "consul", "1", nil, o.consul, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]), "-serf-lan-port", strconv.Itoa(ports[1]), "-serf-wan-port", strconv.Itoa(ports[2]),
		"-server-port", strconv.Itoa(ports[3]), "-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }", "-log-level", "warn")
	if err != nil {
		return e, err
	}
	e.procs = append(e.procs, p)
	if err := waitHTTP("http://"+e.consulAddr+"/v1/status/leader", 200, 30*time.Second); err != nil {
		return e, err
	}
	time.Sleep(time.Second) // leader elected and node synced

	for i := 1; i <= 3; i++ {
		b := &backendProc{name: fmt.Sprintf("b%d", i),
			httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort()), tcpAddr: fmt.Sprintf("127.0.0.1:%d", freePort())}
		if err := e.startBackend(b); err != nil {
			return e, err
		}
		e.backends = append(e.backends, b)
		if err := register(e.consulAddr, "bench-http", "http-"+b.name, b.httpAddr); err != nil {
			return e, err
		}
		if err := register(e.consulAddr, "bench-tcp", "tcp-"+b.name, b.tcpAddr); err != nil {
			return e, err
		}
	}
	e.contenders = append(e.contenders, &contender{name: "direct", httpAddr: e.backends[0].httpAddr, tcpAddr: e.backends[0].tcpAddr})
	cert, err := writeBenchCert(work)
	if err != nil {
		return e, err
	}

	// sluice
	s := &contender{name: "sluice", httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort()), tcpAddr: fmt.Sprintf("127.0.0.1:%d", freePort()),
		tlsAddr: fmt.Sprintf("127.0.0.1:%d", freePort())}
	e.adminAddr = fmt.Sprintf("127.0.0.1:%d", freePort())
	cfg := filepath.Join(work, "sluice.hcl")
	if err := os.WriteFile(cfg, []byte(sluiceConfig(e.consulAddr, e.adminAddr, s.httpAddr, s.tcpAddr, s.tlsAddr, cert)), 0o644); err != nil {
		return e, err
	}
	argv := []string{o.sluice, "run", "-config", cfg}
	if o.profile != "" {
		argv = append(argv, "-cpuprofile", o.profile)
	}
	if s.proc, err = start(work, "sluice", "0", nil, argv...); err != nil {
		return e, err
	}
	e.procs = append(e.procs, s.proc)
	if err := waitHTTP("http://"+e.adminAddr+"/healthz", 200, 20*time.Second); err != nil {
		return e, err
	}
	e.contenders = append(e.contenders, s)

	// HAProxy
	h := &contender{name: "haproxy", httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort()), tcpAddr: fmt.Sprintf("127.0.0.1:%d", freePort()),
		tlsAddr: fmt.Sprintf("127.0.0.1:%d", freePort())}
	cfg = filepath.Join(work, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxyConfig(h.httpAddr, h.tcpAddr, h.tlsAddr, cert, e.backends)), 0o644); err != nil {
		return e, err
	}
	if h.proc, err = start(work, "haproxy", "0", nil, "haproxy", "-db", "-f", cfg); err != nil {
		return e, err
	}
	e.procs = append(e.procs, h.proc)
	if err := waitTCP(h.httpAddr, 10*time.Second); err != nil {
		return e, err
	}
	e.contenders = append(e.contenders, h)

	// nginx (nginx-light has no stream module: HTTP only)
	n := &contender{name: "nginx", httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort()), tlsAddr: fmt.Sprintf("127.0.0.1:%d", freePort())}
	prefix := filepath.Join(work, "nginx")
	os.MkdirAll(filepath.Join(prefix, "logs"), 0o755)
	cfg = filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(nginxConfig(prefix, n.httpAddr, n.tlsAddr, cert, e.backends)), 0o644); err != nil {
		return e, err
	}
	if n.proc, err = start(work, "nginx", "0", nil, "nginx", "-p", prefix, "-c", cfg, "-g", "daemon off;"); err != nil {
		return e, err
	}
	e.procs = append(e.procs, n.proc)
	if err := waitTCP(n.httpAddr, 10*time.Second); err != nil {
		return e, err
	}
	e.contenders = append(e.contenders, n)

	// Every contender answers before measuring.
	for _, c := range e.contenders {
		if err := waitHTTP("http://"+c.httpAddr+"/", 200, 20*time.Second); err != nil {
			return e, fmt.Errorf("%s: %w", c.name, err)
		}
		if c.tlsAddr != "" {
			if err := waitTCP(c.tlsAddr, 10*time.Second); err != nil {
				return e, fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	return e, nil
}

func sluiceConfig(consulAddr, adminAddr, httpAddr, tcpAddr, tlsAddr string, cert benchCert) string {
	return fmt.Sprintf(`
consul {
  address = %q
}
admin {
  address = %q
}
listener "http" {
  address = %q
  route "/" {
    service = "bench-http"
  }
}
listener "tcp" {
  address  = %q
  protocol = "tcp"
  service  = "bench-tcp"
}
listener "https" {
  address = %q
  tls {
    certificate {
      cert_file = %q
      key_file  = %q
    }
  }
  route "/" {
    service = "bench-http"
  }
}
service "bench-http" {
  strategy = "round_robin"
  health_check {
    type     = "tcp"
    interval = "1s"
    timeout  = "500ms"
    rise     = 2
    fall     = 2
  }
  passive {
    consecutive_failures = 3
    ejection_time        = "10s"
  }
  retry {
    attempts = 3
  }
}
service "bench-tcp" {
  strategy = "round_robin"
}
`, consulAddr, adminAddr, httpAddr, tcpAddr, tlsAddr, cert.certFile, cert.keyFile)
}

// haproxyConfig: one thread, keep-alive both sides, the same checks and
// retries as sluice's config (check every 1 s, fall 2, rise 2; 3 tries with
// redispatch to another server).
func haproxyConfig(httpAddr, tcpAddr, tlsAddr string, cert benchCert, backends []*backendProc) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
  nbthread 1
  maxconn 12000
  # The fd limit here (20000) is below what maxconn 12000 asks for: run
  # with it rather than refuse to start.
  no strict-limits
defaults
  maxconn 12000
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch
frontend fe_http
  mode http
  bind %s
  default_backend be_http
frontend fe_https
  mode http
  bind %s ssl crt %s alpn h2,http/1.1
  default_backend be_http
backend be_http
  mode http
  balance roundrobin
  retry-on all-retryable-errors
  http-reuse safe
`, httpAddr, tlsAddr, cert.bundle)
	for _, be := range backends {
		fmt.Fprintf(&b, "  server %s %s check inter 1s fall 2 rise 2\n", be.name, be.httpAddr)
	}
	fmt.Fprintf(&b, `frontend fe_tcp
  mode tcp
  bind %s
  default_backend be_tcp
backend be_tcp
  mode tcp
  balance roundrobin
`, tcpAddr)
	for _, be := range backends {
		fmt.Fprintf(&b, "  server %s %s\n", be.name, be.tcpAddr)
	}
	return b.String()
}

// nginxConfig: one worker, upstream keep-alive, default passive health
// (max_fails=1 fail_timeout=10s) and proxy_next_upstream error timeout.
func nginxConfig(prefix, httpAddr, tlsAddr string, cert benchCert, backends []*backendProc) string {
	var servers strings.Builder
	for _, be := range backends {
		fmt.Fprintf(&servers, "    server %s;\n", be.httpAddr)
	}
	return fmt.Sprintf(`worker_processes 1;
worker_rlimit_nofile 19000;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log warn;
events {
  worker_connections 16384;
}
http {
  access_log off;
  client_body_temp_path %[1]s/client_body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream be {
%[3]s    keepalive 128;
  }
  server {
    listen %[2]s;
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen %[4]s ssl http2;
    ssl_certificate %[5]s;
    ssl_certificate_key %[6]s;
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`, prefix, httpAddr, servers.String(), tlsAddr, cert.certFile, cert.keyFile)
}

// sample is one run of one workload on one contender.
type sample struct {
	throughput     float64 // per second, in the workload's unit
	units          float64 // requests, MB or connections in the run
	p50, p99, p999 float64 // ms
	cpuUsPerUnit   float64
	kibPerConn     float64 // resident memory growth per open connection; 0: not measured
	errors         int64
	firstErr       string
}

type workload struct {
	name, unit string
	tcp        bool
	tls        bool // runs against tlsAddr
	run        func(o *options, e *env, c *contender) (sample, error)
}

func workloads() []workload {
	return []workload{
		{name: "http small keep-alive", unit: "req/s", run: wrkRun("/", false, false)},
		{name: "http 64KiB", unit: "req/s", run: wrkRun("/64k", false, false)},
		{name: "http new conn", unit: "req/s", run: wrkRun("/", true, false)},
		{name: "http 5k req/s fixed", unit: "req/s", run: rateRun(5000)},
		{name: "http 32 conns at 2k req/s", unit: "req/s", run: connsRun(32, 2000)},
		{name: "http 1k conns at 2k req/s", unit: "req/s", run: connsRun(1000, 2000)},
		{name: "http 10k conns at 2k req/s", unit: "req/s", run: connsRun(10000, 2000)},
		{name: "https small keep-alive", unit: "req/s", tls: true, run: wrkRun("/", false, true)},
		{name: "h2 small (h2load)", unit: "req/s", tls: true, run: h2Run("/")},
		{name: "tcp bulk", unit: "MB/s", tcp: true, run: tcpRun("bulk", 4)},
		{name: "tcp conn rate", unit: "conn/s", tcp: true, run: tcpRun("connrate", 32)},
	}
}

// wrkScript makes wrk print one JSON line with the figures the report needs.
const wrkScript = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"errors":%d,"status_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
`

type wrkResult struct {
	Requests     int64 `json:"requests"`
	DurationUs   int64 `json:"duration_us"`
	P50us        int64 `json:"p50_us"`
	P99us        int64 `json:"p99_us"`
	P999us       int64 `json:"p999_us"`
	Errors       int64 `json:"errors"`
	StatusErrors int64 `json:"status_errors"`
}

// wrk runs wrk pinned to CPU 1 with 32 connections for d.
func wrk(work, url string, d time.Duration, closeConn bool) (wrkResult, error) {
	script := filepath.Join(work, "stats.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
		return wrkResult{}, err
	}
	args := []string{"-c", "1", "wrk", "-t1", "-c32", "-d" + d.String(), "-s", script}
	if closeConn {
		args = append(args, "-H", "Connection: close")
	}
	out, err := exec.Command("taskset", append(args, url)...).Output()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w", url, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var r wrkResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return r, fmt.Errorf("wrk output: %q", out)
	}
	return r, nil
}

// wrkRun runs wrk against the contender's plain HTTP address, or with
// overTLS its HTTPS one (HTTP/1.1, keep-alive: one handshake per
// connection, then requests).
func wrkRun(path string, closeConn, overTLS bool) func(*options, *env, *contender) (sample, error) {
	return func(o *options, e *env, c *contender) (sample, error) {
		url := "http://" + c.httpAddr + path
		if overTLS {
			url = "https://" + c.tlsAddr + path
		}
		before := procTicks(c)
		r, err := wrk(e.work, url, o.duration, closeConn)
		if err != nil {
			return sample{}, err
		}
		ticks := procTicks(c) - before
		s := sample{
			units: float64(r.Requests), throughput: float64(r.Requests) / (float64(r.DurationUs) / 1e6),
			p50: float64(r.P50us) / 1000, p99: float64(r.P99us) / 1000, p999: float64(r.P999us) / 1000,
			errors: r.Errors + r.StatusErrors,
		}
		if c.proc != nil && r.Requests > 0 {
			s.cpuUsPerUnit = float64(ticks) * 1e6 / clockTick / float64(r.Requests)
		}
		return s, nil
	}
}

func tcpRun(mode string, conns int) func(*options, *env, *contender) (sample, error) {
	return func(o *options, e *env, c *contender) (sample, error) {
		before := procTicks(c)
		out, err := exec.Command("taskset", "-c", "1", e.self, "tcpload", "-mode", mode, "-addr", c.tcpAddr,
			"-c", strconv.Itoa(conns), "-d", o.duration.String()).Output()
		if err != nil {
			return sample{}, fmt.Errorf("tcpload %s %s: %w", mode, c.name, err)
		}
		ticks := procTicks(c) - before
		var r tcpResult
		if err := json.Unmarshal(out, &r); err != nil {
			return sample{}, fmt.Errorf("tcpload output %q", out)
		}
		s := sample{p50: r.P50ms, p99: r.P99ms, p999: r.P999ms, errors: r.Errors, firstErr: r.FirstErr}
		s.units = float64(r.Count)
		if mode == "bulk" {
			s.units = float64(r.Count) / 1e6 // MB
		}
		s.throughput = s.units / r.Seconds
		if c.proc != nil && s.units > 0 {
			s.cpuUsPerUnit = float64(ticks) * 1e6 / clockTick / s.units
		}
		return s, nil
	}
}

// rateRun offers the same fixed load to every contender, so latency and
// CPU per request compare at equal work rather than at each one's maximum.
func rateRun(rate int) func(*options, *env, *contender) (sample, error) {
	return func(o *options, e *env, c *contender) (sample, error) {
		before := procTicks(c)
		out, err := exec.Command("taskset", "-c", "1", e.self, "httprate", "-url", "http://"+c.httpAddr+"/",
			"-rate", strconv.Itoa(rate), "-c", "32", "-d", o.duration.String()).Output()
		if err != nil {
			return sample{}, fmt.Errorf("httprate %s: %w", c.name, err)
		}
		ticks := procTicks(c) - before
		var r tcpResult
		if err := json.Unmarshal(out, &r); err != nil {
			return sample{}, fmt.Errorf("httprate output %q", out)
		}
		s := sample{units: float64(r.Count), throughput: float64(r.Count) / r.Seconds,
			p50: r.P50ms, p99: r.P99ms, p999: r.P999ms, errors: r.Errors, firstErr: r.FirstErr}
		if c.proc != nil && r.Count > 0 {
			s.cpuUsPerUnit = float64(ticks) * 1e6 / clockTick / float64(r.Count)
		}
		return s, nil
	}
}

func procTicks(c *contender) int64 {
	if c.proc == nil {
		return 0
	}
	return cpuTicks(c.proc.pid())
}

// measure runs every workload on every contender that supports it, the
// contenders alternating within each round.
func measure(o *options, e *env) ([]Row, error) {
	only := map[string]bool{}
	for _, w := range strings.Split(o.workloads, ",") {
		if w = strings.TrimSpace(w); w != "" {
			only[w] = true
		}
	}
	samples := map[string]map[string][]sample{}
	var order []workload
	for _, w := range workloads() {
		if len(only) == 0 || only[w.name] {
			order = append(order, w)
			samples[w.name] = map[string][]sample{}
		}
	}
	for round := 1; round <= o.rounds; round++ {
		for _, w := range order {
			for _, c := range e.contenders {
				if (w.tcp && c.tcpAddr == "") || (w.tls && c.tlsAddr == "") || (!w.tcp && !w.tls && c.httpAddr == "") {
					continue
				}
				s, err := w.run(o, e, c)
				if err != nil {
					return nil, fmt.Errorf("%s on %s: %w", w.name, c.name, err)
				}
				mem := ""
				if s.kibPerConn != 0 {
					mem = fmt.Sprintf("  rss %.1f KiB/conn", s.kibPerConn)
				}
				fmt.Printf("round %d  %-22s %-8s %10.0f %-6s p99 %6.2f ms  cpu %7.2f µs%s  errors %d %s\n",
					round, w.name, c.name, s.throughput, w.unit, s.p99, s.cpuUsPerUnit, mem, s.errors, s.firstErr)
				samples[w.name][c.name] = append(samples[w.name][c.name], s)
			}
		}
	}
	var rows []Row
	for _, w := range order {
		for _, c := range e.contenders {
			ss := samples[w.name][c.name]
			if len(ss) == 0 {
				continue
			}
			rows = append(rows, Row{
				Workload: w.name, Contender: c.name, Unit: w.unit,
				Throughput:  median(ss, func(s sample) float64 { return s.throughput }),
				Spread:      spread(ss, func(s sample) float64 { return s.throughput }),
				P50ms:       median(ss, func(s sample) float64 { return s.p50 }),
				P99ms:       median(ss, func(s sample) float64 { return s.p99 }),
				P999ms:      median(ss, func(s sample) float64 { return s.p999 }),
				CPUusPerReq: median(ss, func(s sample) float64 { return s.cpuUsPerUnit }),
				KiBPerConn:  median(ss, func(s sample) float64 { return s.kibPerConn }),
				Errors:      sumErrors(ss),
			})
		}
	}
	return rows, nil
}

func median(ss []sample, f func(sample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// spread is (max - min) / median, the run-to-run noise.
func spread(ss []sample, f func(sample) float64) float64 {
	m := median(ss, f)
	if m == 0 {
		return 0
	}
	lo, hi := f(ss[0]), f(ss[0])
	for _, s := range ss {
		lo, hi = min(lo, f(s)), max(hi, f(s))
	}
	return (hi - lo) / m
}

func sumErrors(ss []sample) int64 {
	var n int64
	for _, s := range ss {
		n += s.errors
	}
	return n
}

// reactionResult holds the times from a Consul write to the last request
// that reached the instance, per kind of write.
type reactionResult map[string][]time.Duration

// reaction measures sluice under a steady load of 8 keep-alive clients:
// for o.changes changes of each kind, the time from the Consul write to the
// last request that reached the instance (read from the backend).
func reaction(o *options, e *env) (reactionResult, error) {
	var s *contender
	for _, c := range e.contenders {
		if c.name == "sluice" {
			s = c
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var failures atomic.Int64
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://" + s.httpAddr + "/")
				if err != nil {
					failures.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failures.Add(1)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	lastHit := func(b *backendProc) (int64, error) {
		resp, err := http.Get("http://" + b.httpAddr + "/_last")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strconv.ParseInt(strings.TrimSpace(string(body)), 10, 64)
	}
	res := reactionResult{}
	for i := 0; i < 2*o.changes; i++ {
		kind := []string{"check critical", "deregister"}[i%2]
		b := e.backends[(i/2)%len(e.backends)]
		id := "http-" + b.name
		// Wait until the instance gets traffic again.
		mark := time.Now().UnixNano()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if t, err := lastHit(b); err == nil && t > mark {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s gets no traffic", id)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t0 := time.Now()
		var err error
		if kind == "deregister" {
			err = consulAPI(e.consulAddr, http.MethodPut, "/v1/agent/service/deregister/"+id, nil)
		} else {
			err = consulAPI(e.consulAddr, http.MethodPut, "/v1/agent/check/fail/check-"+id, nil)
		}
		if err != nil {
			return nil, err
		}
		time.Sleep(300 * time.Millisecond)
		last, err := lastHit(b)
		if err != nil {
			return nil, err
		}
		res[kind] = append(res[kind], max(0, time.Unix(0, last).Sub(t0)))
		if kind == "deregister" {
			err = register(e.consulAddr, "bench-http", id, b.httpAddr)
		} else {
			err = consulAPI(e.consulAddr, http.MethodPut, "/v1/agent/check/pass/check-"+id, nil)
		}
		if err != nil {
			return nil, err
		}
	}
	if n := failures.Load(); n > 0 {
		fmt.Printf("reaction runs: %d client errors\n", n)
	}
	return res, nil
}

type killResult struct {
	contender string
	requests  int64
	errors    int64
}

// killRuns: for each proxy, 6 s of wrk load; 2 s in, kill -9 one backend;
// count the requests that failed (socket errors and non-2xx/3xx answers).
// The backend is restarted on the same ports between contenders.
func killRuns(o *options, e *env) ([]killResult, error) {
	var out []killResult
	victim := e.backends[2]
	for _, c := range e.contenders {
		if c.proc == nil {
			continue
		}
		type res struct {
			r   wrkResult
			err error
		}
		done := make(chan res, 1)
		go func() {
			r, err := wrk(e.work, "http://"+c.httpAddr+"/", 6*time.Second, false)
			done <- res{r, err}
		}()
		time.Sleep(2 * time.Second)
		victim.proc.stop(syscall.SIGKILL)
		r := <-done
		if r.err != nil {
			return nil, r.err
		}
		out = append(out, killResult{contender: c.name, requests: r.r.Requests, errors: r.r.Errors + r.r.StatusErrors})
		fmt.Printf("kill -9 under load  %-8s %d requests, %d errors\n", c.name, r.r.Requests, r.r.Errors+r.r.StatusErrors)
		if err := e.startBackend(victim); err != nil {
			return nil, err
		}
		time.Sleep(4 * time.Second) // checks see it again (rise 2 x 1 s; nginx fail_timeout)
	}
	return out, nil
}

// errNoRows: no workload produced a figure.
var errNoRows = errors.New("no results")

func report(o *options, rows []Row, react reactionResult, kills []killResult) error {
	if len(rows) == 0 {
		return errNoRows
	}
	by := map[string]map[string]Row{}
	for _, r := range rows {
		if by[r.Workload] == nil {
			by[r.Workload] = map[string]Row{}
		}
		by[r.Workload][r.Contender] = r
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on %s, with `make bench` (%d rounds of %v per workload and contender, medians; proxy pinned to CPU 0, wrk and backends to CPU 1).\n\n",
		time.Now().UTC().Format("2006-01-02"), machine(), o.rounds, o.duration)
	b.WriteString("| workload | contender | throughput | spread | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/unit | errors | throughput vs HAProxy | CPU vs HAProxy | CPU vs nginx | p99 vs HAProxy | proxy RSS KiB/conn | RSS vs HAProxy |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	ratio := func(a, b float64) string {
		if a == 0 || b == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f×", a/b)
	}
	for _, r := range rows {
		cpu := fmt.Sprintf("%.1f", r.CPUusPerReq)
		if r.Contender == "direct" {
			cpu = "–"
		}
		var tH, vsH, vsN, p99H, mem, memH string
		if r.KiBPerConn != 0 {
			mem = fmt.Sprintf("%.1f", r.KiBPerConn)
		}
		if r.Contender == "sluice" {
			h, n := by[r.Workload]["haproxy"], by[r.Workload]["nginx"]
			tH = ratio(r.Throughput, h.Throughput)
			vsH, vsN, p99H = ratio(r.CPUusPerReq, h.CPUusPerReq), ratio(r.CPUusPerReq, n.CPUusPerReq), ratio(r.P99ms, h.P99ms)
			memH = ratio(r.KiBPerConn, h.KiBPerConn)
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f %s | %.0f%% | %.2f | %.2f | %.2f | %s | %d | %s | %s | %s | %s | %s | %s |\n",
			r.Workload, r.Contender, r.Throughput, r.Unit, r.Spread*100, r.P50ms, r.P99ms, r.P999ms, cpu, r.Errors, tH, vsH, vsN, p99H, mem, memH)
	}
	b.WriteString("\nCPU per unit: per request (http), per MB (tcp bulk), per connection (tcp conn rate). Spread: (max − min) / median of throughput over the rounds, the machine's noise. " +
		"The closed-loop rows (wrk, 32 connections) run each contender at its own maximum; \"http 5k req/s fixed\" offers every contender the same open-loop load, with latency counted from each request's scheduled time. " +
		"nginx-light has no stream module, so nginx is not in the tcp rows. " +
		"The \"conns\" rows hold that many keep-alive client connections open, each answered once before the clock starts, and send the fixed rate over all of them (each connection idle between its requests); " +
		"proxy RSS KiB/conn is the growth of the proxy's resident memory (all its processes) from before the connections opened to the end of the run, divided by the connections. " +
		"The https and h2 rows terminate TLS with the same self-signed ECDSA P-256 certificate on every contender (TLS 1.3, plain HTTP/1.1 to the backends); " +
		"\"h2 small (h2load)\" is h2load with 32 connections of up to 10 streams each, and h2load reports no percentiles: its p50 column is the mean time per request and its p99 and p99.9 columns the maximum.\n")
	if len(react) > 0 {
		b.WriteString("\nReaction through sluice under load (time from the Consul write to the last request that reached the instance):\n\n| Consul write | changes | p50 | p99 | max |\n|---|---|---|---|---|\n")
		for _, kind := range []string{"check critical", "deregister"} {
			d := react[kind]
			slices.Sort(d)
			if len(d) == 0 {
				continue
			}
			p := func(q float64) time.Duration { return d[min(len(d)-1, int(float64(len(d))*q))] }
			fmt.Fprintf(&b, "| %s | %d | %v | %v | %v |\n", kind, len(d), p(0.5).Round(10*time.Microsecond), p(0.99).Round(10*time.Microsecond), d[len(d)-1].Round(10*time.Microsecond))
		}
		b.WriteString("\nHAProxy and nginx take their servers from static configuration here; following Consul needs consul-template reloads or DNS polling.\n")
	}
	if len(kills) > 0 {
		b.WriteString("\n`kill -9` of one of three backends 2 s into 6 s of load (32 connections):\n\n| contender | requests | failed requests |\n|---|---|---|\n")
		for _, k := range kills {
			fmt.Fprintf(&b, "| %s | %d | %d |\n", k.contender, k.requests, k.errors)
		}
	}
	table := b.String()
	fmt.Println()
	fmt.Println(table)
	if err := os.WriteFile(filepath.Join(o.out, "results.md"), []byte(table), 0o644); err != nil {
		return err
	}
	raw, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(filepath.Join(o.out, "results.json"), raw, 0o644); err != nil {
		return err
	}
	chart := filepath.Join(o.out, "chart.png")
	if err := WriteChart(chart, "sluice vs HAProxy vs nginx — "+time.Now().UTC().Format("2006-01-02"), rows); err != nil {
		return err
	}
	fmt.Printf("wrote %s, results.json and %s\n", filepath.Join(o.out, "results.md"), chart)
	return nil
}
