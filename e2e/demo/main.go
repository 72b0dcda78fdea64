// Command demo runs sluice the way `make demo` shows it: a Consul dev agent
// (unless one already answers at the configured address), three backends on
// loopback registered with meta weights 1, 1 and 3, and `sluice run` with
// config.hcl. Ctrl-C stops and deregisters everything it started.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	sluiceBin := flag.String("sluice", "bin/sluice", "sluice binary")
	consulBin := flag.String("consul", "bin/consul", "consul binary")
	configPath := flag.String("config", "config.hcl", "sluice configuration")
	consulAddr := flag.String("consul-addr", "127.0.0.1:8500", "Consul HTTP address (must match config.hcl)")
	front := flag.String("front", "127.0.0.1:8080", "sluice listener (must match config.hcl)")
	adminAddr := flag.String("admin", "127.0.0.1:9901", "sluice admin address (must match config.hcl)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	client, err := api.NewClient(&api.Config{Address: *consulAddr})
	if err != nil {
		return err
	}
	if _, err := client.Status().Leader(); err != nil {
		fmt.Printf("starting a Consul dev agent on %s\n", *consulAddr)
		_, port, _ := net.SplitHostPort(*consulAddr)
		agent := exec.Command(*consulBin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-http-port", port, "-log-level", "warn")
		agent.Stdout, agent.Stderr = os.Stdout, os.Stderr
		if err := agent.Start(); err != nil {
			return fmt.Errorf("start consul (%s): %w", *consulBin, err)
		}
		defer func() {
			_ = agent.Process.Signal(syscall.SIGTERM)
			_ = agent.Wait()
			fmt.Println("consul dev agent stopped")
		}()
		if err := waitUntil(ctx, 30*time.Second, func() bool {
			leader, err := client.Status().Leader()
			return err == nil && leader != ""
		}); err != nil {
			return fmt.Errorf("consul did not get a leader: %w", err)
		}
	} else {
		fmt.Printf("using the Consul agent already at %s\n", *consulAddr)
	}

	for i, weight := range []string{"1", "1", "3"} {
		name := fmt.Sprintf("demo-%d", i+1)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Backend", name)
			fmt.Fprintf(w, "hello from %s (weight %s)\n", name, weight)
		}), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		reg := &api.AgentServiceRegistration{
			ID: name, Name: "web", Address: "127.0.0.1", Port: port, Meta: map[string]string{"weight": weight},
			Check: &api.AgentServiceCheck{
				HTTP: fmt.Sprintf("http://127.0.0.1:%d/health", port), Interval: "2s", Timeout: "1s",
				Status: api.HealthPassing,
			},
		}
		if err := client.Agent().ServiceRegister(reg); err != nil {
			return fmt.Errorf("register %s: %w", name, err)
		}
		defer client.Agent().ServiceDeregister(name)
		fmt.Printf("backend %s on 127.0.0.1:%d registered as service web, meta weight=%s\n", name, port, weight)
	}

	sl := exec.Command(*sluiceBin, "run", "-config", *configPath)
	sl.Stdout, sl.Stderr = os.Stdout, os.Stderr
	if err := sl.Start(); err != nil {
		return fmt.Errorf("start sluice: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sl.Wait() }()
	if err := waitUntil(ctx, 20*time.Second, func() bool { return healthy(*adminAddr) }); err != nil {
		_ = sl.Process.Signal(syscall.SIGTERM)
		<-exited
		return fmt.Errorf("sluice did not become healthy: %w", err)
	}

	fmt.Printf(`
sluice is running. Dashboard: http://%[2]s/   (live; open it in a browser)
Try:
  curl http://%[1]s/
  for i in $(seq 10); do curl -s http://%[1]s/; done      # demo-3 answers 3 of every 5
  curl http://%[2]s/v1/services                            # live pools
  curl -X PUT 'http://%[3]s/v1/agent/service/maintenance/demo-3?enable=true&reason=trying+a+drain'   # drain demo-3 in Consul
  curl -X PUT 'http://%[3]s/v1/agent/service/maintenance/demo-3?enable=false'                        # and undo it
Press Ctrl-C to stop everything the demo started.
`, *front, *adminAddr, *consulAddr)

	select {
	case <-ctx.Done():
		_ = sl.Process.Signal(syscall.SIGTERM)
		<-exited
	case err := <-exited:
		return fmt.Errorf("sluice exited: %v", err)
	}
	return nil
}

func healthy(adminAddr string) bool {
	resp, err := http.Get("http://" + adminAddr + "/healthz")
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitUntil polls cond until it holds, ctx ends or timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
