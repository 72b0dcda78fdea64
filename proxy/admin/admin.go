// Package admin serves sluice's admin address: the status API
// (GET /v1/services, /v1/status, /v1/events, /v1/routes, /healthz),
// /metrics, and the live dashboard (GET / and its stream, dashboard.go).
package admin

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-lb/sluice/balance"
)

// ServicesResponse is the body of GET /v1/services.
type ServicesResponse struct {
	Services []Service `json:"services"`
}

// Service is the status of one service's pool.
type Service struct {
	Name     string `json:"name"`
	Strategy string `json:"strategy"`
	// Sticky is the sticky mode (cookie, source_ip, header); "" when none.
	Sticky      string `json:"sticky,omitempty"`
	Synced      bool   `json:"synced"`
	ConsulIndex uint64 `json:"consul_index"`
	ConsulError string `json:"consul_error,omitempty"`
	// ConsulLastSuccess is when Consul last answered; null before the first.
	ConsulLastSuccess *time.Time `json:"consul_last_success"`
	// Serving names the tier requests go to: "local", "local backup",
	// "DC" or "DC backup" for a failover datacenter; "" when no instance
	// is eligible.
	Serving string `json:"serving"`
	// Panic is true while the service is in panic mode (panic_threshold).
	Panic     bool       `json:"panic"`
	Instances []Instance `json:"instances"`
}

// Instance is the status of one instance.
type Instance struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Weight  int    `json:"weight"`
	Consul  string `json:"consul"`
	// Invalid says why the instance's Consul entry cannot be used (bad
	// address or port, duplicate ID); such an instance is never eligible.
	Invalid string `json:"invalid,omitempty"`
	Probe   string `json:"probe"`
	Ejected bool   `json:"ejected"`
	// EjectedUntil is the end of the ejection while Ejected.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	Eligible     bool       `json:"eligible"`
	// Reason is "eligible" or what keeps the instance out, first cause
	// first: "invalid: ...", "consul critical", "probe failing", "ejected".
	Reason string `json:"reason"`
	// EffectiveWeight is the weight the picker uses: Weight, less during
	// slow start, 0 when not eligible.
	EffectiveWeight float64 `json:"effective_weight"`
	Inflight        int64   `json:"inflight"`
	Requests        uint64  `json:"requests"`
	// Errors are the failures blamed on the instance since it joined the
	// pool, every kind of sluice_upstream_errors_total together.
	Errors uint64 `json:"errors"`
	// Datacenter is the failover datacenter of a remote instance (whose
	// ID starts with it); absent for a local one.
	Datacenter string `json:"datacenter,omitempty"`
	// Backup is true for an instance carrying the service's backup_tag.
	Backup bool `json:"backup,omitempty"`
	// Standby is true for an eligible instance of a tier after the one
	// serving: it gets a request only as a retry.
	Standby bool `json:"standby,omitempty"`
}

// RoutesResponse is the body of GET /v1/routes.
type RoutesResponse struct {
	Listeners []RouteListener `json:"listeners"`
	// CatalogError is the last error of the catalog watch that discover
	// blocks use, while it lasts (the routes of its last good answer keep
	// serving); "" otherwise.
	CatalogError string `json:"catalog_error,omitempty"`
}

// RouteListener is one listener with its routes: those of the
// configuration file first, in file order, then the discovered ones
// sorted by route, service and tag.
type RouteListener struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Address  string `json:"address"`
	// TagPrefix is the discover block's tag prefix; "" without one.
	TagPrefix string        `json:"tag_prefix,omitempty"`
	Routes    []RouteStatus `json:"routes"`
}

// Route origins.
const (
	OriginHCL        = "hcl"        // written in the configuration file
	OriginDiscovered = "discovered" // made from a Consul service tag
)

// Route states.
const (
	RouteActive    = "active"     // in the routing table
	RoutePending   = "pending"    // waiting for its service's first Consul answer
	RouteShadowed  = "shadowed"   // another route has the same host and path prefix; Reason names it
	RouteInvalid   = "invalid"    // the tag is malformed or its service's policy cannot be built; Reason says why
	RouteOverLimit = "over_limit" // beyond its listener's discover max_routes; runs nothing
)

// RouteStatus is one route of a listener, or a route that a Consul tag
// asked for and did not get.
type RouteStatus struct {
	// Route is the route's metrics label: host and path prefix
	// ("api.example.com/v1", "/shop"); a server name for a passthrough
	// listener, "" for a tcp listener's one service, "redirect" for a
	// redirect listener. For an invalid tag, what follows the tag prefix.
	Route string `json:"route"`
	// Service is the Consul service; "" for a redirect.
	Service string `json:"service"`
	// Pool names the service's pool in /v1/services and in metrics: the
	// service for routes of the file, "SERVICE[TAG]" for discovered ones
	// (they see only the instances carrying their tag); "" unless the
	// route is active or pending.
	Pool   string `json:"pool,omitempty"`
	Origin string `json:"origin"` // OriginHCL or OriginDiscovered
	// Tag is the Consul tag a discovered route was made from.
	Tag    string `json:"tag,omitempty"`
	State  string `json:"state"`            // RouteActive, RoutePending, RouteShadowed, RouteInvalid or RouteOverLimit
	Reason string `json:"reason,omitempty"` // why shadowed or invalid
}

