package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy"
)

// service is the runtime of one configured or discovered service: its
// pool, its Consul watch and its prober. name names the pool; the Consul
// service watched is cfg.Name (they differ for a discovered service, see
// discover.go). It is built from one config.Service by newService
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
	fwd proxy.ServiceOptions
	tls *clientTLS // TLS to the instances; nil: plain
	// dest is the Consul Connect destination of a service with connect
	// = true (its TLS is dest.tls); nil otherwise.
	dest     *connectDest
	poolTask *task
	watch    *task
	watchKey watchKey
	probe    *task // nil without a health_check block
}

// watchKey is what the Consul watches of a service depend on: a reload
// that keeps it keeps the watches (and sends no new query). Compared with
// reflect.DeepEqual.
type watchKey struct {
	consul    uint64 // generation of the Consul client
	tag       string
	tags      []string
	weightKey string
	nodeMeta  map[string]string
	filter    string
	failover  []string
	backupTag string
	connect   bool
}

// newWatchKey returns the watchKey of cfg over the Consul client of
// generation consul.
func newWatchKey(cfg *config.Service, consul uint64) watchKey {
	return watchKey{consul: consul, tag: cfg.Tag, tags: cfg.Tags, weightKey: cfg.WeightKey, nodeMeta: cfg.NodeMeta,
		filter: cfg.Filter, failover: failoverDatacenters(cfg), backupTag: cfg.BackupTag, connect: cfg.Connect}
}

// failoverDatacenters returns the failover datacenters of cfg, nil
// without a failover block.
func failoverDatacenters(cfg *config.Service) []string {
	if cfg.Failover == nil {
		return nil
	}
	return cfg.Failover.Datacenters
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
	pol := balance.Policy{Strategy: svc.Strategy, Sticky: mode, Builder: build, SlowStart: svc.SlowStart,
		PassingOnly: svc.PassingOnly, PanicThreshold: svc.PanicThreshold}
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

// watchOptions translates what the Consul watch of a service in the
// local datacenter needs; a failover datacenter's watch differs only in
// its Datacenter.
func watchOptions(name string, svc *config.Service, c config.Consul, logger hclog.Logger) discovery.Options {
	return discovery.Options{
		Service: name, Tag: svc.Tag, Tags: svc.Tags, WeightKey: svc.WeightKey,
		NodeMeta: svc.NodeMeta, Filter: svc.Filter, Connect: svc.Connect,
		Datacenter: c.Datacenter, Stale: c.Stale, Logger: logger,
	}
}

// policyPart is the part of a service's settings that its pool's Policy
// is built from; apply compares it to decide whether the pool changes.
func policyPart(s *config.Service) any {
	return struct {
		strategy       string
		slowStart      time.Duration
		sticky         *config.Sticky
		passive        *config.Passive
		passingOnly    bool
		panicThreshold int
	}{s.Strategy, s.SlowStart, s.Sticky, s.Passive, s.PassingOnly, s.PanicThreshold}
}

// newService builds a service's runtime with pol (see poolPolicy) and ct
// (its TLS to instances, nil for plain) and starts its pool, watch and
// prober.
func newService(name string, cfg *config.Service, pol balance.Policy, ct *clientTLS, e *env, consul *consulClient) *service {
	pool := balance.NewPool(balance.PoolOptions{
		Service: name, Strategy: pol.Strategy, Sticky: pol.Sticky, Builder: pol.Builder, SlowStart: pol.SlowStart, Passive: pol.Passive,
		PassingOnly: pol.PassingOnly, PanicThreshold: pol.PanicThreshold,
		Logger: e.logger.Named("pool"), Events: e.events,
	})
	s := &service{name: name, cfg: *cfg, pool: pool}
	if cfg.Connect {
		s.dest = e.connect.dest(cfg.Name, consul.cfg.Namespace)
		e.connect.attach(cfg.Name, name)
		ct = s.dest.tls
	}
	s.tls = ct
	s.fwd = forwardOptions(name, cfg, pool, ct.config())
	s.fwd.Intentions = s.intentions()
	s.poolTask = startTask(pool.Run)
	s.startWatch(e, consul)
	if cfg.HealthCheck != nil {
		s.startProbe(e)
	}
	return s
}

// startWatch starts the Consul watches of the service: one of the local
// datacenter and one of each failover datacenter, all feeding the pool,
// which first learns the failover datacenters (and drops the members of
// any it no longer lists).
func (s *service) startWatch(e *env, consul *consulClient) {
	s.watchKey = newWatchKey(&s.cfg, consul.generation)
	dcs := failoverDatacenters(&s.cfg)
	_ = s.pool.SetFailover(context.Background(), dcs)
	opts := watchOptions(s.cfg.Name, &s.cfg, consul.cfg, e.logger.Named("discovery"))
	watchers := []*discovery.Watcher{discovery.NewWatcher(consul.health, opts)}
	for _, dc := range dcs {
		o := opts
		o.Datacenter = dc
		watchers = append(watchers, discovery.NewWatcher(consul.health, o))
	}
	pool, name, transport, backupTag := s.pool, s.name, e.transport, s.cfg.BackupTag
	s.watch = startTask(func(ctx context.Context) {
		updates := make(chan dcUpdate)
		var watched sync.WaitGroup
		for i, w := range watchers {
			dc := ""
			if i > 0 {
				dc = dcs[i-1]
			}
			watched.Add(1)
			go func() { defer watched.Done(); watchDatacenter(ctx, w, dc, updates) }()
		}
		feedPool(ctx, pool, updates, backupTag, func(addrs []string) { transport.Track(name, addrs) })
		watched.Wait()
	})
}

// dcUpdate is an update of the watch of one datacenter ("" for the local one).
type dcUpdate struct {
	dc string
	discovery.Update
}

// watchDatacenter runs w until ctx is done, sending its updates on out
// tagged with dc.
func watchDatacenter(ctx context.Context, w *discovery.Watcher, dc string, out chan<- dcUpdate) {
	in := make(chan discovery.Update)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx, in) }()
	defer func() { <-done }()
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-in:
			select {
			case out <- dcUpdate{dc: dc, Update: u}:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (s *service) startProbe(e *env) {
	opts := probeOptions(s.cfg.HealthCheck, s.tls.config())
	opts.Intentions = s.intentions()
	prober := proxy.NewProber(s.pool, opts, e.logger.Named("probe"))
	s.probe = startTask(prober.Run)
}

// apply changes the running service to cfg, touching only what changed.
// pol, when not nil, is the new balancing policy (strategy, stickiness,
// slow start, passive ejection): the pool takes it and keeps its state.
// Changed probe settings replace the prober (the pool keeps the verdicts,
// which the new prober starts from); a removed health_check stops it and
// clears them. A change of what the watches depend on (tag, tags, weight
// key, node meta, filter, failover datacenters, backup tag, or the Consul
// client) replaces them all (the pool keeps its members until the new
// watches answer, except those of a failover datacenter no longer
// listed). passing_only and panic_threshold are part of the policy. ct is
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
	if key := newWatchKey(cfg, consul.generation); !reflect.DeepEqual(key, s.watchKey) {
		s.watch.stop()
		s.startWatch(e, consul)
	}
	var dest *connectDest
	if cfg.Connect {
		dest = e.connect.dest(cfg.Name, consul.cfg.Namespace)
		ct = dest.tls
	}
	switch {
	case dest != nil && s.dest == nil:
		e.connect.attach(cfg.Name, s.name)
	case dest == nil && s.dest != nil:
		e.connect.detach(old.Name, s.name)
	}
	s.dest = dest
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
	fwd.Intentions = s.intentions()
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
	if s.dest != nil {
		e.connect.detach(s.cfg.Name, s.name)
	}
}

