package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy"
)

// service is the runtime of one configured service: its pool, its Consul
// watch and its prober. It is built from one config.Service by newService
// and changed only by apply; both, and stop, run on the app goroutine.
// The pool (and with it rotation, in-flight counts, EWMA, ejections, probe
// verdicts and slow-start clocks) lives from newService to stop, across
// every reload that keeps the service.
type service struct {
	name string
	cfg  config.Service // as last applied
	pool *balance.Pool
	// fwd is what listeners forward with; it changes with the retry,
	// timeout and sticky settings.
	fwd      proxy.ServiceOptions
	tls      *clientTLS // TLS to the instances; nil: plain
	poolTask *task
	watch    *task
	watchKey watchKey
	probe    *task // nil without a health_check block
}

// watchKey is what a Consul watch depends on: a reload that keeps it keeps
// the watch (and sends no new query).
type watchKey struct {
	consul    uint64 // generation of the Consul client
	tag       string
	weightKey string
}

// task is a goroutine with its own cancel; stop waits for it to return.
type task struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startTask(f func(ctx context.Context)) *task {
	ctx, cancel := context.WithCancel(context.Background())
	t := &task{cancel: cancel, done: make(chan struct{})}
	go func() { defer close(t.done); f(ctx) }()
	return t
}

// stop cancels the task and waits for it; a nil task is a no-op.
func (t *task) stop() {
	if t != nil {
		t.cancel()
		<-t.done
	}
}

// poolPolicy translates the balancing settings of a service: strategy,
// slow start, passive ejection and stickiness. secret is the cookie secret
// of a sticky service that sets none (random per process).
func poolPolicy(name string, svc *config.Service, secret []byte) (balance.Policy, error) {
	var sticky *balance.StickyOptions
	mode := ""
	if s := svc.Sticky; s != nil {
		mode = string(s.Mode)
		sticky = &balance.StickyOptions{Mode: s.Mode, CookieName: s.Cookie, TTL: s.TTL, Secret: []byte(s.Secret)}
		if s.Mode == balance.StickyCookie && s.Secret == "" {
			sticky.Secret = secret
		}
	}
	build, err := balance.NewBuilder(name, svc.Strategy, sticky)
	if err != nil {
		return balance.Policy{}, fmt.Errorf("service %q: %w", name, err)
	}
	pol := balance.Policy{Strategy: svc.Strategy, Sticky: mode, Builder: build, SlowStart: svc.SlowStart}
	if pv := svc.Passive; pv != nil {
		pol.Passive = &balance.PassiveOptions{
			ConsecutiveFailures: pv.ConsecutiveFailures, EjectionTime: pv.EjectionTime,
			MaxEjectionTime: pv.MaxEjectionTime, MaxEjectionPercent: pv.MaxEjectionPercent,
		}
	}
	return pol, nil
}

// forwardOptions translates the forwarding settings of a service: retries,
// timeouts, where the sticky key is read from, and its TLS to instances
// (nil: plain).
func forwardOptions(name string, svc *config.Service, pool *balance.Pool, tlsCfg *tls.Config) proxy.ServiceOptions {
	opts := proxy.ServiceOptions{
		Name: name, Pool: pool, TLS: tlsCfg,
		Attempts: svc.Retry.Attempts, PerTryTimeout: svc.Retry.PerTryTimeout,
		ResponseHeaderTimeout: svc.ResponseHeaderTimeout, ResponseBodyTimeout: svc.ResponseBodyTimeout,
	}
	if s := svc.Sticky; s != nil {
		switch s.Mode {
		case balance.StickyCookie:
			opts.StickyCookie = s.Cookie
		case balance.StickyHeader:
			opts.StickyHeader = s.Header
		}
	}
	return opts
}

// probeOptions translates a health_check block; tlsCfg is the service's
// TLS to its instances (nil: plain), which probes use too.
func probeOptions(hc *config.HealthCheck, tlsCfg *tls.Config) proxy.ProbeOptions {
	return proxy.ProbeOptions{
		Type: hc.Type, Path: hc.Path, Interval: hc.Interval, Timeout: hc.Timeout, Rise: hc.Rise, Fall: hc.Fall,
		TLS: tlsCfg,
	}
}

// watchOptions translates what the Consul watch of a service needs.
func watchOptions(name string, svc *config.Service, c config.Consul, logger hclog.Logger) discovery.Options {
	return discovery.Options{
		Service: name, Tag: svc.Tag, WeightKey: svc.WeightKey,
		Datacenter: c.Datacenter, Stale: c.Stale, Logger: logger,
	}
}

// policyPart is the part of a service's settings that its pool's Policy
// is built from; apply compares it to decide whether the pool changes.
func policyPart(s *config.Service) any {
	return struct {
		strategy  string
		slowStart time.Duration
		sticky    *config.Sticky
		passive   *config.Passive
	}{s.Strategy, s.SlowStart, s.Sticky, s.Passive}
}

