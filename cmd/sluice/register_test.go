package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
)

// fakeAgent is the part of a Consul agent's HTTP API that self-registration
// uses: register, read one service, deregister. down makes every call
// answer 500, forget drops every registration (an agent restart).
type fakeAgent struct {
	srv *httptest.Server

	mu           sync.Mutex
	services     map[string]*api.AgentServiceRegistration
	registers    []*api.AgentServiceRegistration // every PUT register, in order
	deregistered []string                        // every deregistered ID, in order
	down         bool
}

func newFakeAgent(t *testing.T) *fakeAgent {
	f := &fakeAgent{services: map[string]*api.AgentServiceRegistration{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAgent) addr() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func (f *fakeAgent) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		http.Error(w, "down", http.StatusInternalServerError)
		return
	}
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/v1/agent/service/register":
		var reg api.AgentServiceRegistration
		if err := json.NewDecoder(r.Body).Decode(&reg); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.services[reg.ID] = &reg
		f.registers = append(f.registers, &reg)
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/agent/service/deregister/"):
		id := strings.TrimPrefix(r.URL.Path, "/v1/agent/service/deregister/")
		delete(f.services, id)
		f.deregistered = append(f.deregistered, id)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/agent/service/"):
		reg := f.services[strings.TrimPrefix(r.URL.Path, "/v1/agent/service/")]
		if reg == nil {
			http.Error(w, "unknown service ID", http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(&api.AgentService{ID: reg.ID, Service: reg.Name, Port: reg.Port, Address: reg.Address})
	default:
		http.NotFound(w, r)
	}
}

// state returns the number of registers, the deregistered IDs and whether
// id is registered.
func (f *fakeAgent) state(id string) (registers int, deregistered []string, has bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.registers), append([]string(nil), f.deregistered...), f.services[id] != nil
}

func (f *fakeAgent) last() *api.AgentServiceRegistration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.registers) == 0 {
		return nil
	}
	return f.registers[len(f.registers)-1]
}

func (f *fakeAgent) set(down, forget bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
	if forget {
		clear(f.services)
	}
}

func testRegistration(agent string) *registration {
	return &registration{
		consul:  config.Consul{Address: agent},
		service: &api.AgentServiceRegistration{ID: "edge-1", Name: "edge", Port: 8080},
	}
}

// The loop registers, registers again after the agent forgot (404), keeps
// quiet while the agent is down, registers again once it is back without
// the registration, and logs each change of state once.
func TestRegisterLoopReregisters(t *testing.T) {
	agent := newFakeAgent(t)
	client, err := newConsulClient(config.Consul{Address: agent.addr()})
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})
	r := startRegistrar(testRegistration(agent.addr()), client, logger, 10*time.Millisecond)

	waitUntil(t, "first registration", func() bool { n, _, has := agent.state("edge-1"); return n == 1 && has })

	agent.set(false, true) // an agent restart that kept nothing
	waitUntil(t, "registration after a 404", func() bool { n, _, has := agent.state("edge-1"); return n == 2 && has })

	agent.set(true, true) // down, then back without the registration
	waitUntil(t, "agent unreachable logged", func() bool { return strings.Contains(logs.String(), "consul agent unreachable") })
	agent.set(false, false)
	waitUntil(t, "registration after the agent came back", func() bool { n, _, has := agent.state("edge-1"); return n == 3 && has })
	// The loop logs a registration once the agent's answer is back.
	waitUntil(t, "the third registration logged", func() bool {
		return strings.Count(logs.String(), "registered with consul") == 3
	})

	r.stop(true)
	n, dereg, has := agent.state("edge-1")
	if has || len(dereg) != 1 || dereg[0] != "edge-1" {
		t.Errorf("after stop(true): registered %v, deregistered %q", has, dereg)
	}
	if n != 3 {
		t.Errorf("want 3 registrations, have %d", n)
	}
	out := logs.String()
	for line, want := range map[string]int{
		"registered with consul":               3,
		"consul agent lost the registration":   2,
		"consul agent unreachable":             1,
		"deregistered from consul":             1,
		"consul registration failed; retrying": 0,
	} {
		if have := strings.Count(out, line); have != want {
			t.Errorf("%q logged %d times, want %d:\n%s", line, have, want, out)
		}
	}
}

// A registration that fails is retried, and logged once until it works.
func TestRegisterLoopRetries(t *testing.T) {
	agent := newFakeAgent(t)
	agent.set(true, false)
	client, _ := newConsulClient(config.Consul{Address: agent.addr()})
	logs := &lockedBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})
	r := startRegistrar(testRegistration(agent.addr()), client, logger, 5*time.Millisecond)
	defer r.stop(false)
	waitUntil(t, "failure logged", func() bool { return strings.Contains(logs.String(), "registration failed") })
	agent.set(false, false)
	waitUntil(t, "registered", func() bool { _, _, has := agent.state("edge-1"); return has })
	if n := strings.Count(logs.String(), "registration failed"); n != 1 {
		t.Errorf("failure logged %d times, want once", n)
	}
}

