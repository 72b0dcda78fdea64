package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/h1"
)

// helperEnv switches the test binary into a helper process (see TestMain).
const helperEnv = "SLUICE_PROXY_HELPER"

// TestMain doubles as a helper process that runs with a lowered
// RLIMIT_NOFILE, so that tests can exhaust file descriptors for real
// without lowering the limit of the test process itself. With
// SLUICE_PROXY_HELPER set to
//
//   - "dial": it takes every descriptor, dials loopback and prints "local"
//     when IsLocalResourceError recognises the error (else the error);
//   - "proxy": it runs a TCPProxy (see helperProxy) and answers "status"
//     lines on stdin with a JSON line on stdout until stdin closes.
func TestMain(m *testing.M) {
	switch mode := os.Getenv(helperEnv); mode {
	case "":
		os.Exit(m.Run())
	case "dial":
		os.Exit(helperDial())
	case "proxy":
		os.Exit(helperProxy())
	default:
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
		os.Exit(2)
	}
}

// helperGorace spares a race-built helper the race runtime's 1 s sleep at exit.
const helperGorace = "GORACE=atexit_sleep_ms=0"

// openFDs counts the descriptors open in this process and returns the
// highest one.
func openFDs() (n, highest int, err error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, 0, err
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		n++
		highest = max(highest, fd)
	}
	// One of them was ReadDir's own, closed by now.
	return n - 1, highest, nil
}

func helperDial() int {
	// The runtime's poller takes descriptors of its own when the first
	// socket is made; start it while descriptors are left.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	_, highest, err := openFDs()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	if err := limitFDs(highest + 1); err != nil {
		fmt.Println(err)
		return 1
	}
	for { // fill the holes below the limit
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		defer f.Close()
	}
	c, err := net.DialTimeout("tcp", "127.0.0.1:1", time.Second)
	switch {
	case err == nil:
		c.Close()
		fmt.Println("dial succeeded")
	case IsLocalResourceError(err):
		fmt.Println("local")
	default:
		fmt.Println(err)
	}
	return 0
}

// helperStatus is the "status" answer of the proxy helper.
type helperStatus struct {
	Pressure uint64 // Pressure.Count
	Members  []helperMember
}

type helperMember struct {
	ID                string
	Ejected, Eligible bool
	Failures          uint64
}

// helperProxy runs a TCPProxy on a loopback port in front of the instances
// listed in SLUICE_PROXY_BACKENDS (comma-separated addresses), with passive
// ejection at the first failure, and then lowers RLIMIT_NOFILE so that
// exactly SLUICE_PROXY_CONNS proxied connections (two descriptors each)
// and one more accepted client fit. It prints "LISTEN addr", logs Warn
// lines to stderr in JSON and answers each "status" line on stdin with a
// helperStatus JSON line.
func helperProxy() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	conns, err := strconv.Atoi(os.Getenv("SLUICE_PROXY_CONNS"))
	if err != nil {
		return fail(err)
	}
	build, _ := balance.Lookup("round_robin")
	pool := balance.NewPool(balance.PoolOptions{Service: "up", Strategy: "round_robin", Builder: build,
		Passive: &balance.PassiveOptions{ConsecutiveFailures: 1, EjectionTime: time.Minute, MaxEjectionPercent: 100}})
	ctx := context.Background()
	go pool.Run(ctx)
	var members []balance.Member
	for i, addr := range strings.Split(os.Getenv("SLUICE_PROXY_BACKENDS"), ",") {
		members = append(members, balance.Member{ID: fmt.Sprintf("up-%d", i), Addr: addr, Weight: 1, Consul: balance.HealthPassing})
	}
	if err := pool.SetMembers(ctx, 1, members); err != nil {
		return fail(err)
	}
	for snap := pool.Load(); !snap.Synced; snap = pool.Load() {
		<-snap.Next()
	}
	logger := hclog.New(&hclog.LoggerOptions{Output: os.Stderr, JSONFormat: true, Level: hclog.Warn})
	pr := NewPressure(logger)
	tp := NewTCPProxy(TCPOptions{Listener: "pressure", Logger: logger, Pressure: pr,
		Service: ServiceOptions{Name: "up", Pool: pool, Attempts: 2}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	open, highest, err := openFDs()
	if err != nil {
		return fail(err)
	}
	// Descriptors inherited without close-on-exec may sit high: the
	// limit stays above them and placeholders take the free numbers
	// beyond the budget.
	budget := 2*conns + 1
	limit := max(open+budget, highest+1)
	for range limit - open - budget {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return fail(err)
		}
		defer f.Close()
	}
	if err := limitFDs(limit); err != nil {
		return fail(err)
	}
	if os.Getenv("SLUICE_PROXY_PROTO") == "http" {
		srv := &h1.Server{
			Handler: NewHTTPHandler(HTTPOptions{Listener: "pressure", Logger: logger, Pressure: pr,
				Routes: []Route{{PathPrefix: "/", Service: ServiceOptions{Name: "up", Pool: pool, Attempts: 2}}}}),
			AcceptGate:  func() { pr.WaitAccept(ctx) },
			AcceptError: func(err error) { pr.Report("pressure", err) },
		}
		go srv.Serve(ln)
	} else {
		go tp.Serve(ctx, ln)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "status" {
			continue
		}
		st := helperStatus{Pressure: pr.Count()}
		for _, m := range pool.Load().Members {
			st.Members = append(st.Members, helperMember{ID: m.ID, Ejected: m.Ejected, Eligible: m.Eligible, Failures: m.Stats.Failures()})
		}
		b, _ := json.Marshal(st)
		fmt.Printf("%s\n", b)
	}
	return 0
}

