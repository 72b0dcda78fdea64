package main

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy"
	"github.com/sluice-lb/sluice/proxy/admin"
)

// Routes from Consul service tags (discover blocks).
//
// One catalog watch (/v1/catalog/services) runs while any listener has a
// discover block; it restarts only when the consul block changes. Each
// answer, each reload and each discovered service's first health answer
// make the app recompute, on its goroutine, which routes the tags ask for
// (discoverRoutes) and apply the difference like a reload does: the
// runtime of a route is a service (pool, health watch, prober) keyed by
// (service, tag), filtered by the route tag, and its routes reach the
// listeners through HTTPHandler.Update. A discovered service is thus
// apart from an HCL service of the same name (which sees every instance,
// or those of its own tag filter): its pool is named "SERVICE[TAG]" in
// /v1/services and in metrics. A reload keeps discovered runtimes whose
// policy it does not change, and changes the others in place as it does
// HCL services.
//
// Conflicts, decided from the file and the catalog alone, so that every
// sluice process decides alike: on one listener, a route of the file
// wins over discovered ones with the same host and path prefix; among
// discovered ones with the same host and path prefix, the service whose
// name sorts first (bytewise) wins, then the tag that sorts first. The
// others are shadowed, run nothing, and show in /v1/routes. Beyond a
// listener's discover max_routes winners (in the same order), routes are
// over_limit and run nothing either.

// maxRouteTagLength bounds what follows the tag prefix of a route tag.
const maxRouteTagLength = 1024

// discoKey names a discovered runtime: a Consul service and the route tag
// its instances must carry.
type discoKey struct{ service, tag string }

// poolName is the name of a discovered runtime's pool, unique among pools.
func (k discoKey) poolName() string { return k.service + "[" + k.tag + "]" }

// discoRuntime is the runtime of one discovered (service, tag). The app
// goroutine owns it; live is set by its waiter.
type discoRuntime struct {
	key discoKey
	cfg *config.Service // the policy as last applied; nil with err
	svc *service        // nil with err
	err string          // why the policy could not be built
	// live is set once the pool had its first Consul answer, or
	// newServiceWait passed without one: its routes go into the tables
	// only then, so that a new route answers no 503 while Consul answers.
	live   atomic.Bool
	waiter *task
}

// discoState is the app's discovery state; the app goroutine owns it,
// except the channels, which serve's loop reads.
type discoState struct {
	// updates carries the catalog watch's answers to serve's loop.
	updates chan discovery.CatalogUpdate
	// ready has room for one: a runtime became live, so the routes are
	// recomputed (several coalesce into one).
	ready    chan struct{}
	watch    *task  // nil while no listener discovers
	watchGen uint64 // the Consul client generation watch uses
	catalog  map[string][]string
	catErr   string // the last catalog error while it lasts
	runtimes map[discoKey]*discoRuntime
	// states are the discovered routes' states as last logged, by
	// (listener, service, tag): a state is logged when it changes, so an
	// invalid tag is logged once while the catalog shows it.
	states map[[3]string]string
}

func newDiscoState() discoState {
	return discoState{updates: make(chan discovery.CatalogUpdate), ready: make(chan struct{}, 1),
		runtimes: map[discoKey]*discoRuntime{}, states: map[[3]string]string{}}
}

// discoRoute is a route that a tag asks for on a listener.
type discoRoute struct {
	listener     string
	key          discoKey
	host, prefix string
	label        string // the route's metrics label; for an invalid tag, what follows the prefix
	state        string // admin.Route*: "" for a winner until the runtime says active or pending
	reason       string
}

