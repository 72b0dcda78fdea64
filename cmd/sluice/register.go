package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"reflect"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
)

// registerWatchPeriod is how often a registrar asks the agent whether it
// still has the registration; an agent that lost it (a restart of a -dev
// agent, or one without its data directory) gets it again within about
// one period once it answers.
const registerWatchPeriod = time.Second

// registerCallTimeout bounds one call to the agent: a register, a check
// or a deregister.
const registerCallTimeout = 5 * time.Second

// registration is what sluice registers and with which agent. Two equal
// registrations (reflect.DeepEqual) mean no call to the agent.
type registration struct {
	consul  config.Consul
	service *api.AgentServiceRegistration
}

// wantRegistration returns the registration cfg asks for, or nil when it
// has no register block. The check is an HTTP check of the admin API's
// /healthz; a wildcard admin address is checked on loopback.
func wantRegistration(cfg *config.Config) *registration {
	r := cfg.Register
	if r == nil {
		return nil
	}
	return &registration{
		consul: cfg.Consul,
		service: &api.AgentServiceRegistration{
			ID:      r.ID,
			Name:    r.Name,
			Tags:    r.Tags,
			Meta:    r.Meta,
			Address: r.Address,
			Port:    r.Port,
			Check: &api.AgentServiceCheck{
				Name:     "sluice admin /healthz",
				HTTP:     "http://" + checkAddress(cfg.Admin.Address) + "/healthz",
				Interval: r.CheckInterval.String(),
			},
		},
	}
}

// checkAddress is the address Consul checks for an admin API bound to
// address: the same, with a wildcard host replaced by loopback.
func checkAddress(address string) string {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return address
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// registrar keeps one registration with the agent: registerLoop registers
// it, watches that the agent still has it and registers it again when the
// agent forgot it. stop ends the loop and may deregister.
type registrar struct {
	reg    *registration
	agent  *api.Agent
	logger hclog.Logger
	period time.Duration
	cancel context.CancelFunc
	done   chan struct{}
}

// startRegistrar starts keeping reg with client's agent.
func startRegistrar(reg *registration, client *api.Client, logger hclog.Logger, period time.Duration) *registrar {
	ctx, cancel := context.WithCancel(context.Background())
	r := &registrar{reg: reg, agent: client.Agent(), logger: logger.With("service", reg.service.Name, "id", reg.service.ID),
		period: period, cancel: cancel, done: make(chan struct{})}
	go r.registerLoop(ctx)
	return r
}

// registerState is what registerLoop last logged.
type registerState int

const (
	stateNone       registerState = iota
	stateRegistered               // the agent has the registration
	stateFailing                  // registering fails
	stateLost                     // the agent forgot it (404)
	stateUnreached                // the agent does not answer the watch
)

// registerLoop registers, then asks every period whether the agent still
// has the registration, and registers again when it answers 404. It logs
// once per change of state, not per retry. It returns when ctx ends.
func (r *registrar) registerLoop(ctx context.Context) {
	defer close(r.done)
	state, registered := stateNone, false
	set := func(s registerState, err error) {
		if s == state {
			return
		}
		state = s
		if err != nil {
			err = explainTLS(err, r.reg.consul.TLS)
		}
		switch s {
		case stateRegistered:
			r.logger.Info("registered with consul")
		case stateFailing:
			r.logger.Warn("consul registration failed; retrying", "error", err, "retry_every", r.period)
		case stateLost:
			r.logger.Warn("consul agent lost the registration; registering again")
		case stateUnreached:
			r.logger.Warn("consul agent unreachable; will register again if it forgot", "error", err)
		}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if !registered {
			if err := r.register(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				set(stateFailing, err)
			} else {
				registered = true
				set(stateRegistered, nil)
			}
		} else {
			cctx, cancel := context.WithTimeout(ctx, registerCallTimeout)
			_, _, err := r.agent.Service(r.reg.service.ID, (&api.QueryOptions{}).WithContext(cctx))
			cancel()
			var se api.StatusError
			switch {
			case ctx.Err() != nil:
				return
			case errors.As(err, &se) && se.Code == http.StatusNotFound:
				set(stateLost, nil)
				registered = false
				timer.Reset(0)
				continue
			case err != nil:
				set(stateUnreached, err)
			default:
				set(stateRegistered, nil)
			}
		}
		timer.Reset(r.period)
	}
}

func (r *registrar) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, registerCallTimeout)
	defer cancel()
	return r.agent.ServiceRegisterOpts(r.reg.service, api.ServiceRegisterOpts{}.WithContext(ctx))
}