// runHelper runs the test binary as a helper in mode to completion and
// returns its stdout.
func runHelper(t *testing.T, mode string, env []string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode, helperGorace), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper %s: %v\n%s", mode, err, stderr.String())
	}
	return string(out)
}

// helperProcess is a running proxy helper.
type helperProcess struct {
	cmd    *exec.Cmd
	in     io.WriteCloser // its stdin
	out    *bufio.Reader
	stderr *lockedBuffer
	addr   string
}

// startProxyHelper starts the proxy helper and waits for its address. The
// helper exits when the test ends (its stdin closes).
func startProxyHelper(t *testing.T, conns int, backends ...string) *helperProcess {
	return startHelper(t, "tcp", conns, backends...)
}

// startHelper starts the proxy helper with a tcp or http listener.
func startHelper(t *testing.T, proto string, conns int, backends ...string) *helperProcess {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h := &helperProcess{cmd: exec.Command(exe), stderr: &lockedBuffer{}}
	h.cmd.Env = append(os.Environ(), helperEnv+"=proxy", helperGorace, "SLUICE_PROXY_CONNS="+strconv.Itoa(conns),
		"SLUICE_PROXY_BACKENDS="+strings.Join(backends, ","), "SLUICE_PROXY_PROTO="+proto)
	h.cmd.Stderr = h.stderr
	stdin, err := h.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.in = stdin
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.out = bufio.NewReader(stdout)
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- h.cmd.Wait() }()
	t.Cleanup(func() {
		h.in.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			h.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("helper stderr:\n%s", h.stderr.String())
		}
	})
	started := make(chan string, 1)
	go func() {
		line, _ := h.out.ReadString('\n')
		started <- line
	}()
	select {
	case line := <-started:
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "LISTEN ")
		if !ok {
			t.Fatalf("helper start: %q\n%s", line, h.stderr.String())
		}
		h.addr = addr
	case <-time.After(20 * time.Second):
		h.cmd.Process.Kill()
		t.Fatalf("helper did not start within 20 s\n%s", h.stderr.String())
	}
	return h
}

// status asks the helper for its status.
func (h *helperProcess) status(t *testing.T) helperStatus {
	t.Helper()
	if _, err := io.WriteString(h.in, "status\n"); err != nil {
		t.Fatal(err)
	}
	line, err := h.out.ReadString('\n')
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var st helperStatus
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		t.Fatalf("status %q: %v", line, err)
	}
	return st
}