// discoverRoutes returns the routes that the catalog's tags ask for on
// cfg's discovering listeners, by listener in file order, then by service
// and tag: invalid (malformed tag), shadowed (see the conflict rules
// above) or winners (state "").
func discoverRoutes(cfg *config.Config, catalog map[string][]string) []discoRoute {
	var out []discoRoute
	services := make([]string, 0, len(catalog))
	for name := range catalog {
		services = append(services, name)
	}
	slices.Sort(services)
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if lc.Discover == nil {
			continue
		}
		hcl := map[string]string{} // host+prefix -> service
		for _, r := range lc.Routes {
			hcl[proxy.RouteLabel(r.Host, r.PathPrefix)] = r.Service
		}
		winners := map[string]discoKey{}
		served := 0 // winners so far, against MaxRoutes
		for _, name := range services {
			for _, tag := range catalog[name] {
				rest, ok := strings.CutPrefix(tag, lc.Discover.TagPrefix)
				if !ok {
					continue
				}
				r := discoRoute{listener: lc.Name, key: discoKey{name, tag}}
				host, prefix, err := parseRouteTag(rest)
				if err != nil {
					r.label, r.state, r.reason = clip(rest), admin.RouteInvalid, err.Error()
					out = append(out, r)
					continue
				}
				r.host, r.prefix, r.label = host, prefix, proxy.RouteLabel(host, prefix)
				if svc, ok := hcl[r.label]; ok {
					r.state = admin.RouteShadowed
					r.reason = fmt.Sprintf("the configuration file routes %q to service %q", r.label, svc)
				} else if w, ok := winners[r.label]; ok {
					r.state = admin.RouteShadowed
					r.reason = fmt.Sprintf("service %q (tag %q) claims the same host and path prefix; the service whose name sorts first wins", w.service, w.tag)
				} else if served >= lc.Discover.MaxRoutes {
					r.state = admin.RouteOverLimit
					r.reason = fmt.Sprintf("the listener serves at most %d discovered routes (discover max_routes)", lc.Discover.MaxRoutes)
				} else {
					winners[r.label] = r.key
					served++
				}
				out = append(out, r)
			}
		}
	}
	return out
}

// clip cuts what is shown of a tag that parseRouteTag refused to
// maxRouteTagLength bytes.
func clip(s string) string {
	if len(s) <= maxRouteTagLength {
		return s
	}
	return s[:maxRouteTagLength] + "..."
}

// parseRouteTag parses what follows a route tag's prefix: "[host]/path".
// The host, when present, is lowercased and must be a host name or an
// IPv4 address (letters, digits, '-', '_' and dots, no empty label); the
// path is printable ASCII without spaces, '?' or '#'. Tags come from
// whoever registers services: nothing else is accepted.
func parseRouteTag(rest string) (host, prefix string, err error) {
	if len(rest) > maxRouteTagLength {
		return "", "", fmt.Errorf("longer than %d bytes", maxRouteTagLength)
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return "", "", errors.New(`no path prefix: a route tag ends in "[host]/path-prefix", such as "/shop" or "example.com/api"`)
	}
	host, prefix = strings.ToLower(rest[:slash]), rest[slash:]
	if host != "" {
		if len(host) > 253 {
			return "", "", errors.New("host longer than 253 bytes")
		}
		for _, label := range strings.Split(host, ".") {
			if label == "" || len(label) > 63 {
				return "", "", fmt.Errorf("host %q has an empty label or one longer than 63 bytes", host)
			}
			for i := 0; i < len(label); i++ {
				if c := label[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
					return "", "", fmt.Errorf("host %q may hold only letters, digits, '-', '_' and dots", host)
				}
			}
		}
	}
	for i := 0; i < len(prefix); i++ {
		if c := prefix[i]; c <= ' ' || c >= 0x7f || c == '?' || c == '#' {
			return "", "", fmt.Errorf("path prefix %q may hold only printable ASCII without spaces, '?' or '#'", prefix)
		}
	}
	return host, prefix, nil
}

// discoServiceConfig is the policy of a discovered runtime: the service's
// own block, else service_defaults, else the built-in defaults, with the
// route tag added to its instance filter (tag and tags).
func discoServiceConfig(cfg *config.Config, k discoKey) (*config.Service, error) {
	sc, err := cfg.ServiceFor(k.service)
	if err != nil {
		return nil, err
	}
	c := *sc
	// The route tag joins the policy's own tag filter: instances must
	// carry both (discovery asks Consul for Tag and Tags together).
	c.Tags = slices.Clone(sc.Tags)
	if sc.Tag != "" {
		c.Tags = append(c.Tags, sc.Tag)
	}
	c.Tag = k.tag
	return &c, nil
}