// stop ends registerLoop and, if deregister, removes the registration
// from the agent (one try, bounded by registerCallTimeout); a failure is
// logged.
func (r *registrar) stop(deregister bool) {
	r.cancel()
	<-r.done
	if !deregister {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), registerCallTimeout)
	defer cancel()
	if err := r.agent.ServiceDeregisterOpts(r.reg.service.ID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		r.logger.Warn("consul deregistration failed", "error", explainTLS(err, r.reg.consul.TLS))
		return
	}
	r.logger.Info("deregistered from consul")
}

// registerChange is what prepare made for the register block: nil when it
// is unchanged; else next (nil when the block is gone) and its client.
type registerChange struct {
	next   *registration
	client *api.Client
}

// prepareRegister compares cfg's registration with the running one. It
// makes a Consul client only when the registration changed and is not
// removed.
func (a *app) prepareRegister(cfg *config.Config) (*registerChange, error) {
	next := wantRegistration(cfg)
	var cur *registration
	if a.registrar != nil {
		cur = a.registrar.reg
	}
	if reflect.DeepEqual(cur, next) {
		return nil, nil
	}
	ch := &registerChange{next: next}
	if next != nil {
		client, err := newConsulClient(next.consul)
		if err != nil {
			return nil, err
		}
		ch.client = client
	}
	return ch, nil
}

// applyRegister applies a change that prepareRegister made: the old
// registration is deregistered when it is removed or its ID or agent
// changes (see sameAgent; else the new one replaces it in place), and the new one is
// registered by a new registrar. It waits for the old registrar's
// deregistration, at most registerCallTimeout.
func (a *app) applyRegister(ch *registerChange) {
	if ch == nil {
		return
	}
	if old := a.registrar; old != nil {
		replaced := ch.next != nil && ch.next.service.ID == old.reg.service.ID && sameAgent(ch.next.consul, old.reg.consul)
		old.stop(!replaced)
		a.registrar = nil
	}
	if ch.next != nil {
		a.registrar = startRegistrar(ch.next, ch.client, a.logger.Named("register"), registerWatchPeriod)
	}
}

// sameAgent reports whether two consul blocks reach the same agent and
// catalog: then a registration is replaced in place (a rotated token,
// rotated certificates, or another stale or datacenter setting, keep the
// service in the catalog), else the old one is deregistered first.
func sameAgent(a, b config.Consul) bool {
	return a.Address == b.Address && a.Namespace == b.Namespace && a.Partition == b.Partition
}

// deregisterFirst is the start of a stop by signal: without a register
// block it returns at once; with one it deregisters, then keeps serving
// for the block's shutdown_delay so that Consul-driven clients and DNS
// stop sending here first. Another signal on stop ends the delay early.
func (a *app) deregisterFirst(stop <-chan os.Signal) {
	if a.registrar == nil {
		return
	}
	a.registrar.stop(true)
	a.registrar = nil
	delay := a.cfg.Register.ShutdownDelay
	if delay <= 0 {
		return
	}
	a.logger.Info("deregistered; serving on before stopping", "shutdown_delay", delay)
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case sig := <-stop:
		a.logger.Info("second signal: stopping now", "signal", sig.String())
	}
}