// intentions returns the service's denial check: its Connect destination,
// or nil (an untyped nil: proxy compares it with nil).
func (s *service) intentions() proxy.Intentions {
	if s.dest == nil {
		return nil
	}
	return s.dest
}

// feedPool turns the discovery updates of every datacenter into pool
// changes until ctx is done: the local datacenter's ("") with SetMembers
// and SetError, a failover datacenter's with SetRemoteMembers and
// SetRemoteError. An instance carrying backupTag (compared
// case-insensitively, as Consul compares tags; "" for none) is a backup.
// track is told the addresses of every datacenter's last set together
// (local first, then by datacenter name), and only when they changed. An
// instance whose address and port are as in its datacenter's previous
// update keeps its address string, so that an unchanged answer costs no
// allocation per instance here.
func feedPool(ctx context.Context, pool *balance.Pool, updates <-chan dcUpdate, backupTag string, track func([]string)) {
	type dcState struct {
		prev   []discovery.Instance
		addrOf []string // the Addr of prev[i]
		valid  []string // the Addr of prev's valid instances
	}
	var (
		dcs     = map[string]*dcState{}
		names   []string // the keys of dcs, sorted ("" first)
		tracked []string // as last given to track; nil before
	)
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			if u.Err != nil {
				if u.dc == "" {
					_ = pool.SetError(ctx, u.Err)
				} else {
					_ = pool.SetRemoteError(ctx, u.dc, u.Err)
				}
				continue
			}
			st := dcs[u.dc]
			if st == nil {
				st = &dcState{}
				dcs[u.dc] = st
				names = append(names, u.dc)
				slices.Sort(names)
			}
			members := make([]balance.Member, len(u.Instances))
			next := make([]string, len(u.Instances))
			j := 0 // st.prev and u.Instances are both sorted by ID
			for i, in := range u.Instances {
				for j < len(st.prev) && st.prev[j].ID < in.ID {
					j++
				}
				if j < len(st.prev) && st.prev[j].ID == in.ID && st.prev[j].Address == in.Address && st.prev[j].Port == in.Port {
					next[i] = st.addrOf[j]
				} else {
					next[i] = in.HostPort()
				}
				members[i] = balance.Member{ID: in.ID, Addr: next[i], Weight: in.Weight, Consul: in.Health, Invalid: in.Invalid,
					Backup: backupTag != "" && hasTag(in.Tags, backupTag)}
			}
			st.prev, st.addrOf = u.Instances, next
			if u.dc == "" {
				_ = pool.SetMembers(ctx, u.Index, members)
			} else {
				_ = pool.SetRemoteMembers(ctx, u.dc, members)
			}
			st.valid = st.valid[:0]
			for _, m := range members {
				if m.Invalid == "" {
					st.valid = append(st.valid, m.Addr)
				}
			}
			var all []string
			for _, dc := range names {
				all = append(all, dcs[dc].valid...)
			}
			if tracked == nil || !slices.Equal(all, tracked) {
				tracked = all
				if tracked == nil {
					tracked = []string{}
				}
				track(tracked)
			}
		}
	}
}

// hasTag reports whether tags holds tag, compared case-insensitively.
func hasTag(tags []string, tag string) bool {
	for _, t := range tags {
		if strings.EqualFold(t, tag) {
			return true
		}
	}
	return false
}