// Options are what the admin API shows. Each func is called per request
// and must be safe for concurrent use.
type Options struct {
	// Pools returns the current pools, in the order to show them.
	Pools func() []*balance.Pool
	// Status returns the process status for /v1/status, encoded as JSON;
	// nil answers 404.
	Status func() any
	// Metrics serves /metrics; nil answers 404.
	Metrics http.Handler
	// Ready, when it returns true, makes /healthz answer 200 whatever the
	// pools say: the process became ready once and stays so. nil means
	// /healthz follows the pools alone.
	Ready func() bool
	// Waiting, when it returns a reason and Ready does not say ready,
	// makes /healthz answer 503 with it whatever the pools say (sluice's
	// Connect certificates not loaded yet). nil: never.
	Waiting func() string
	// Gatherer is what the dashboard reads request rates, 5xx share,
	// latency and open connections from (the registry /metrics serves):
	// gathered once a second while a dashboard page is connected, never
	// otherwise. nil shows no traffic figures.
	Gatherer prometheus.Gatherer
	// Events is the ring of pool transitions and reloads that
	// GET /v1/events and the dashboard show; nil shows none.
	Events *balance.EventLog
	// Listeners returns the configured listeners and their routes, for
	// the dashboard; nil shows the listeners the metrics name.
	Listeners func() []Listener
	// Routes returns every route of every listener for GET /v1/routes;
	// nil answers 404.
	Routes func() RoutesResponse
}

// NewHandler serves the admin API:
//
//	GET /v1/services  JSON status of every service and instance
//	GET /v1/status    JSON status of the process (Options.Status)
//	GET /metrics      Prometheus metrics (Options.Metrics)
//	GET /healthz      200 when Ready says so; else 503 with Waiting's
//	                  reason when it gives one; else 200 when every pool
//	                  has had its first Consul answer, else 503 naming the services
//	                  waiting and, in consul_errors, the last Consul error
//	                  of each that has one (an ACL error, for instance)
//	GET /v1/events    JSON: the events of Options.Events, oldest first
//	GET /v1/routes    JSON: every route of every listener with its origin
//	                  and state (Options.Routes)
//	GET /             the dashboard page, and its assets under /ui/
//	GET /v1/dashboard/stream  the dashboard's frames (Server-Sent Events)
//
// A dashboard stream ends when its request's context does: the server
// should derive request contexts from one it cancels on shutdown
// (http.Server.BaseContext), or Shutdown waits for open pages.
func NewHandler(opts Options) http.Handler {
	mux := http.NewServeMux()
	registerDashboard(mux, &opts)
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		events, _ := opts.Events.Events()
		if events == nil {
			events = []balance.Event{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"events": events})
	})
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		pools := opts.Pools()
		resp := ServicesResponse{Services: make([]Service, 0, len(pools))}
		for _, p := range pools {
			resp.Services = append(resp.Services, serviceStatus(p.Load()))
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if opts.Ready != nil && opts.Ready() {
			writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
			return
		}
		if opts.Waiting != nil {
			if why := opts.Waiting(); why != "" {
				writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "waiting", "reason": why})
				return
			}
		}
		var waiting []string
		errs := map[string]string{}
		for _, p := range opts.Pools() {
			if s := p.Load(); !s.Synced {
				waiting = append(waiting, p.Service())
				if s.ConsulError != "" {
					errs[p.Service()] = s.ConsulError
				}
			}
		}
		if len(waiting) > 0 {
			body := map[string]any{"status": "waiting for consul", "services": waiting}
			if len(errs) > 0 {
				body["consul_errors"] = errs
			}
			writeJSON(w, http.StatusServiceUnavailable, body)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	if opts.Status != nil {
		mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, opts.Status())
		})
	}
	if opts.Routes != nil {
		mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, opts.Routes())
		})
	}
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", opts.Metrics)
	}
	return mux
}

func serviceStatus(s *balance.Snapshot) Service {
	out := Service{
		Name: s.Service, Strategy: s.Strategy, Sticky: s.Sticky, Synced: s.Synced,
		ConsulIndex: s.ConsulIndex, ConsulError: s.ConsulError, Serving: s.Serving, Panic: s.Panic,
		Instances: make([]Instance, 0, len(s.Members)),
	}
	if t := s.ConsulLastSuccess; !t.IsZero() {
		out.ConsulLastSuccess = &t
	}
	for _, m := range s.Members {
		in := Instance{
			ID: m.ID, Address: m.Addr, Weight: m.Weight, Consul: string(m.Consul), Invalid: m.Invalid,
			Probe: string(m.Probe), Ejected: m.Ejected, Eligible: m.Eligible, Reason: m.Reason(),
			EffectiveWeight: m.EffectiveWeight,
			Inflight:        m.Stats.Inflight(), Requests: m.Stats.Requests(), Errors: instanceErrors(m.Stats),
			Datacenter: m.Datacenter, Backup: m.Backup, Standby: m.Standby,
		}
		if m.Ejected {
			until := m.EjectedUntil
			in.EjectedUntil = &until
		}
		out.Instances = append(out.Instances, in)
	}
	return out
}

// instanceErrors sums the failures of every kind blamed on an instance.
func instanceErrors(s *balance.Stats) uint64 {
	var n uint64
	for _, k := range balance.ErrorKinds() {
		n += s.Errors(k)
	}
	return n
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