// newService builds a service's runtime with pol (see poolPolicy) and ct
// (its TLS to instances, nil for plain) and starts its pool, watch and
// prober.
func newService(name string, cfg *config.Service, pol balance.Policy, ct *clientTLS, e *env, consul *consulClient) *service {
	pool := balance.NewPool(balance.PoolOptions{
		Service: name, Strategy: pol.Strategy, Sticky: pol.Sticky, Builder: pol.Builder, SlowStart: pol.SlowStart, Passive: pol.Passive,
		Logger: e.logger.Named("pool"), Events: e.events,
	})
	s := &service{name: name, cfg: *cfg, pool: pool, tls: ct, fwd: forwardOptions(name, cfg, pool, ct.config())}
	s.poolTask = startTask(pool.Run)
	s.startWatch(e, consul)
	if cfg.HealthCheck != nil {
		s.startProbe(e)
	}
	return s
}

func (s *service) startWatch(e *env, consul *consulClient) {
	s.watchKey = watchKey{consul: consul.generation, tag: s.cfg.Tag, weightKey: s.cfg.WeightKey}
	w := discovery.NewWatcher(consul.health, watchOptions(s.name, &s.cfg, consul.cfg, e.logger.Named("discovery")))
	pool, name, transport := s.pool, s.name, e.transport
	s.watch = startTask(func(ctx context.Context) {
		updates := make(chan discovery.Update)
		watched := make(chan struct{})
		go func() { defer close(watched); w.Run(ctx, updates) }()
		feedPool(ctx, pool, updates, func(addrs []string) { transport.Track(name, addrs) })
		<-watched
	})
}

func (s *service) startProbe(e *env) {
	prober := proxy.NewProber(s.pool, probeOptions(s.cfg.HealthCheck, s.tls.config()), e.logger.Named("probe"))
	s.probe = startTask(prober.Run)
}

// apply changes the running service to cfg, touching only what changed.
// pol, when not nil, is the new balancing policy (strategy, stickiness,
// slow start, passive ejection): the pool takes it and keeps its state.
// Changed probe settings replace the prober (the pool keeps the verdicts,
// which the new prober starts from); a removed health_check stops it and
// clears them. A changed tag, weight key or Consul client replaces the
// watch (the pool keeps its members until the new watch answers). ct is
// the service's TLS as read now (nil: plain); when its block and files are
// unchanged the running config stays, and with it the pooled connections,
// else forwarding and probes take the new one. It reports whether the
// forwarding options changed. It does not fail: the pool's owner always
// runs while the service does.
func (s *service) apply(cfg *config.Service, pol *balance.Policy, ct *clientTLS, e *env, consul *consulClient) (fwdChanged bool) {
	if pol != nil {
		_ = s.pool.SetPolicy(context.Background(), *pol)
	}
	old := s.cfg
	s.cfg = *cfg
	if key := (watchKey{consul: consul.generation, tag: cfg.Tag, weightKey: cfg.WeightKey}); key != s.watchKey {
		s.watch.stop()
		s.startWatch(e, consul)
	}
	tlsChanged := (ct == nil) != (s.tls == nil) || (ct != nil && ct.digest != s.tls.digest)
	if tlsChanged {
		s.tls = ct
	}
	if !reflect.DeepEqual(old.HealthCheck, cfg.HealthCheck) || (tlsChanged && cfg.HealthCheck != nil) {
		s.probe.stop()
		s.probe = nil
		if cfg.HealthCheck != nil {
			s.startProbe(e)
		} else {
			_ = s.pool.ClearProbes(context.Background())
		}
	}
	fwd := forwardOptions(s.name, cfg, s.pool, s.tls.config())
	if fwd == s.fwd {
		return false
	}
	s.fwd = fwd
	return true
}

// stop ends the watch, the prober and the pool, waits for them, and tells
// the upstream client that the service's addresses are gone. Requests
// still in flight on the pool's last snapshot finish normally.
func (s *service) stop(e *env) {
	s.probe.stop()
	s.watch.stop()
	s.poolTask.stop()
	e.transport.Track(s.name, nil)
}

// feedPool turns discovery updates into pool changes until ctx is done.
// track is told the addresses of every new member set, and only when they
// changed. An instance whose address and port are as in the previous
// update keeps its address string, so that an unchanged answer costs no
// allocation per instance here.
func feedPool(ctx context.Context, pool *balance.Pool, updates <-chan discovery.Update, track func([]string)) {
	var (
		prev   []discovery.Instance
		addrOf []string // the Addr of prev[i]
		addrs  []string // as last given to track; nil before
	)
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			if u.Err != nil {
				_ = pool.SetError(ctx, u.Err)
				continue
			}
			members := make([]balance.Member, len(u.Instances))
			next := make([]string, len(u.Instances))
			j := 0 // prev and u.Instances are both sorted by ID
			for i, in := range u.Instances {
				for j < len(prev) && prev[j].ID < in.ID {
					j++
				}
				if j < len(prev) && prev[j].ID == in.ID && prev[j].Address == in.Address && prev[j].Port == in.Port {
					next[i] = addrOf[j]
				} else {
					next[i] = in.HostPort()
				}
				members[i] = balance.Member{ID: in.ID, Addr: next[i], Weight: in.Weight, Consul: in.Health, Invalid: in.Invalid}
			}
			prev, addrOf = u.Instances, next
			_ = pool.SetMembers(ctx, u.Index, members)
			valid := make([]string, 0, len(members))
			for _, m := range members {
				if m.Invalid == "" {
					valid = append(valid, m.Addr)
				}
			}
			if addrs == nil || !slices.Equal(valid, addrs) {
				addrs = valid
				track(addrs)
			}
		}
	}
}