const registerConfig = `
consul {
  address = "AGENT"
}
admin {
  address = "ADMIN"
}
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
REGISTER
`

// Reloads apply the register block as a difference: unchanged means no
// call, a change re-registers (deregistering an old ID), removal
// deregisters.
func TestApplyRegister(t *testing.T) {
	agent := newFakeAgent(t)
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	src := func(register string) string {
		return configText(registerConfig, "AGENT", agent.addr(), "ADMIN", adm, "FRONT", front, "REGISTER", register)
	}
	ta := startApp(t, fc, src("register {\n  name = \"edge\"\n  id = \"edge-1\"\n}"))
	waitUntil(t, "registered", func() bool { _, _, has := agent.state("edge-1"); return has })
	reg := agent.last()
	_, port, _ := strings.Cut(front, ":")
	if reg.Name != "edge" || reg.Address != "127.0.0.1" || port != strconv.Itoa(reg.Port) {
		t.Errorf("registered %+v for %s", reg, front)
	}
	if reg.Check == nil || reg.Check.HTTP != "http://"+adm+"/healthz" || reg.Check.Interval != "10s" || reg.Check.DeregisterCriticalServiceAfter != "" {
		t.Errorf("check %+v", reg.Check)
	}

	reload := func(register string) {
		t.Helper()
		ta.write(src(register))
		if err := ta.apply(ta.load(), true); err != nil {
			t.Fatal(err)
		}
	}

	// Unchanged, and only shutdown_delay changed: no call.
	reload("register {\n  name = \"edge\"\n  id = \"edge-1\"\n}")
	reload("register {\n  name = \"edge\"\n  id = \"edge-1\"\n  shutdown_delay = \"1s\"\n}")
	if n, dereg, _ := agent.state("edge-1"); n != 1 || len(dereg) != 0 {
		t.Errorf("unchanged block: %d registrations, deregistered %q", n, dereg)
	}

	// Tags changed: registered again in place.
	reload("register {\n  name = \"edge\"\n  id = \"edge-1\"\n  tags = [\"blue\"]\n}")
	waitUntil(t, "re-registered with tags", func() bool { n, _, _ := agent.state("edge-1"); return n == 2 })
	if tags := agent.last().Tags; len(tags) != 1 || tags[0] != "blue" {
		t.Errorf("tags %q", tags)
	}
	if _, dereg, _ := agent.state("edge-1"); len(dereg) != 0 {
		t.Errorf("same ID deregistered: %q", dereg)
	}

	// ID changed: the old one is deregistered.
	reload("register {\n  name = \"edge\"\n  id = \"edge-2\"\n}")
	waitUntil(t, "edge-2 registered", func() bool { _, _, has := agent.state("edge-2"); return has })
	if _, dereg, has := agent.state("edge-1"); has || len(dereg) != 1 || dereg[0] != "edge-1" {
		t.Errorf("edge-1 still registered %v, deregistered %q", has, dereg)
	}

	// Removed: deregistered.
	reload("")
	if _, dereg, has := agent.state("edge-2"); has || len(dereg) != 2 || dereg[1] != "edge-2" {
		t.Errorf("edge-2 still registered %v, deregistered %q", has, dereg)
	}
	if ta.registrar != nil {
		t.Error("registrar still running")
	}
}

// deregisterFirst deregisters, keeps serving for shutdown_delay, and
// returns early on a second signal.
func TestDeregisterFirst(t *testing.T) {
	agent := newFakeAgent(t)
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	ta := startApp(t, fc, configText(registerConfig, "AGENT", agent.addr(), "ADMIN", adm, "FRONT", front,
		"REGISTER", "register {\n  id = \"s-1\"\n  shutdown_delay = \"1h\"\n}"))
	ta.synced()
	waitUntil(t, "registered", func() bool { _, _, has := agent.state("s-1"); return has })

	stop := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() { ta.deregisterFirst(stop); close(done) }()
	waitUntil(t, "deregistered", func() bool { _, dereg, _ := agent.state("s-1"); return len(dereg) == 1 })
	if status, body := get(t, "http://"+front+"/"); status != http.StatusOK || body != "w1" {
		t.Errorf("during shutdown_delay: %d %q", status, body)
	}
	select {
	case <-done:
		t.Fatal("deregisterFirst returned before shutdown_delay or a second signal")
	default:
	}
	stop <- syscall.SIGTERM
	<-done
}
