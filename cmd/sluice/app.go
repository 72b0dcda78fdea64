package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy"
	"github.com/sluice-lb/sluice/proxy/admin"
	"github.com/sluice-lb/sluice/proxy/certs"
	"github.com/sluice-lb/sluice/proxy/metrics"
)

// newServiceWait bounds how long a reload that adds a service waits for the
// service's first Consul answer before its routes go live. Routes to it
// answer 503 until then; with the wait, a reload makes no 503 on its own
// while Consul answers within it.
const newServiceWait = 5 * time.Second

// adminIdleTimeout closes idle keep-alive connections to the admin API.
const adminIdleTimeout = 2 * time.Minute

// env is what every runtime object of one process shares, across every
// configuration generation.
type env struct {
	logger    hclog.Logger
	errLog    *log.Logger // net/http's and h1's error log, at debug level
	secret    []byte      // cookie secret of sticky services that set none: random per process
	transport *proxy.Upstream
	pressure  *proxy.Pressure
	metrics   *metrics.Metrics
	// events is the ring of pool transitions and reloads the dashboard
	// and /v1/events show; every pool writes to it.
	events *balance.EventLog
	// newHealth and newCatalog make the Consul health and catalog clients
	// of a consul block; tests replace them with fakes.
	newHealth  func(config.Consul) (discovery.HealthAPI, error)
	newCatalog func(config.Consul) (discovery.CatalogAPI, error)
	// connect is sluice's identity in the Consul service mesh (connect.go).
	connect *connectRuntime
}

// consulClient is the Consul client of one consul block. generation
// changes whenever the block does, and every watch follows it.
type consulClient struct {
	cfg        config.Consul
	generation uint64
	health     discovery.HealthAPI
	catalog    discovery.CatalogAPI
}

// app is the composition root: it turns a configuration into running
// listeners and services and, on reload, applies a new configuration as a
// difference. apply, reload and shutdown run on one goroutine (serve's);
// the admin API reads what it shows through atomics and statusMu.
type app struct {
	env
	path      string // the configuration file reload reads
	version   string
	startedAt time.Time
	registry  *prometheus.Registry

	cfg       *config.Config
	consul    *consulClient
	services  map[string]*service
	listeners []*listener
	admin     *adminServer
	// registrar keeps the register block's registration; nil without one
	// (register.go).
	registrar *registrar
	// draining are listeners a reload removed that still finish their
	// connections; shutdown waits for them.
	draining sync.WaitGroup
	// liveNames are the listener names of the running configuration: a
	// drained listener's series are deleted only when its name is not
	// among them. namesMu guards it (apply writes, drains read).
	namesMu   sync.Mutex
	liveNames map[string]bool
	// pools is what the admin API and the metrics show, sorted by service.
	pools atomic.Pointer[[]*balance.Pool]
	// routes are the running listeners and their routes, for the dashboard.
	routes atomic.Pointer[[]admin.Listener]
	// routeStatus is the answer of GET /v1/routes.
	routeStatus atomic.Pointer[admin.RoutesResponse]
	// disco is the state of the routes made from Consul tags
	// (discover.go).
	disco discoState
	// fatal receives the error of a server that stopped on its own.
	fatal chan error
	// ready is set once every service of the start configuration has had
	// its first Consul answer (and, when one uses Connect, sluice's leaf
	// and roots are loaded), and stays set: /healthz is the readiness of
	// the process, which a reload adding a service, or Connect, does not
	// take back.
	ready atomic.Bool
	// stopCtx ends with shutdown.
	stopCtx context.Context
	stop    context.CancelFunc

	statusMu   sync.Mutex
	generation uint64
	lastReload *reloadStatus
	// certs are the certificates of the terminating listeners, for
	// /v1/status; apply replaces them.
	certs atomic.Pointer[[]certStatus]
}

// Status is the answer of GET /v1/status.
type Status struct {
	Version    string        `json:"version"`
	Config     string        `json:"config"`
	Generation uint64        `json:"generation"`
	StartedAt  time.Time     `json:"started_at"`
	LastReload *reloadStatus `json:"last_reload"`
	// TLSCertificates are the certificates that the listeners present,
	// in listener and file order, with their expiry.
	TLSCertificates []certStatus `json:"tls_certificates"`
	// Connect is sluice's identity in the Consul service mesh: its leaf,
	// the roots and the intentions watch; absent when no service has
	// connect = true.
	Connect *connectStatus `json:"connect,omitempty"`
}