// onCatalog takes an answer of the catalog watch.
func (a *app) onCatalog(u discovery.CatalogUpdate) {
	if u.Err != nil {
		a.metrics.CatalogError()
		if msg := u.Err.Error(); msg != a.disco.catErr {
			a.events.Add(balance.Event{Kind: balance.EventConsulError, Detail: "catalog watch: " + msg})
		}
		a.disco.catErr = u.Err.Error()
		a.publishRoutes()
		return
	}
	if a.disco.catErr != "" {
		a.events.Add(balance.Event{Kind: balance.EventConsulRecovery, Detail: "catalog watch"})
	}
	a.disco.catErr = ""
	a.disco.catalog = u.Services
	a.reconcileDiscovery(false)
}

// reconcileDiscovery makes the running discovered routes those that the
// last catalog answer and a.cfg ask for. With reload, the policies and
// TLS files of kept runtimes are read anew and applied; otherwise only
// new runtimes build theirs. Order: the catalog watch follows the
// configuration, new runtimes start, listeners take their new tables,
// then runtimes no route needs stop (requests in flight on their pools
// finish).
func (a *app) reconcileDiscovery(reload bool) {
	d := &a.disco
	discovering := slices.ContainsFunc(a.cfg.Listeners, func(l config.Listener) bool { return l.Discover != nil })
	if !discovering {
		d.watch.stop()
		d.watch, d.catalog, d.catErr = nil, nil, ""
	} else if d.watch == nil || d.watchGen != a.consul.generation {
		d.watch.stop() // the last catalog serves until the new watch answers
		d.watch, d.watchGen = a.startCatalogWatch(), a.consul.generation
	}

	routes := discoverRoutes(a.cfg, d.catalog)
	want := map[discoKey]bool{}
	for _, r := range routes {
		if r.state == "" {
			want[r.key] = true
		}
	}
	for k := range want {
		rt := d.runtimes[k]
		switch {
		case rt == nil:
			d.runtimes[k] = a.startDiscoRuntime(k)
		case reload:
			a.refreshDiscoRuntime(rt)
		}
	}
	a.settle(routes)
	a.logRouteChanges(routes)

	for _, l := range a.listeners {
		if l.handler == nil {
			continue
		}
		var next []proxy.Route
		for _, r := range routes {
			if r.listener == l.cfg.Name && r.state == admin.RouteActive {
				next = append(next, proxy.Route{Host: r.host, PathPrefix: r.prefix, Service: d.runtimes[r.key].svc.fwd})
			}
		}
		if slices.Equal(next, l.discovered) {
			continue
		}
		old := l.discovered
		l.discovered = next
		l.handler.Update(httpOptions(&l.cfg, a.services, &a.env, l.log.log(), l.discovered))
		for _, o := range old {
			if !slices.ContainsFunc(next, func(n proxy.Route) bool {
				return n.Host == o.Host && n.PathPrefix == o.PathPrefix && n.Service.Name == o.Service.Name
			}) {
				a.metrics.DeleteRoute(l.cfg.Name, proxy.RouteLabel(o.Host, o.PathPrefix), o.Service.Name)
			}
		}
	}
	for k, rt := range d.runtimes {
		if !want[k] {
			a.stopDiscoRuntime(rt)
			delete(d.runtimes, k)
		}
	}
	a.publishPools(a.cfg)
	a.publishRoutesWith(routes)
}

// startCatalogWatch starts the catalog watch of the current Consul client;
// its answers go to serve's loop.
func (a *app) startCatalogWatch() *task {
	w := discovery.NewCatalogWatcher(a.consul.catalog, discovery.CatalogOptions{
		Datacenter: a.consul.cfg.Datacenter, Stale: a.consul.cfg.Stale, Logger: a.logger.Named("discovery"),
	})
	out := a.disco.updates
	return startTask(func(ctx context.Context) { w.Run(ctx, out) })
}

