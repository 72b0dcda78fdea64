// Package e2e runs sluice end to end: a real Consul agent (bin/consul, or
// $CONSUL_BIN), the real sluice binary (bin/sluice, or $SLUICE_BIN) and real
// HTTP backends on loopback. Consul is changed only through its HTTP API.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sluice-lb/sluice/proxy/admin"
)

// binary resolves a binary from an environment variable or ../bin.
func binary(t testing.TB, env, name string) string {
	t.Helper()
	path := os.Getenv(env)
	if path == "" {
		path = filepath.Join("..", "bin", name)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("%s not found (%v): run `make build consul` or set %s", name, err, env)
	}
	return abs
}

// handedOut holds the ports freePort returned, so that a test never gets
// one twice.
var handedOut sync.Map

// Ports handed to child processes (Consul agents, sluice) come from
// [portLow, portHigh), which lies below Linux's default ephemeral range
// (32768-60999) and below macOS's (49152-65535). A port from the ephemeral
// range that was free a moment ago can be taken by any outgoing connection
// on the machine before the child binds it (a Consul server once failed
// with "address already in use" that way); the kernel never picks a port
// outside that range on its own. When this machine's ephemeral range
// overlaps the block, freePort falls back to a port the kernel picks.
const portLow, portHigh = 20000, 32768

// freePort returns a loopback port, free for TCP and UDP a moment ago (Serf
// binds both), that no other freePort call in this process returned.
func freePort(t testing.TB) int {
	t.Helper()
	portBlockOnce.Do(checkPortBlock)
	if portBlockOverlaps {
		return kernelPort(t)
	}
	start := rand.IntN(portHigh - portLow)
	for i := range portHigh - portLow {
		port := portLow + (start+i)%(portHigh-portLow)
		if _, taken := handedOut.LoadOrStore(port, true); taken {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	t.Fatalf("no free loopback port in [%d, %d)", portLow, portHigh)
	return 0
}

// kernelPort returns a port the kernel picked for 127.0.0.1:0 that no
// other freePort call returned.
func kernelPort(t testing.TB) int {
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if _, taken := handedOut.LoadOrStore(port, true); !taken {
			return port
		}
	}
}

var (
	portBlockOnce     sync.Once
	portBlockOverlaps bool
)

// checkPortBlock sets portBlockOverlaps when Linux's ephemeral port range
// overlaps [portLow, portHigh).
func checkPortBlock() {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return // not Linux
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return
	}
	portBlockOverlaps = lo < portHigh && hi >= portLow
}

// waitFor polls cond every 5ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer collects a process's output for failure reports.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// process is a child process stopped when the test ends.
type process struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	err    error // valid after exited is closed
}

func startProcess(t testing.TB, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(name), p.out.String())
		}
	})
	return p
}

// stop signals the process and waits up to 15s for it to exit.
func (p *process) stop(sig syscall.Signal) error {
	select {
	case <-p.exited:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("did not exit within 15s of %v", sig)
	}
}

// consulAgent is a real Consul dev agent on loopback ports of its own.
type consulAgent struct {
	t       testing.TB
	ports   [4]int // http, serf lan, serf wan, server
	proc    *process
	Addr    string
	Client  *api.Client
	started atomic.Int32
	// hcl is extra agent configuration; afterLeader, when set, runs once
	// the agent has a leader and before start waits for the node (ACL
	// bootstrap).
	hcl         []string
	afterLeader func()
}

func startConsul(t testing.TB) *consulAgent {
	t.Helper()
	c := &consulAgent{t: t, ports: [4]int{freePort(t), freePort(t), freePort(t), freePort(t)}}
	c.Addr = fmt.Sprintf("127.0.0.1:%d", c.ports[0])
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	c.Client = client
	c.start()
	return c
}

// consulNode is the agent's node name: sluice names instances
// "<node>/<service ID>".
const consulNode = "e2e"