// reloadStatus is the outcome of the last reload; nil before the first.
type reloadStatus struct {
	At     time.Time `json:"at"`
	Result string    `json:"result"` // "success" or "failure"
	// Diagnostics are the problems of a failed reload, each as
	// FILE:LINE,COL: message, or the error that stopped it.
	Diagnostics []string `json:"diagnostics"`
}

// newApp returns an app with nothing running; start runs cfg.
func newApp(path, version string, logger hclog.Logger) (*app, error) {
	a := &app{path: path, version: version, startedAt: time.Now(), services: map[string]*service{}, fatal: make(chan error, 1),
		disco: newDiscoState()}
	a.stopCtx, a.stop = context.WithCancel(context.Background())
	a.logger = logger
	a.errLog = logger.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})
	a.secret = make([]byte, 32)
	if _, err := rand.Read(a.secret); err != nil {
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	a.transport = proxy.NewUpstream()
	a.pressure = proxy.NewPressure(logger.Named("pressure"))
	a.newHealth = newConsulHealth
	a.newCatalog = newConsulCatalog
	a.registry = prometheus.NewRegistry()
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.metrics = metrics.New(a.registry)
	a.registry.MustRegister(metrics.NewPoolCollector(a.currentPools))
	a.events = balance.NewEventLog(balance.DefaultEventLogSize, nil)
	a.connect = newConnectRuntime(logger.Named("connect"), a.metrics, a.transport)
	empty := []*balance.Pool{}
	a.pools.Store(&empty)
	a.routes.Store(&[]admin.Listener{})
	a.routeStatus.Store(&admin.RoutesResponse{Listeners: []admin.RouteListener{}})
	return a, nil
}

func (a *app) currentPools() []*balance.Pool { return *a.pools.Load() }

// start runs cfg: every socket is bound before anything starts, so an
// address in use is an error and nothing is left running.
func (a *app) start(cfg *config.Config) error {
	if err := a.apply(cfg, false); err != nil {
		return err
	}
	a.statusMu.Lock()
	a.generation = 1
	a.statusMu.Unlock()
	a.events.Add(balance.Event{Kind: balance.EventReload, Detail: "started: generation 1"})
	a.metrics.Reloaded(metrics.ReloadSuccess, false, time.Now())
	pools := a.currentPools()
	go func() {
		if !waitSynced(a.stopCtx, pools) {
			return
		}
		// With Connect services in the start configuration, the process
		// is ready once sluice's leaf and roots are loaded too.
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for a.connect.waiting() != "" {
			select {
			case <-a.stopCtx.Done():
				return
			case <-t.C:
			}
		}
		a.ready.Store(true)
	}()
	return nil
}

// reload re-reads the configuration file and applies it. An invalid file
// or a failed apply changes nothing; either is logged, counted and shown
// in /v1/status.
func (a *app) reload() {
	now := time.Now()
	a.logger.Info("reloading", "config", a.path)
	cfg, diags := config.Load(a.path, config.Options{})
	var problems []string
	if diags.HasErrors() {
		problems = config.FormatDiagnostics(diags)
		for _, line := range problems {
			a.logger.Error(line)
		}
		a.logger.Error("reload failed: the configuration is invalid; the running one stays", "config", a.path)
	} else if err := a.apply(cfg, true); err != nil {
		problems = []string{err.Error()}
		a.logger.Error("reload failed; the running configuration stays", "error", err)
	}
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	if problems != nil {
		a.lastReload = &reloadStatus{At: now, Result: metrics.ReloadFailure, Diagnostics: problems}
		a.metrics.Reloaded(metrics.ReloadFailure, true, now)
		detail := "failed, the running configuration stays: " + problems[0]
		if len(problems) > 1 {
			detail += fmt.Sprintf(" (and %d more)", len(problems)-1)
		}
		a.events.Add(balance.Event{Time: now, Kind: balance.EventReload, Detail: detail})
		return
	}
	a.generation++
	a.events.Add(balance.Event{Time: now, Kind: balance.EventReload, Detail: fmt.Sprintf("succeeded: generation %d", a.generation)})
	a.lastReload = &reloadStatus{At: now, Result: metrics.ReloadSuccess, Diagnostics: []string{}}
	a.metrics.Reloaded(metrics.ReloadSuccess, true, now)
	a.logger.Info("reloaded", "config", a.path, "generation", a.generation)
}