// startDiscoRuntime builds and starts the runtime of k; a policy that
// cannot be built makes a runtime holding only the error.
func (a *app) startDiscoRuntime(k discoKey) *discoRuntime {
	rt := &discoRuntime{key: k}
	sc, pol, ct, err := a.discoPolicy(k)
	if err != nil {
		rt.err = err.Error()
		return rt
	}
	rt.cfg = sc
	rt.svc = newService(k.poolName(), sc, pol, ct, &a.env, a.consul)
	a.startWaiter(rt)
	return rt
}

// startWaiter marks rt live once its pool has had its first answer (or
// newServiceWait passed) and wakes serve's loop.
func (a *app) startWaiter(rt *discoRuntime) {
	pool, ready := rt.svc.pool, a.disco.ready
	rt.waiter = startTask(func(ctx context.Context) {
		wctx, cancel := context.WithTimeout(ctx, newServiceWait)
		waitSynced(wctx, []*balance.Pool{pool})
		cancel()
		if ctx.Err() != nil {
			return
		}
		rt.live.Store(true)
		select {
		case ready <- struct{}{}:
		default:
		}
	})
}

// discoPolicy builds what a discovered runtime needs from a.cfg: its
// service settings, balancing policy and TLS to instances (nil: plain).
func (a *app) discoPolicy(k discoKey) (*config.Service, balance.Policy, *clientTLS, error) {
	sc, err := discoServiceConfig(a.cfg, k)
	if err != nil {
		return nil, balance.Policy{}, nil, err
	}
	pol, err := poolPolicy(k.poolName(), sc, a.secret)
	if err != nil {
		return nil, balance.Policy{}, nil, err
	}
	var ct *clientTLS
	if sc.TLS != nil {
		if ct, err = loadClientTLS(k.poolName(), sc.TLS); err != nil {
			return nil, balance.Policy{}, nil, err
		}
	}
	return sc, pol, ct, nil
}

// refreshDiscoRuntime applies a reloaded configuration to rt, as apply
// does to a kept HCL service: the pool keeps its state. A policy that can
// no longer be built stops the runtime and keeps the error; one that can
// again starts it anew.
func (a *app) refreshDiscoRuntime(rt *discoRuntime) {
	sc, pol, ct, err := a.discoPolicy(rt.key)
	switch {
	case err != nil:
		a.stopDiscoRuntime(rt)
		rt.cfg, rt.svc, rt.waiter, rt.err = nil, nil, nil, err.Error()
		rt.live.Store(false)
	case rt.svc == nil:
		rt.cfg, rt.err = sc, ""
		rt.svc = newService(rt.key.poolName(), sc, pol, ct, &a.env, a.consul)
		a.startWaiter(rt)
	default:
		var newPol *balance.Policy
		if !reflect.DeepEqual(policyPart(rt.cfg), policyPart(sc)) {
			newPol = &pol
		}
		rt.cfg = sc
		rt.svc.apply(sc, newPol, ct, &a.env, a.consul)
	}
}

// stopDiscoRuntime stops rt's waiter and service and deletes its series.
func (a *app) stopDiscoRuntime(rt *discoRuntime) {
	rt.waiter.stop()
	if rt.svc != nil {
		rt.svc.stop(&a.env)
		a.metrics.DeleteService(rt.svc.name)
	}
}

// logRouteChanges logs each discovered route whose state changed, and
// each invalid tag once while the catalog shows it.
func (a *app) logRouteChanges(routes []discoRoute) {
	d := &a.disco
	states := make(map[[3]string]string, len(routes))
	for _, r := range routes {
		id := [3]string{r.listener, r.key.service, r.key.tag}
		states[id] = r.state
		if d.states[id] == r.state {
			continue
		}
		if r.state == admin.RouteInvalid || r.state == admin.RouteShadowed || r.state == admin.RouteOverLimit {
			a.logger.Warn("discovered route not used", "listener", r.listener, "service", r.key.service, "tag", r.key.tag,
				"state", r.state, "reason", r.reason)
		} else {
			a.logger.Info("discovered route", "listener", r.listener, "route", r.label, "service", r.key.service, "tag", r.key.tag,
				"state", r.state)
		}
	}
	for id := range d.states {
		if _, ok := states[id]; !ok {
			a.logger.Info("discovered route removed", "listener", id[0], "service", id[1], "tag", id[2])
		}
	}
	d.states = states
}

