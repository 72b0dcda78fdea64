package admin

import (
	"embed"
	"encoding/json"
	"io/fs"
	"math"
	"net/http"
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/sluice-lb/sluice/balance"
)

// The dashboard's timing. While at least one page is connected the hub
// gathers the metrics every dashboardTick and keeps dashboardWindow of
// samples for its rates; a pool transition (an event) pushes a frame at
// once, at most one every dashboardMinPush.
const (
	dashboardTick    = time.Second
	dashboardWindow  = time.Minute
	dashboardMinPush = 100 * time.Millisecond
	// dashboardMaxStreams bounds the pages connected at once; more get 503.
	dashboardMaxStreams = 64
	// dashboardWriteTimeout bounds one frame's write to a page: a client
	// that reads no more is dropped.
	dashboardWriteTimeout = 10 * time.Second
)

//go:embed ui
var uiFiles embed.FS

// Listener is one configured listener, as Options.Listeners reports it.
type Listener struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"` // http or tcp
	Address  string `json:"address"`
	// Routes are an http listener's routes in order, each with its metrics
	// label; a tcp listener has one, with Route "".
	Routes []Route `json:"routes"`
}

// Route is one route of a listener: its metrics label and its service.
type Route struct {
	Route   string `json:"route"`
	Service string `json:"service"`
}

// Frame is one message of GET /v1/dashboard/stream: the whole state the
// page shows. Rates are over the last Window seconds (up to a minute
// since the first page connected) and null until two samples exist.
type Frame struct {
	Time      time.Time       `json:"time"`
	Window    float64         `json:"window_seconds"`
	Status    any             `json:"status,omitempty"` // GET /v1/status
	Listeners []ListenerFrame `json:"listeners"`
	Services  []ServiceFrame  `json:"services"`
	Events    []balance.Event `json:"events"` // oldest first, at most the ring's size
}

// ListenerFrame is a listener with its open connections and routes.
type ListenerFrame struct {
	Listener
	OpenConnections float64      `json:"open_connections"`
	Routes          []RouteFrame `json:"routes"`
}

// RouteFrame is a route's traffic over the window. Latencies are in
// seconds, estimated from sluice_request_duration_seconds' buckets.
type RouteFrame struct {
	Route     string   `json:"route"`
	Service   string   `json:"service"`
	RPS       *float64 `json:"rps"`
	ErrorRate *float64 `json:"error_rate"` // share of 5xx answers, 0..1; null without requests
	P50       *float64 `json:"p50"`
	P99       *float64 `json:"p99"`
}

// ServiceFrame is a service as GET /v1/services shows it, with the age of
// Consul's last answer and each instance's rates.
type ServiceFrame struct {
	Service
	ConsulAge *float64        `json:"consul_age_seconds"`
	Instances []InstanceFrame `json:"instances"`
}

// InstanceFrame is an instance with its rates over the window.
type InstanceFrame struct {
	Instance
	RPS          *float64 `json:"rps"`
	WindowErrors *float64 `json:"window_errors"`
}

// registerDashboard adds the page, its assets and its stream to mux.
func registerDashboard(mux *http.ServeMux, opts *Options) {
	ui, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	assets := http.FileServerFS(ui)
	h := newHub(opts)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		pageHeaders(w)
		http.ServeFileFS(w, r, ui, "index.html")
	})
	mux.Handle("GET /ui/", http.StripPrefix("/ui", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pageHeaders(w)
		if r.URL.Path == "/" || r.URL.Path == "/index.html" {
			http.NotFound(w, r)
			return
		}
		assets.ServeHTTP(w, r)
	})))
	mux.HandleFunc("GET /v1/dashboard/stream", h.serveStream)
}

// pageHeaders lock the page to its own assets: names and errors from
// Consul and instances are shown as text, and nothing may load or frame it.
func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