// start runs a fresh dev agent (in-memory state) on the agent's ports and
// waits until it has a leader and has synced its node.
func (c *consulAgent) start() {
	t := c.t
	t.Helper()
	args := []string{"agent", "-dev",
		"-node", consulNode, "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", fmt.Sprint(c.ports[0]), "-serf-lan-port", fmt.Sprint(c.ports[1]),
		"-serf-wan-port", fmt.Sprint(c.ports[2]), "-server-port", fmt.Sprint(c.ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }",
		"-log-level", "warn"}
	for _, h := range c.hcl {
		args = append(args, "-hcl", h)
	}
	c.proc = startProcess(t, binary(t, "CONSUL_BIN", "consul"), args...)
	waitFor(t, 30*time.Second, "consul leader", func() bool {
		leader, err := c.Client.Status().Leader()
		return err == nil && leader != ""
	})
	if c.afterLeader != nil {
		c.afterLeader()
	}
	waitFor(t, 30*time.Second, "consul node", func() bool {
		nodes, _, err := c.Client.Catalog().Nodes(nil)
		return err == nil && len(nodes) > 0
	})
}

// stop kills the agent (SIGKILL: an outage, not a graceful leave).
func (c *consulAgent) stop() { _ = c.proc.stop(syscall.SIGKILL) }

// register adds a service instance at addr with a passing TTL check
// "check-<id>" and the given meta.
func (c *consulAgent) register(service, id, addr string, meta map[string]string) {
	c.t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	var p int
	fmt.Sscan(port, &p)
	err := c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: service, Address: host, Port: p, Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: "check-" + id, TTL: "1h", Status: api.HealthPassing},
	})
	if err != nil {
		c.t.Fatalf("register %s: %v", id, err)
	}
}

func (c *consulAgent) setCheck(id, status string) {
	c.t.Helper()
	if err := c.Client.Agent().UpdateTTL("check-"+id, "e2e", status); err != nil {
		c.t.Fatalf("update check of %s: %v", id, err)
	}
}

func (c *consulAgent) deregister(id string) {
	c.t.Helper()
	if err := c.Client.Agent().ServiceDeregister(id); err != nil {
		c.t.Fatalf("deregister %s: %v", id, err)
	}
}

func (c *consulAgent) maintenance(id string, on bool) {
	c.t.Helper()
	var err error
	if on {
		err = c.Client.Agent().EnableServiceMaintenance(id, "e2e")
	} else {
		err = c.Client.Agent().DisableServiceMaintenance(id)
	}
	if err != nil {
		c.t.Fatalf("maintenance %s: %v", id, err)
	}
}

// backend is a real HTTP server that answers its name and counts hits.
type backend struct {
	name string
	srv  *httptest.Server
	hits atomic.Int64
	last atomic.Int64 // unix nanos of the last request
}

func startBackend(t testing.TB, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.last.Store(time.Now().UnixNano())
		w.Header().Set("X-Backend", name)
		io.WriteString(w, name)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) addr() string { return strings.TrimPrefix(b.srv.URL, "http://") }

// sluice is a running `sluice run` process.
type sluice struct {
	t      testing.TB
	proc   *process
	Front  string // http listener address
	Admin  string
	client *http.Client
	// Path is the configuration file; consulAddr is what its consul block
	// names (writeConfig renders the same blocks around a new body).
	Path       string
	consulAddr string
	// consulToken, when set, is the consul block's token, written to a
	// file that token_file names.
	consulToken string
}