// status is the answer of GET /v1/status.
func (a *app) status() any {
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	certs := []certStatus{}
	if c := a.certs.Load(); c != nil {
		certs = *c
	}
	return Status{Version: a.version, Config: a.path, Generation: a.generation, StartedAt: a.startedAt, LastReload: a.lastReload,
		TLSCertificates: certs, Connect: a.connect.status()}
}

// prepared is what apply makes before it changes anything: every step
// that can fail. discard undoes it.
type prepared struct {
	bound    map[string]net.Listener   // new listener name -> its new socket
	kept     map[string]*listener      // new listener name -> the running listener it keeps
	logs     map[string]*accessLog     // new listener name -> its access log (new or kept)
	reopen   map[*accessLog]*os.File   // kept file log -> the file reopened for it
	certs    map[string]*certs.Set     // terminating listener name -> its certificates, read anew
	tls      map[string]*clientTLS     // service name -> its TLS to instances, read anew; absent: plain
	policies map[string]balance.Policy // service name -> its policy, when new or changed
	admin    net.Listener              // nil when the admin address is unchanged
	consul   *consulClient             // nil when the consul block is unchanged
	register *registerChange           // nil when the registration is unchanged
	connect  *api.Client               // for new Connect watches; nil when they stay (or none run)
	created  []*accessLog              // logs opened by prepare, closed by discard
}

// apply makes cfg the running configuration. prepare first does all that
// can fail (build every new or changed balancing policy, bind new
// sockets, open access logs, make a Consul client); if any step fails, it
// is undone and apply returns the error with nothing changed. Nothing
// after prepare fails. Then the difference is applied: services first
// (new ones start and, on reload, get up to newServiceWait for their
// first Consul answer before any route changes), then listeners (kept
// ones change in place, new ones start, removed ones stop accepting at
// once and drain in the background as on SIGTERM), then the admin
// socket, then removed services stop; last, the routes discovered from
// Consul tags follow cfg (reconcileDiscovery: a discovered runtime whose
// policy can no longer be built shows its route invalid, it does not fail
// the reload).
func (a *app) apply(cfg *config.Config, reload bool) error {
	p, err := a.prepare(cfg)
	if err != nil {
		return err
	}
	if p.consul != nil {
		a.consul = p.consul
	}
	// Before the services: their Connect handshakes need the identity.
	a.connect.run(cfg, p.connect)

	var added []*balance.Pool
	fwdChanged := map[string]bool{}
	for _, name := range cfg.ServiceNames() {
		svcCfg := cfg.Services[name]
		pol, polChanged := p.policies[name]
		if s := a.services[name]; s != nil {
			var newPol *balance.Policy
			if polChanged {
				newPol = &pol
			}
			fwdChanged[name] = s.apply(svcCfg, newPol, p.tls[name], &a.env, a.consul)
			continue
		}
		s := newService(name, svcCfg, pol, p.tls[name], &a.env, a.consul)
		a.services[name] = s
		added = append(added, s.pool)
	}
	if reload {
		ctx, cancel := context.WithTimeout(a.stopCtx, newServiceWait)
		waitSynced(ctx, added)
		cancel()
	}

	// Names first: a drained listener's series are deleted only when no
	// listener of the new configuration has its name (see drain).
	a.namesMu.Lock()
	a.liveNames = map[string]bool{}
	for _, lc := range cfg.Listeners {
		a.liveNames[lc.Name] = true
	}
	a.namesMu.Unlock()
	var next []*listener
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		log := p.logs[lc.Name]
		l := p.kept[lc.Name]
		if l == nil {
			l = newListener(lc, p.bound[lc.Name], log, p.certs[lc.Name], a.services, &a.env)
			l.start(a.fatal)
			a.logger.Info("listening", "listener", lc.Name, "address", l.ln.Addr().String(), "protocol", lc.Protocol)
			next = append(next, l)
			continue
		}
		if f := p.reopen[log]; f != nil {
			log.file.swap(f)
		}
		l.swapCerts(p.certs[lc.Name])
		if changed(l, lc, fwdChanged) {
			old := l.cfg
			l.update(lc, log, a.services, &a.env)
			a.forgetSeries(&old, lc)
		}
		next = append(next, l)
	}
	for _, l := range a.listeners {
		if !slices.Contains(next, l) {
			a.drain(l)
		}
	}
	a.listeners = next
	a.publishCerts(next)

	for name, s := range a.services {
		if _, ok := cfg.Services[name]; !ok {
			s.stop(&a.env)
			delete(a.services, name)
			a.metrics.DeleteService(name)
			a.logger.Info("service removed", "service", name)
		}
	}
	// Before the admin API starts: at start, an admin API seeing no pools
	// would answer /healthz 200 before any Consul answer.
	a.publishPools(cfg)
	a.routes.Store(dashboardListeners(cfg))

	if p.admin != nil {
		if old := a.admin; old != nil {
			old.stopAccepting() // its address is free for the next reload at once
			a.background(old.shutdown, nil)
		}
		a.admin = a.newAdmin(p.admin, cfg.Admin.Address)
	}
	// Self-registration once what it registers is serving.
	a.applyRegister(p.register)
	a.cfg = cfg
	// Discovered routes follow the new configuration (discover.go).
	a.reconcileDiscovery(reload)
	return nil
}