// hub runs one sampling loop for every connected page. With no page
// connected nothing runs: the first subscriber starts the loop, the last
// one to leave stops it.
type hub struct {
	opts *Options
	mu   sync.Mutex
	subs map[*subscriber]struct{}
	stop chan struct{} // closed to end the running loop; nil when none runs
	last []byte        // the last frame sent, for a page that joins a running loop
	// running counts loops that have not returned, for tests.
	running sync.WaitGroup
}

func newHub(opts *Options) *hub { return &hub{opts: opts, subs: map[*subscriber]struct{}{}} }

// subscriber is one connected page: ch holds the newest frame not yet
// written (older ones are dropped, never queued).
type subscriber struct{ ch chan []byte }

func (h *hub) subscribe() *subscriber {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= dashboardMaxStreams {
		return nil
	}
	s := &subscriber{ch: make(chan []byte, 1)}
	h.subs[s] = struct{}{}
	if h.stop == nil {
		h.stop = make(chan struct{})
		h.last = nil
		h.running.Add(1)
		go h.sampleLoop(h.stop)
	} else if h.last != nil {
		s.ch <- h.last
	}
	return s
}

func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	if len(h.subs) == 0 && h.stop != nil {
		close(h.stop)
		h.stop = nil
	}
}

// broadcast hands frame to every subscriber, replacing a frame it has not
// written yet. It never blocks: only broadcast sends, under h.mu.
func (h *hub) broadcast(frame []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = frame
	for s := range h.subs {
		select {
		case <-s.ch:
		default:
		}
		s.ch <- frame
	}
}

// serveStream writes frames as Server-Sent Events until the client goes
// away, a write fails or takes dashboardWriteTimeout, or the request's
// context ends.
func (h *hub) serveStream(w http.ResponseWriter, r *http.Request) {
	sub := h.subscribe()
	if sub == nil {
		http.Error(w, "too many dashboard streams", http.StatusServiceUnavailable)
		return
	}
	defer h.unsubscribe(sub)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	write := func(parts ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(dashboardWriteTimeout))
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	// EventSource reconnects a second after the stream breaks.
	if !write([]byte("retry: 1000\n\n")) {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case f := <-sub.ch:
			if !write([]byte("data: "), f, []byte("\n\n")) {
				return
			}
		}
	}
}

// sampleLoop gathers the metrics every dashboardTick and pushes a frame
// after each gather and after each event, until stop is closed.
func (h *hub) sampleLoop(stop <-chan struct{}) {
	defer h.running.Done()
	w := &window{}
	tick := time.NewTicker(dashboardTick)
	defer tick.Stop()
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	var lastPush time.Time
	var changed <-chan struct{}
	push := func() {
		changed = h.opts.Events.Changed() // before reading, so no event is missed
		h.broadcast(h.frame(w))
		lastPush = time.Now()
	}
	w.add(h.gather())
	push()
	for {
		select {
		case <-stop:
			hold.Stop()
			return
		case <-tick.C:
			w.add(h.gather())
			push()
		case <-changed:
			changed = nil
			if d := dashboardMinPush - time.Since(lastPush); d > 0 {
				hold.Reset(d)
				continue
			}
			push()
		case <-hold.C:
			push()
		}
	}
}

// gather reads one sample of the metrics and the pools' counters.
func (h *hub) gather() *sample {
	s := &sample{at: time.Now(), routes: map[routeKey]*routeSample{}, conns: map[string]float64{}, instances: map[instanceKey][2]float64{}}
	if g := h.opts.Gatherer; g != nil {
		families, _ := g.Gather() // a partial gather still has what it could collect
		for _, mf := range families {
			switch mf.GetName() {
			case "sluice_requests_total":
				for _, m := range mf.GetMetric() {
					rs := s.route(m)
					v := m.GetCounter().GetValue()
					rs.count += v
					if code := labelValue(m, "code"); len(code) == 3 && code[0] == '5' {
						rs.errors += v
					}
				}
			case "sluice_request_duration_seconds":
				for _, m := range mf.GetMetric() {
					rs := s.route(m)
					for _, b := range m.GetHistogram().GetBucket() {
						rs.buckets = append(rs.buckets, bucket{upper: b.GetUpperBound(), count: float64(b.GetCumulativeCount())})
					}
					rs.buckets = append(rs.buckets, bucket{upper: math.Inf(1), count: float64(m.GetHistogram().GetSampleCount())})
				}
			case "sluice_open_connections":
				for _, m := range mf.GetMetric() {
					s.conns[labelValue(m, "listener")] += m.GetGauge().GetValue()
				}
			}
		}
	}
	if h.opts.Pools != nil {
		for _, p := range h.opts.Pools() {
			snap := p.Load()
			for _, m := range snap.Members {
				s.instances[instanceKey{snap.Service, m.ID}] = [2]float64{float64(m.Stats.Requests()), float64(instanceErrors(m.Stats))}
			}
		}
	}
	return s
}

