package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestRegister: with a register block, sluice appears in the catalog with a
// passing check on its /healthz; a restarted agent that forgot it has it
// again within 5 s; SIGTERM deregisters first, keeps serving for
// shutdown_delay, then exits 0.
func TestRegister(t *testing.T) {
	consul := startConsul(t)
	be := startBackend(t, "a")
	consul.register("web", "web-a", be.addr(), nil)
	s := startSluice(t, consul.Addr, "web", `
register {
  name           = "edge"
  id             = "edge-e2e"
  tags           = ["e2e"]
  check_interval = "1s"
  shutdown_delay = "2s"
}
`)
	const id = "edge-e2e"

	// In the catalog, at the listener's address, with a passing check.
	waitFor(t, 15*time.Second, "edge passing in the catalog", func() bool {
		entries, _, err := consul.Client.Health().Service("edge", "", true, nil)
		return err == nil && len(entries) == 1 && entries[0].Service.ID == id
	})
	entries, _, err := consul.Client.Health().Service("edge", "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc := entries[0].Service
	host, port, _ := strings.Cut(s.Front, ":")
	if svc.Address != host || strconv.Itoa(svc.Port) != port || len(svc.Tags) != 1 || svc.Tags[0] != "e2e" {
		t.Errorf("registered %s:%d tags %q, want %s", svc.Address, svc.Port, svc.Tags, s.Front)
	}
	var check *api.HealthCheck
	for _, c := range entries[0].Checks {
		if c.ServiceID == id {
			check = c
		}
	}
	if check == nil || check.Type != "http" || check.Status != api.HealthPassing {
		t.Fatalf("service check %+v", check)
	}

	// The dev agent keeps nothing across a restart: sluice registers again.
	consul.stop()
	consul.start()
	back := time.Now()
	waitFor(t, 5*time.Second, "registration back after the agent restart", func() bool {
		_, _, err := consul.Client.Agent().Service(id, nil)
		return err == nil
	})
	t.Logf("registered again %v after the restarted agent had a leader", time.Since(back).Round(time.Millisecond))
	consul.register("web", "web-a", be.addr(), nil) // the agent forgot it too
	waitFor(t, 10*time.Second, "web-a back in sluice", func() bool {
		in, ok := s.instance("web", "web-a")
		return ok && in.Eligible
	})
	waitFor(t, 15*time.Second, "edge passing in the catalog again", func() bool {
		entries, _, err := consul.Client.Health().Service("edge", "", true, nil)
		return err == nil && len(entries) == 1
	})

	// SIGTERM: gone from the agent and the catalog while sluice serves on.
	if err := s.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	term := time.Now()
	waitFor(t, 2*time.Second, "edge gone from the agent and the catalog", func() bool {
		_, _, err := consul.Client.Agent().Service(id, nil)
		if err == nil {
			return false
		}
		svcs, _, err := consul.Client.Catalog().Service("edge", "", nil)
		return err == nil && len(svcs) == 0
	})
	// Well inside shutdown_delay (2s), every request still succeeds.
	n := 0
	for time.Since(term) < 1500*time.Millisecond {
		status, name, _, err := s.get("/")
		if err != nil || status != http.StatusOK || name != "a" {
			t.Fatalf("%v after SIGTERM: %d %q %v", time.Since(term), status, name, err)
		}
		n++
		time.Sleep(20 * time.Millisecond) // pacing the requests, not a synchronisation
	}
	select {
	case <-s.proc.exited:
		t.Fatalf("sluice exited %v after SIGTERM, before shutdown_delay", time.Since(term))
	default:
	}
	select {
	case <-s.proc.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("sluice did not exit within 15s of SIGTERM")
	}
	if s.proc.err != nil {
		t.Fatalf("exit: %v", s.proc.err)
	}
	t.Logf("%d requests served after deregistration; exited %v after SIGTERM", n, time.Since(term).Round(time.Millisecond))
	if !strings.Contains(s.proc.out.String(), "deregistered from consul") {
		t.Errorf("no deregistration logged:\n%s", s.proc.out.String())
	}
}