// publishCerts shows the certificates of the listeners in /v1/status and
// /metrics (sluice_tls_cert_not_after_seconds, by listener and file).
func (a *app) publishCerts(listeners []*listener) {
	out := []certStatus{}
	for _, l := range listeners {
		a.metrics.DeleteCerts(l.cfg.Name)
		if l.tls == nil {
			continue
		}
		for _, c := range l.tls.Current().Certificates() {
			a.metrics.SetCertNotAfter(l.cfg.Name, c.CertFile, c.NotAfter)
			out = append(out, certStatus{Listener: l.cfg.Name, CertFile: c.CertFile, Names: c.Names, NotAfter: c.NotAfter})
		}
	}
	a.certs.Store(&out)
}

// dashboardListeners lists cfg's listeners and routes for the dashboard,
// each route with its metrics label.
func dashboardListeners(cfg *config.Config) *[]admin.Listener {
	out := make([]admin.Listener, 0, len(cfg.Listeners))
	for _, lc := range cfg.Listeners {
		l := admin.Listener{Name: lc.Name, Protocol: string(lc.Protocol), Address: lc.Address}
		if lc.Protocol == config.ProtocolTCP && lc.Service != "" {
			l.Routes = []admin.Route{{Service: lc.Service}}
		}
		for _, r := range lc.SNIRoutes {
			l.Routes = append(l.Routes, admin.Route{Route: r.Host, Service: r.Service})
		}
		if lc.RedirectHTTPS {
			l.Routes = append(l.Routes, admin.Route{Route: proxy.RedirectLabel})
		}
		for _, r := range lc.Routes {
			l.Routes = append(l.Routes, admin.Route{Route: proxy.RouteLabel(r.Host, r.PathPrefix), Service: r.Service})
		}
		out = append(out, l)
	}
	return &out
}

// forgetSeries deletes the request series of a kept listener that its new
// configuration no longer has: all of them when it was renamed (unless a
// listener of the new configuration took the old name), else those of the
// routes (label and service) that are gone.
func (a *app) forgetSeries(old, cfg *config.Listener) {
	if old.Name != cfg.Name {
		a.namesMu.Lock()
		if !a.liveNames[old.Name] {
			a.metrics.DeleteListener(old.Name)
		}
		a.namesMu.Unlock()
		return
	}
	now := routeSeries(cfg)
	for rs := range routeSeries(old) {
		if !now[rs] {
			a.metrics.DeleteRoute(cfg.Name, rs.label, rs.service)
		}
	}
}

// routeKey is a route's metrics labels.
type routeKey struct{ label, service string }

// routeSeries returns the metrics labels of a listener's routes.
func routeSeries(l *config.Listener) map[routeKey]bool {
	out := map[routeKey]bool{}
	for _, r := range l.Routes {
		out[routeKey{proxy.RouteLabel(r.Host, r.PathPrefix), r.Service}] = true
	}
	if l.RedirectHTTPS {
		out[routeKey{proxy.RedirectLabel, ""}] = true
	}
	return out
}

// changed reports whether a kept listener must be updated to cfg: its own
// settings changed, or the forwarding options of a service it sends to.
func changed(l *listener, cfg *config.Listener, fwdChanged map[string]bool) bool {
	if !reflect.DeepEqual(&l.cfg, cfg) {
		return true
	}
	if fwdChanged[cfg.Service] {
		return true
	}
	for _, r := range cfg.Routes {
		if fwdChanged[r.Service] {
			return true
		}
	}
	return false
}

