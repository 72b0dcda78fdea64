package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a child process the harness started; stop kills it and waits.
type proc struct {
	name string
	cmd  *exec.Cmd
	// dir, cpu, env and argv are start's, for restart.
	dir, cpu string
	env      []string
	argv     []string
	done     chan struct{}
	log      string // path of its output
}

// start runs argv pinned to cpu (taskset) with output to dir/name.log.
func start(dir, name, cpu string, env []string, argv ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("taskset", append([]string{"-c", cpu}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, dir: dir, cpu: cpu, env: env, argv: argv, done: make(chan struct{}), log: logPath}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

// restart stops the process (SIGTERM) and starts it again as it was
// started; its log starts anew.
func (p *proc) restart() (*proc, error) {
	p.stop(syscall.SIGTERM)
	return start(p.dir, p.name, p.cpu, p.env, p.argv...)
}

// pid is the process id (taskset execs the program in place).
func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends sig to the process group and waits up to 10 s, then kills.
func (p *proc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.pid(), sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
}

// cpuTicks returns utime+stime of pid and of all its descendants, in clock
// ticks, from /proc (all threads of a process are included in its stat).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the ")" that ends the command name; utime and stime
	// are fields 14 and 15 of the whole line.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	total := ut + st
	for _, child := range children(pid) {
		total += cpuTicks(child)
	}
	return total
}

// children lists the child processes of pid.
func children(pid int) []int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var out []int
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// clockTick is USER_HZ; 100 on Linux x86_64 and arm64.
const clockTick = 100

// freePort returns a loopback port that was free a moment ago.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitHTTP polls url until it answers want or timeout passes.
func waitHTTP(url string, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == want {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer %d within %v (last: %v)", url, want, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitTCP polls addr until it accepts a connection.
func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting within %v: %w", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consulAPI does one request against Consul's HTTP API.
func consulAPI(addr, method, path string, body any) error {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+addr+path, r)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("consul %s %s: %d %s", method, path, resp.StatusCode, msg)
	}
	return nil
}

// register adds an instance with a passing TTL check "check-<id>".
func register(consulAddr, service, id, addr string) error {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return consulAPI(consulAddr, http.MethodPut, "/v1/agent/service/register", map[string]any{
		"ID": id, "Name": service, "Address": host, "Port": p,
		"Check": map[string]any{"CheckID": "check-" + id, "TTL": "1h", "Status": "passing"},
	})
}

// machine describes the host for the report.
func machine() string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var uts syscall.Utsname
	syscall.Uname(&uts)
	rel := make([]byte, 0, 65)
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	cpus, _ := exec.Command("nproc").Output()
	return fmt.Sprintf("%s, %s CPUs, Linux %s", model, strings.TrimSpace(string(cpus)), rel)
}