// frame encodes what the page shows now, with the window's rates.
func (h *hub) frame(w *window) []byte {
	now := time.Now()
	f := Frame{Time: now, Window: w.span().Seconds(), Listeners: []ListenerFrame{}, Services: []ServiceFrame{}}
	if h.opts.Status != nil {
		f.Status = h.opts.Status()
	}
	f.Events, _ = h.opts.Events.Events()
	if f.Events == nil {
		f.Events = []balance.Event{}
	}
	f.Listeners = h.listenerFrames(w)
	if h.opts.Pools != nil {
		for _, p := range h.opts.Pools() {
			svc := serviceStatus(p.Load())
			sf := ServiceFrame{Service: svc, Instances: make([]InstanceFrame, 0, len(svc.Instances))}
			if t := svc.ConsulLastSuccess; t != nil {
				age := max(now.Sub(*t).Seconds(), 0)
				sf.ConsulAge = &age
			}
			for _, in := range svc.Instances {
				rps, errs := w.instanceRates(instanceKey{svc.Name, in.ID})
				sf.Instances = append(sf.Instances, InstanceFrame{Instance: in, RPS: rps, WindowErrors: errs})
			}
			sf.Service.Instances = nil
			f.Services = append(f.Services, sf)
		}
	}
	b, err := json.Marshal(f)
	if err != nil { // Status is the app's own struct; this does not happen
		b, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	return b
}

// listenerFrames lists the configured listeners and routes, then any
// (listener, route, service) the metrics have that the configuration
// does not (the "none" route of unmatched requests, a removed route
// still draining).
func (h *hub) listenerFrames(w *window) []ListenerFrame {
	var out []ListenerFrame
	index := map[string]int{}
	known := map[routeKey]bool{}
	if h.opts.Listeners != nil {
		for _, l := range h.opts.Listeners() {
			lf := ListenerFrame{Listener: l, Routes: []RouteFrame{}}
			lf.Listener.Routes = nil
			for _, r := range l.Routes {
				k := routeKey{l.Name, r.Route, r.Service}
				known[k] = true
				lf.Routes = append(lf.Routes, w.routeFrame(k))
			}
			index[l.Name] = len(out)
			out = append(out, lf)
		}
	}
	newest := w.newest()
	if newest != nil {
		keys := make([]routeKey, 0, len(newest.routes))
		for k := range newest.routes {
			if !known[k] {
				keys = append(keys, k)
			}
		}
		sort.Slice(keys, func(i, j int) bool {
			a, b := keys[i], keys[j]
			if a.listener != b.listener {
				return a.listener < b.listener
			}
			if a.route != b.route {
				return a.route < b.route
			}
			return a.service < b.service
		})
		for _, k := range keys {
			i, ok := index[k.listener]
			if !ok {
				i = len(out)
				index[k.listener] = i
				out = append(out, ListenerFrame{Listener: Listener{Name: k.listener, Protocol: "http"}, Routes: []RouteFrame{}})
			}
			out[i].Routes = append(out[i].Routes, w.routeFrame(k))
		}
		for i := range out {
			out[i].OpenConnections = newest.conns[out[i].Name]
		}
	}
	if out == nil {
		out = []ListenerFrame{}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