// prepare does the steps of apply that can fail, undoing them on failure.
func (a *app) prepare(cfg *config.Config) (_ *prepared, err error) {
	p := &prepared{bound: map[string]net.Listener{}, kept: map[string]*listener{}, logs: map[string]*accessLog{},
		reopen: map[*accessLog]*os.File{}, policies: map[string]balance.Policy{},
		certs: map[string]*certs.Set{}, tls: map[string]*clientTLS{}}
	defer func() {
		if err != nil {
			p.discard()
		}
	}()
	for _, name := range cfg.ServiceNames() {
		svc := cfg.Services[name]
		if s := a.services[name]; s != nil && reflect.DeepEqual(policyPart(&s.cfg), policyPart(svc)) {
			continue
		}
		pol, err := poolPolicy(name, svc, a.secret)
		if err != nil {
			return nil, err
		}
		p.policies[name] = pol
	}
	// TLS files are read on every reload: a certificate renewed under the
	// same name changes no configuration.
	for _, name := range cfg.ServiceNames() {
		if t := cfg.Services[name].TLS; t != nil {
			c, err := loadClientTLS(name, t)
			if err != nil {
				return nil, err
			}
			p.tls[name] = c
		}
	}
	for i := range cfg.Listeners {
		if lc := &cfg.Listeners[i]; terminates(lc) {
			set, err := loadListenerTLS(lc)
			if err != nil {
				return nil, err
			}
			p.certs[lc.Name] = set
		}
	}
	byAddr := map[string]*listener{}
	for _, l := range a.listeners {
		byAddr[l.cfg.Address] = l
	}
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if l := byAddr[lc.Address]; l != nil {
			if l.cfg.Protocol != lc.Protocol {
				return nil, fmt.Errorf("listener %q: the protocol of %s changes from %s to %s, which needs the old listener removed first (reload once without it) or a restart",
					lc.Name, lc.Address, l.cfg.Protocol, lc.Protocol)
			}
			if was, is := tlsShape(&l.cfg), tlsShape(lc); was != is {
				return nil, fmt.Errorf("listener %q: the TLS of %s changes from %s to %s, which needs the old listener removed first (reload once without it) or a restart",
					lc.Name, lc.Address, was, is)
			}
			if l.cfg.MaxConcurrentStreams != lc.MaxConcurrentStreams {
				return nil, fmt.Errorf("listener %q: max_concurrent_streams of %s changes from %d to %d, which needs the old listener removed first (reload once without it) or a restart",
					lc.Name, lc.Address, l.cfg.MaxConcurrentStreams, lc.MaxConcurrentStreams)
			}
			p.kept[lc.Name] = l
			continue
		}
		ln, err := bind(fmt.Sprintf("listener %q", lc.Name), lc.Address)
		if err != nil {
			return nil, err
		}
		p.bound[lc.Name] = ln
	}
	if a.admin == nil || a.admin.address != cfg.Admin.Address {
		ln, err := bind("admin", cfg.Admin.Address)
		if err != nil {
			return nil, err
		}
		p.admin = ln
	}
	// Access logs: a kept listener writing to the same file gets the file
	// reopened; any other file is opened anew.
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if l := p.kept[lc.Name]; l != nil && l.log.where == lc.AccessLog {
			p.logs[lc.Name] = l.log
			if l.log.file != nil {
				f, err := openAppend(lc.AccessLog)
				if err != nil {
					return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
				}
				p.reopen[l.log] = f
			}
			continue
		}
		log, err := openAccessLog(lc.AccessLog)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
		}
		p.logs[lc.Name] = log
		p.created = append(p.created, log)
	}
	if a.consul == nil || a.consul.cfg != cfg.Consul {
		health, err := a.newHealth(cfg.Consul)
		if err != nil {
			return nil, err
		}
		gen := uint64(1)
		if a.consul != nil {
			gen = a.consul.generation + 1
		}
		catalog, err := a.newCatalog(cfg.Consul)
		if err != nil {
			return nil, err
		}
		p.consul = &consulClient{cfg: cfg.Consul, generation: gen, health: health, catalog: catalog}
	}
	if cfg.UsesConnect() && a.connect.needsClient(cfg.ConnectIdentity(), cfg.Consul) {
		if p.connect, err = newConsulClient(cfg.Consul); err != nil {
			return nil, err
		}
	}
	// Self-registration: a client only when the registration changed.
	if p.register, err = a.prepareRegister(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// discard closes what prepare opened.
func (p *prepared) discard() {
	for _, ln := range p.bound {
		ln.Close()
	}
	if p.admin != nil {
		p.admin.Close()
	}
	for _, f := range p.reopen {
		f.Close()
	}
	for _, l := range p.created {
		l.close()
	}
}

// waitSynced waits until every pool has had its first Consul answer; it
// reports false when ctx ends first.
func waitSynced(ctx context.Context, pools []*balance.Pool) bool {
	for _, p := range pools {
		for snap := p.Load(); !snap.Synced; snap = p.Load() {
			select {
			case <-snap.Next():
			case <-ctx.Done():
				return false
			}
		}
	}
	return true
}

// background runs stop (a drain bounded by shutdownGrace) on its own
// goroutine and then done, if not nil; shutdown waits for it.
func (a *app) background(stop func(context.Context), done func()) {
	a.draining.Add(1)
	go func() {
		defer a.draining.Done()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		stop(ctx)
		if done != nil {
			done()
		}
	}()
}

// drain stops a listener that a reload removed as SIGTERM would: its
// socket closes at once (the address is free for the next reload), its
// connections get shutdownGrace in the background, and then its series
// are deleted unless a listener of the running configuration has its
// name.
func (a *app) drain(l *listener) {
	a.logger.Info("listener removed; draining", "listener", l.cfg.Name, "address", l.cfg.Address)
	l.stopAccepting()
	a.background(l.shutdown, func() {
		a.namesMu.Lock()
		defer a.namesMu.Unlock()
		if !a.liveNames[l.cfg.Name] {
			a.metrics.DeleteListener(l.cfg.Name)
		}
	})
}

// shutdown deregisters (unless deregisterFirst did), drains every listener
// for up to grace, then stops the services and closes the upstream
// connections.
func (a *app) shutdown(grace time.Duration) {
	a.stop()
	if a.registrar != nil { // a stop without deregisterFirst (a fatal error)
		a.registrar.stop(true)
		a.registrar = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var wg sync.WaitGroup
	for _, l := range a.listeners {
		wg.Add(1)
		go func() { defer wg.Done(); l.shutdown(ctx) }()
	}
	if a.admin != nil {
		wg.Add(1)
		go func() { defer wg.Done(); a.admin.shutdown(ctx) }()
	}
	wg.Wait()
	a.draining.Wait()
	a.stopDiscovery()
	for _, s := range a.services {
		s.stop(&a.env)
	}
	a.connect.stop()
	a.transport.Close()
}

// adminServer is the admin API on its own socket.
type adminServer struct {
	address string // as configured
	ln      net.Listener
	srv     *http.Server
	done    chan struct{}
	closing atomic.Bool // set by stopAccepting: Serve's error is expected
}

// stopAccepting closes the socket at once, so that its address is free
// when it returns.
func (s *adminServer) stopAccepting() {
	s.closing.Store(true)
	s.ln.Close()
}

// newAdmin serves the admin API on ln, bound to address as configured.
func (a *app) newAdmin(ln net.Listener, address string) *adminServer {
	h := admin.NewHandler(admin.Options{
		Pools:     a.currentPools,
		Status:    a.status,
		Metrics:   promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{ErrorLog: a.errLog}),
		Ready:     a.ready.Load,
		Waiting:   a.connect.waiting,
		Gatherer:  a.registry,
		Events:    a.events,
		Listeners: func() []admin.Listener { return *a.routes.Load() },
		Routes:    func() admin.RoutesResponse { return *a.routeStatus.Load() },
	})
	s := &adminServer{address: address, ln: ln, srv: newServer(h, a.errLog, adminIdleTimeout), done: make(chan struct{})}
	// Shutdown cancels every request's context, so dashboard streams
	// (which never end on their own) do not hold it up.
	base, cancel := context.WithCancel(context.Background())
	s.srv.BaseContext = func(net.Listener) context.Context { return base }
	s.srv.RegisterOnShutdown(cancel)
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !s.closing.Load() {
			select {
			case a.fatal <- fmt.Errorf("admin: %w", err):
			default:
			}
		}
	}()
	a.logger.Info("admin listening", "address", ln.Addr().String())
	return s
}

func (s *adminServer) shutdown(ctx context.Context) {
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.done
}