// publishRoutes shows the routes of the running configuration and the
// last catalog answer in /v1/routes and on the dashboard.
func (a *app) publishRoutes() {
	routes := discoverRoutes(a.cfg, a.disco.catalog)
	a.settle(routes)
	a.publishRoutesWith(routes)
}

// settle gives the winners among routes the state of their runtime:
// invalid when its policy failed, active once live, else pending.
func (a *app) settle(routes []discoRoute) {
	for i := range routes {
		r := &routes[i]
		if r.state != "" {
			continue
		}
		switch rt := a.disco.runtimes[r.key]; {
		case rt == nil:
			r.state = admin.RoutePending
		case rt.err != "":
			r.state, r.reason = admin.RouteInvalid, rt.err
		case rt.live.Load():
			r.state = admin.RouteActive
		default:
			r.state = admin.RoutePending
		}
	}
}

// publishRoutesWith publishes a.cfg's routes and the discovered ones.
func (a *app) publishRoutesWith(routes []discoRoute) {
	dash := *dashboardListeners(a.cfg)
	resp := admin.RoutesResponse{Listeners: make([]admin.RouteListener, 0, len(a.cfg.Listeners)), CatalogError: a.disco.catErr}
	for i := range a.cfg.Listeners {
		lc := &a.cfg.Listeners[i]
		rl := admin.RouteListener{Name: lc.Name, Protocol: string(lc.Protocol), Address: lc.Address, Routes: []admin.RouteStatus{}}
		if lc.Discover != nil {
			rl.TagPrefix = lc.Discover.TagPrefix
		}
		for _, r := range dash[i].Routes {
			rl.Routes = append(rl.Routes, admin.RouteStatus{Route: r.Route, Service: r.Service, Pool: r.Service,
				Origin: admin.OriginHCL, State: admin.RouteActive})
		}
		var found []admin.RouteStatus
		for _, r := range routes {
			if r.listener != lc.Name {
				continue
			}
			rs := admin.RouteStatus{Route: r.label, Service: r.key.service, Origin: admin.OriginDiscovered, Tag: r.key.tag,
				State: r.state, Reason: r.reason}
			if r.state == admin.RouteActive || r.state == admin.RoutePending {
				rs.Pool = r.key.poolName()
			}
			if r.state == admin.RouteActive {
				dash[i].Routes = append(dash[i].Routes, admin.Route{Route: r.label, Service: rs.Pool})
			}
			found = append(found, rs)
		}
		slices.SortStableFunc(found, func(x, y admin.RouteStatus) int {
			return strings.Compare(x.Route, y.Route)
		})
		rl.Routes = append(rl.Routes, found...)
		resp.Listeners = append(resp.Listeners, rl)
	}
	a.routes.Store(&dash)
	a.routeStatus.Store(&resp)
}

// publishPools shows the pools of cfg's services, sorted by name, then
// those of the discovered runtimes, sorted by pool name.
func (a *app) publishPools(cfg *config.Config) {
	pools := make([]*balance.Pool, 0, len(cfg.Services)+len(a.disco.runtimes))
	for _, name := range cfg.ServiceNames() {
		pools = append(pools, a.services[name].pool)
	}
	var disco []*balance.Pool
	for _, rt := range a.disco.runtimes {
		if rt.svc != nil {
			disco = append(disco, rt.svc.pool)
		}
	}
	slices.SortFunc(disco, func(x, y *balance.Pool) int { return strings.Compare(x.Service(), y.Service()) })
	pools = append(pools, disco...)
	a.pools.Store(&pools)
}

// stopDiscovery stops the catalog watch and every discovered runtime; for
// shutdown, once the listeners are drained.
func (a *app) stopDiscovery() {
	a.disco.watch.stop()
	a.disco.watch = nil
	for k, rt := range a.disco.runtimes {
		a.stopDiscoRuntime(rt)
		delete(a.disco.runtimes, k)
	}
}