// startSluice writes a config with an http listener on a free port routing
// "/" to service (and extra, inserted verbatim), runs sluice with it, and
// waits until /healthz answers 200.
func startSluice(t testing.TB, consulAddr, service, extra string) *sluice {
	t.Helper()
	return startSluiceConfig(t, consulAddr, fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = %q
  }
}
%s
`, service, extra))
}

// startSluiceConfig runs sluice with body (listeners and services; the
// string FRONT stands for the main listener's address) plus consul and
// admin blocks, and waits until /healthz answers 200.
func startSluiceConfig(t testing.TB, consulAddr, body string) *sluice {
	t.Helper()
	s := launchSluice(t, consulAddr, "", body)
	waitFor(t, 20*time.Second, "sluice /healthz 200", func() bool { return s.healthz() == http.StatusOK })
	return s
}

// launchSluice runs sluice like startSluiceConfig, with token (if not "")
// in its consul block, and does not wait for it.
func launchSluice(t testing.TB, consulAddr, token, body string) *sluice {
	t.Helper()
	s := &sluice{
		t:      t,
		Front:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		Admin:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
	}
	s.consulAddr, s.consulToken = consulAddr, token
	s.Path = filepath.Join(t.TempDir(), "sluice.hcl")
	s.writeConfig(body)
	s.proc = startProcess(t, binary(t, "SLUICE_BIN", "sluice"), "run", "-config", s.Path)
	return s
}

// healthz returns the status code of GET /healthz, 0 when it fails.
func (s *sluice) healthz() int {
	resp, err := s.client.Get("http://" + s.Admin + "/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// get sends GET path through sluice and returns status, X-Backend and body.
func (s *sluice) get(path string) (int, string, string, error) {
	resp, err := s.client.Get("http://" + s.Front + path)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Backend"), string(body), err
}

// adminJSON reads GET path of the admin API, which must answer 200, into
// out.
func (s *sluice) adminJSON(path string, out any) {
	s.t.Helper()
	resp, err := s.client.Get("http://" + s.Admin + path)
	if err != nil {
		s.t.Fatalf("admin: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
}

// services reads GET /v1/services.
func (s *sluice) services() admin.ServicesResponse {
	s.t.Helper()
	var out admin.ServicesResponse
	s.adminJSON("/v1/services", &out)
	return out
}

// instance returns the status of one instance, named by its Consul service
// ID on the agent's node, and whether it is listed.
func (s *sluice) instance(service, id string) (admin.Instance, bool) {
	for _, svc := range s.services().Services {
		if svc.Name != service {
			continue
		}
		for _, in := range svc.Instances {
			if in.ID == consulNode+"/"+id {
				return in, true
			}
		}
	}
	return admin.Instance{}, false
}

// service returns the status of one service.
func (s *sluice) service(name string) admin.Service {
	s.t.Helper()
	for _, svc := range s.services().Services {
		if svc.Name == name {
			return svc
		}
	}
	s.t.Fatalf("service %s not in /v1/services", name)
	return admin.Service{}
}

// renderConfig is the whole configuration file for body: the consul and
// admin blocks, then body with FRONT replaced by the main listener's
// address.
func (s *sluice) renderConfig(body string) string {
	var token string
	if s.consulToken != "" {
		// Given as token_file, as an operator would (the file is 0600).
		file := filepath.Join(filepath.Dir(s.Path), "consul.token")
		if err := os.WriteFile(file, []byte(s.consulToken+"\n"), 0o600); err != nil {
			s.t.Fatal(err)
		}
		token = fmt.Sprintf("  token_file = %q\n", file)
	}
	return fmt.Sprintf(`
consul {
  address = %q
%s}
admin {
  address = %q
}
%s
`, s.consulAddr, token, s.Admin, strings.ReplaceAll(body, "FRONT", s.Front))
}

// writeConfig rewrites the configuration file in place (no SIGHUP).
func (s *sluice) writeConfig(body string) {
	s.t.Helper()
	if err := os.WriteFile(s.Path, []byte(s.renderConfig(body)), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// status is the body of GET /v1/status.
type status struct {
	Version    string        `json:"version"`
	Config     string        `json:"config"`
	Generation int           `json:"generation"`
	StartedAt  string        `json:"started_at"`
	LastReload *reloadStatus `json:"last_reload"`
	// TLSCertificates are the listeners' certificates (see certStatus).
	TLSCertificates []certStatus `json:"tls_certificates"`
}

type reloadStatus struct {
	At          string   `json:"at"`
	Result      string   `json:"result"`
	Diagnostics []string `json:"diagnostics"`
}

// status reads GET /v1/status.
func (s *sluice) status() status {
	s.t.Helper()
	var out status
	s.adminJSON("/v1/status", &out)
	return out
}

// scrape reads and parses GET /metrics.
func (s *sluice) scrape() metricFamilies {
	s.t.Helper()
	resp, err := s.client.Get("http://" + s.Admin + "/metrics")
	if err != nil {
		s.t.Fatalf("admin: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		s.t.Fatalf("GET /metrics: %v", err)
	}
	return families
}

// metricFamilies is a parsed scrape, by family name.
type metricFamilies map[string]*dto.MetricFamily

// series returns the metrics of family name whose labels include every
// pair of labels.
func (f metricFamilies) series(name string, labels map[string]string) []*dto.Metric {
	var out []*dto.Metric
	mf := f[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		for k, v := range labels {
			if label(m, k) != v {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// sum adds the values (counter, gauge or untyped; a histogram's sample
// count) of the series of name that match labels.
func (f metricFamilies) sum(name string, labels map[string]string) float64 {
	var total float64
	for _, m := range f.series(name, labels) {
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Untyped != nil:
			total += m.Untyped.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total
}

// value is the single series of name matching labels; the test fails when
// there is none or more than one.
func (f metricFamilies) value(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	if n := len(f.series(name, labels)); n != 1 {
		t.Fatalf("%s%v: want one series, have %d", name, labels, n)
	}
	return f.sum(name, labels)
}

// describe lists the label sets and values of family name, for failure
// messages.
func (f metricFamilies) describe(name string) string {
	var b strings.Builder
	for _, m := range f.series(name, nil) {
		b.WriteString("{")
		for i, l := range m.GetLabel() {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, "%s=%q", l.GetName(), l.GetValue())
		}
		fmt.Fprintf(&b, "} %v; ", f.sum(name, labelMap(m)))
	}
	return b.String()
}

func labelMap(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// hup sends SIGHUP to sluice.
func (s *sluice) hup() {
	s.t.Helper()
	if err := s.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		s.t.Fatalf("SIGHUP: %v", err)
	}
}

// reload rewrites the configuration with body, sends SIGHUP and waits until
// the generation goes up by one; a failed reload fails the test.
func (s *sluice) reload(body string) status {
	s.t.Helper()
	before := s.status()
	s.writeConfig(body)
	s.hup()
	var after status
	waitFor(s.t, 20*time.Second, fmt.Sprintf("generation %d", before.Generation+1), func() bool {
		after = s.status()
		if after.LastReload != nil && after.LastReload.Result == "failure" && !sameReload(after.LastReload, before.LastReload) {
			s.t.Fatalf("reload failed: %q", after.LastReload.Diagnostics)
		}
		return after.Generation > before.Generation
	})
	if after.Generation != before.Generation+1 {
		s.t.Fatalf("generation %d after one reload from %d", after.Generation, before.Generation)
	}
	if after.LastReload == nil || after.LastReload.Result != "success" {
		s.t.Fatalf("generation %d, but last_reload %+v", after.Generation, after.LastReload)
	}
	return after
}

// reloadFailing rewrites the configuration with body, sends SIGHUP and
// waits until sluice has counted a failed reload; it returns the status
// then. A successful reload fails the test.
func (s *sluice) reloadFailing(body string) status {
	s.t.Helper()
	before := s.status()
	failures := s.scrape().value(s.t, "sluice_config_reloads_total", map[string]string{"result": "failure"})
	s.writeConfig(body)
	s.hup()
	waitFor(s.t, 20*time.Second, "a failed reload", func() bool {
		return s.scrape().value(s.t, "sluice_config_reloads_total", map[string]string{"result": "failure"}) > failures
	})
	after := s.status()
	if after.Generation != before.Generation {
		s.t.Fatalf("generation %d -> %d after a reload that should fail", before.Generation, after.Generation)
	}
	if after.LastReload == nil || after.LastReload.Result != "failure" {
		s.t.Fatalf("failed reload counted, but last_reload %+v", after.LastReload)
	}
	return after
}

func sameReload(a, b *reloadStatus) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.At == b.At && a.Result == b.Result && strings.Join(a.Diagnostics, "\n") == strings.Join(b.Diagnostics, "\n")
}

// ---------------------------------------------------------------------------
// Multi-server Consul cluster (leader_test.go).

// consulServer is one server agent of a consulCluster.
type consulServer struct {
	name  string
	ports [4]int // http, serf lan, serf wan, server rpc
	proc  *process
	args  []string // to start it again on the same ports and data
	t     testing.TB
}

// restart starts a killed server again with its ports and data directory.
func (s *consulServer) restart() {
	s.t.Helper()
	s.proc = startProcess(s.t, binary(s.t, "CONSUL_BIN", "consul"), s.args...)
}

// rpcAddr is the address Status().Leader() names when this server leads.
func (s *consulServer) rpcAddr() string { return fmt.Sprintf("127.0.0.1:%d", s.ports[3]) }

// consulCluster is three Consul server agents and one client agent (node
// consulNode, so sluice.instance works) on loopback, each with a data
// directory of its own.
type consulCluster struct {
	servers []*consulServer
	Client  *consulAgent // the client agent: register through it, point sluice at it
}

// startConsulCluster runs three servers (-bootstrap-expect 3, raft_multiplier
// 1) and a client agent joined to them, and waits until the client agent
// names a leader and the catalog lists all four nodes.
func startConsulCluster(t testing.TB) *consulCluster {
	t.Helper()
	bin := binary(t, "CONSUL_BIN", "consul")
	c := &consulCluster{}
	for i := range 3 {
		c.servers = append(c.servers, &consulServer{
			name:  fmt.Sprintf("srv%d", i),
			ports: [4]int{freePort(t), freePort(t), freePort(t), freePort(t)},
		})
	}
	common := func(node string, ports [4]int) []string {
		return []string{"agent", "-node", node, "-data-dir", t.TempDir(),
			"-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-http-port", fmt.Sprint(ports[0]), "-serf-lan-port", fmt.Sprint(ports[1]),
			"-serf-wan-port", fmt.Sprint(ports[2]), "-server-port", fmt.Sprint(ports[3]),
			"-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }",
			"-hcl", "performance { raft_multiplier = 1 }",
			"-log-level", "info"}
	}
	for i, s := range c.servers {
		args := append(common(s.name, s.ports), "-server", "-bootstrap-expect", "3")
		for j, o := range c.servers {
			if j != i {
				args = append(args, "-retry-join", fmt.Sprintf("127.0.0.1:%d", o.ports[1]), "-retry-interval", "200ms")
			}
		}
		s.t, s.args = t, args
		s.proc = startProcess(t, bin, args...)
	}
	a := &consulAgent{t: t, ports: [4]int{freePort(t), freePort(t), freePort(t), freePort(t)}}
	a.Addr = fmt.Sprintf("127.0.0.1:%d", a.ports[0])
	client, err := api.NewClient(&api.Config{Address: a.Addr})
	if err != nil {
		t.Fatal(err)
	}
	a.Client = client
	args := common(consulNode, a.ports)
	for _, o := range c.servers {
		args = append(args, "-retry-join", fmt.Sprintf("127.0.0.1:%d", o.ports[1]), "-retry-interval", "200ms")
	}
	a.proc = startProcess(t, bin, args...)
	c.Client = a
	waitFor(t, 60*time.Second, "consul cluster: a leader and four nodes", func() bool {
		for _, s := range c.servers {
			if !s.alive() {
				t.Fatalf("consul server %s exited while the cluster formed (its output is above)", s.name)
			}
		}
		leader, err := a.Client.Status().Leader()
		if err != nil || leader == "" {
			return false
		}
		nodes, _, err := a.Client.Catalog().Nodes(nil)
		return err == nil && len(nodes) == 4
	})
	return c
}

// server returns the server whose RPC address is rpcAddr, or nil.
func (c *consulCluster) server(rpcAddr string) *consulServer {
	for _, s := range c.servers {
		if s.rpcAddr() == rpcAddr {
			return s
		}
	}
	return nil
}

// alive reports whether the server's process is still running.
func (s *consulServer) alive() bool {
	select {
	case <-s.proc.exited:
		return false
	default:
		return true
	}
}

// startSluiceConsul is startSluiceConfig with extra attributes (e.g.
// "stale = false") in the consul block. The returned sluice must not be
// reloaded: writeConfig would drop them.
func startSluiceConsul(t testing.TB, consulAddr, consulExtra, body string) *sluice {
	t.Helper()
	s := &sluice{
		t:      t,
		Front:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		Admin:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
	}
	s.consulAddr = consulAddr
	s.Path = filepath.Join(t.TempDir(), "sluice.hcl")
	cfg := fmt.Sprintf(`
consul {
  address = %q
  %s
}
admin {
  address = %q
}
%s
`, consulAddr, consulExtra, s.Admin, strings.ReplaceAll(body, "FRONT", s.Front))
	if err := os.WriteFile(s.Path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s.proc = startProcess(t, binary(t, "SLUICE_BIN", "sluice"), "run", "-config", s.Path)
	waitFor(t, 20*time.Second, "sluice /healthz 200", func() bool {
		resp, err := s.client.Get("http://" + s.Admin + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}
