// Package metrics holds sluice's Prometheus metrics: the families, and the
// label children that the request path uses.
//
// Contract: label children are resolved when a route, listener or service
// is built (Route, Listener, Service), never per request; the request path
// then only increments and observes. Instance-level series are not kept
// here: PoolCollector derives them from the pool snapshots at scrape time,
// so an instance that leaves a pool takes its series with it.
//
// Every method is safe on a nil *Metrics and on nil children, which record
// nothing: code under test may run without a registry.
package metrics

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the families sluice registers once per process. They outlive
// configuration generations: a reload keeps every counter counting.
type Metrics struct {
	requests    *prometheus.CounterVec   // listener, route, service, code
	duration    *prometheus.HistogramVec // listener, route, service
	retries     *prometheus.CounterVec   // service
	openConns   *prometheus.GaugeVec     // listener, protocol
	tcpBytes    *prometheus.CounterVec   // listener, direction
	reloads     *prometheus.CounterVec   // result
	lastSuccess prometheus.Gauge
	limitHits   *prometheus.CounterVec // listener, limit
	certExpiry  *prometheus.GaugeVec   // listener, cert
	catalogErrs prometheus.Counter
	// Consul Connect (connect.go).
	connectLeaf    prometheus.Gauge
	connectRoots   prometheus.Gauge
	connectDenials *prometheus.CounterVec // service
}

// Limits, the values of sluice_limit_hits_total's limit label.
const (
	LimitMaxConnections       = "max_connections"
	LimitMaxHeaderBytes       = "max_header_bytes"
	LimitMaxConcurrentStreams = "max_concurrent_streams"
	LimitMaxBodyBytes         = "max_body_bytes"
)

// Reload results, the values of sluice_config_reloads_total's label.
const (
	ReloadSuccess = "success"
	ReloadFailure = "failure"
)

// New creates the families and registers them with reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_requests_total",
			Help: "HTTP requests answered, by listener, route (the configured host and path prefix), service and status code; 499 is a client that went away.",
		}, []string{"listener", "route", "service", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_request_duration_seconds",
			Help:    "Time from the start of forwarding to the end of the answer's body, by listener, route and service.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"listener", "route", "service"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_retries_total",
			Help: "Tries beyond the first, by service (HTTP requests and TCP connections).",
		}, []string{"service"}),
		openConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_open_connections",
			Help: "Client connections open, by listener and protocol (http or tcp).",
		}, []string{"listener", "protocol"}),
		tcpBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_tcp_bytes_total",
			Help: "Bytes proxied by tcp listeners, by listener and direction (in: client to instance, out: instance to client).",
		}, []string{"listener", "direction"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_config_reloads_total",
			Help: "Configuration reloads (SIGHUP), by result (success or failure).",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_config_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful configuration load (the start counts as one).",
		}),
		limitHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_limit_hits_total",
			Help: "Times a listener's limit was reached, by listener and limit (max_connections, max_header_bytes, max_concurrent_streams, max_body_bytes).",
		}, []string{"listener", "limit"}),
		catalogErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_consul_catalog_errors_total",
			Help: "Failed queries of the catalog watch that discover blocks run; the last good catalog keeps its routes meanwhile.",
		}),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_tls_cert_not_after_seconds",
			Help: "Unix time at which a listener's certificate expires (its NotAfter), by listener and certificate.",
		}, []string{"listener", "cert"}),
	}
	m.connectLeaf = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_connect_leaf_not_after_seconds",
		Help: "Unix time at which sluice's Consul Connect leaf certificate expires; 0 before the first.",
	})
	m.connectRoots = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_connect_roots",
		Help: "Consul Connect root certificates sluice trusts.",
	})
	m.connectDenials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_connect_intention_denials_total",
		Help: "Requests, TCP connections and probes that Consul Connect intentions refused, by destination service.",
	}, []string{"service"})
	reg.MustRegister(m.connectLeaf, m.connectRoots, m.connectDenials)
	// Both results are exported from the start, at 0.
	m.reloads.WithLabelValues(ReloadSuccess)
	m.reloads.WithLabelValues(ReloadFailure)
	reg.MustRegister(m.requests, m.duration, m.retries, m.openConns, m.tcpBytes, m.reloads, m.lastSuccess, m.limitHits, m.certExpiry,
		m.catalogErrs)
	return m
}

// Reloaded counts a reload with its result; a success (and the start, with
// counted false) sets the last-success time to at.
func (m *Metrics) Reloaded(result string, counted bool, at time.Time) {
	if m == nil {
		return
	}
	if counted {
		m.reloads.WithLabelValues(result).Inc()
	}
	if result == ReloadSuccess {
		m.lastSuccess.Set(float64(at.UnixNano()) / 1e9)
	}
}

// CatalogError counts a failed query of the catalog watch.
func (m *Metrics) CatalogError() {
	if m != nil {
		m.catalogErrs.Inc()
	}
}

// firstCode and lastCode bound the status codes counted by their own
// child; others are counted under "other".
const (
	firstCode = 100
	lastCode  = 599
)

// Route is the children of one route of one listener. Its zero value and
// nil record nothing.
type Route struct {
	vec      *prometheus.CounterVec
	labels   [3]string // listener, route, service
	duration prometheus.Observer
	// codes holds the counter of each status code, resolved at the first
	// answer with that code (one label lookup per route and code, ever).
	codes [lastCode - firstCode + 2]atomic.Pointer[prometheus.Counter]
}

// Route returns the children of a route. route is the configured host and
// path prefix ("api.example.com/v1", "/"), never a request's path.
func (m *Metrics) Route(listener, route, service string) *Route {
	if m == nil {
		return nil
	}
	return &Route{
		vec:      m.requests,
		labels:   [3]string{listener, route, service},
		duration: m.duration.WithLabelValues(listener, route, service),
	}
}

// Observe counts one answered request with its status code and how long
// it took. It takes no lock and does not allocate once the code has been
// seen on this route.
func (r *Route) Observe(code int, d time.Duration) {
	if r == nil {
		return
	}
	i := len(r.codes) - 1 // "other"
	if code >= firstCode && code <= lastCode {
		i = code - firstCode
	}
	c := r.codes[i].Load()
	if c == nil {
		label := "other"
		if i < len(r.codes)-1 {
			label = strconv.Itoa(code)
		}
		counter := r.vec.WithLabelValues(r.labels[0], r.labels[1], r.labels[2], label)
		r.codes[i].CompareAndSwap(nil, &counter)
		c = r.codes[i].Load()
	}
	(*c).Inc()
	r.duration.Observe(d.Seconds())
}

// DeleteRoute removes the series of a route (its label and service) that
// a reload removed or sent to another service.
func (m *Metrics) DeleteRoute(listener, route, service string) {
	if m == nil {
		return
	}
	labels := prometheus.Labels{"listener": listener, "route": route, "service": service}
	m.requests.DeletePartialMatch(labels)
	m.duration.DeletePartialMatch(labels)
}

// Service is the children of one service. nil records nothing.
type Service struct {
	retries prometheus.Counter
}

// Service returns the children of a service.
func (m *Metrics) Service(name string) *Service {
	if m == nil {
		return nil
	}
	return &Service{retries: m.retries.WithLabelValues(name)}
}

// Retried counts one try beyond the first.
func (s *Service) Retried() {
	if s != nil {
		s.retries.Inc()
	}
}

// DeleteService removes the series of a service that a reload removed,
// its requests on every route included.
func (m *Metrics) DeleteService(name string) {
	if m == nil {
		return
	}
	m.retries.DeleteLabelValues(name)
	m.requests.DeletePartialMatch(prometheus.Labels{"service": name})
	m.duration.DeletePartialMatch(prometheus.Labels{"service": name})
}

// Listener is the children of one listener. nil records nothing.
type Listener struct {
	open     prometheus.Gauge
	bytesIn  prometheus.Counter // client to instance (tcp only)
	bytesOut prometheus.Counter // instance to client (tcp only)
	// The limit hit counters, resolved with the listener (nil: a limit
	// the protocol does not have).
	maxConns, maxHeader, maxStreams, maxBody prometheus.Counter
}

// Listener returns the children of a listener; protocol is "http" or
// "tcp". Its limit series are created at 0: max_connections for both,
// the other three for http only.
func (m *Metrics) Listener(name, protocol string) *Listener {
	if m == nil {
		return nil
	}
	l := &Listener{open: m.openConns.WithLabelValues(name, protocol),
		maxConns: m.limitHits.WithLabelValues(name, LimitMaxConnections)}
	if protocol == "tcp" {
		l.bytesIn = m.tcpBytes.WithLabelValues(name, "in")
		l.bytesOut = m.tcpBytes.WithLabelValues(name, "out")
	} else {
		l.maxHeader = m.limitHits.WithLabelValues(name, LimitMaxHeaderBytes)
		l.maxStreams = m.limitHits.WithLabelValues(name, LimitMaxConcurrentStreams)
		l.maxBody = m.limitHits.WithLabelValues(name, LimitMaxBodyBytes)
	}
	return l
}

// LimitHit counts one hit of limit (one of the Limit* constants) on the
// listener; an unknown limit, or one its protocol does not have, counts
// nothing. It takes no lock and does not allocate.
func (l *Listener) LimitHit(limit string) {
	if l == nil {
		return
	}
	var c prometheus.Counter
	switch limit {
	case LimitMaxConnections:
		c = l.maxConns
	case LimitMaxHeaderBytes:
		c = l.maxHeader
	case LimitMaxConcurrentStreams:
		c = l.maxStreams
	case LimitMaxBodyBytes:
		c = l.maxBody
	}
	if c != nil {
		c.Inc()
	}
}

// SetCertNotAfter exports the expiry of a listener's certificate; cert
// names it (for example its file or its first DNS name), the caller's
// choice, stable across reloads.
func (m *Metrics) SetCertNotAfter(listener, cert string, notAfter time.Time) {
	if m == nil {
		return
	}
	m.certExpiry.WithLabelValues(listener, cert).Set(float64(notAfter.Unix()))
}

// DeleteCerts removes the certificate series of a listener, before a
// reload sets those of its new certificates (or when it has no TLS any
// more).
func (m *Metrics) DeleteCerts(listener string) {
	if m == nil {
		return
	}
	m.certExpiry.DeletePartialMatch(prometheus.Labels{"listener": listener})
}

// ConnOpened and ConnClosed track one client connection.
func (l *Listener) ConnOpened() {
	if l != nil {
		l.open.Inc()
	}
}

// ConnClosed: see ConnOpened.
func (l *Listener) ConnClosed() {
	if l != nil {
		l.open.Dec()
	}
}

// TCPBytes counts bytes a tcp listener proxied: in from the client to the
// instance, out from the instance to the client.
func (l *Listener) TCPBytes(in, out int64) {
	if l == nil || l.bytesIn == nil {
		return
	}
	l.bytesIn.Add(float64(in))
	l.bytesOut.Add(float64(out))
}

// DeleteListener removes every series of a listener that a reload
// removed (its requests included), once its connections have drained.
func (m *Metrics) DeleteListener(name string) {
	if m == nil {
		return
	}
	m.openConns.DeletePartialMatch(prometheus.Labels{"listener": name})
	m.tcpBytes.DeletePartialMatch(prometheus.Labels{"listener": name})
	m.requests.DeletePartialMatch(prometheus.Labels{"listener": name})
	m.duration.DeletePartialMatch(prometheus.Labels{"listener": name})
	m.limitHits.DeletePartialMatch(prometheus.Labels{"listener": name})
	m.certExpiry.DeletePartialMatch(prometheus.Labels{"listener": name})
}

// SetConnectLeaf exports the expiry of sluice's Connect leaf certificate.
func (m *Metrics) SetConnectLeaf(notAfter time.Time) {
	if m != nil {
		m.connectLeaf.Set(float64(notAfter.Unix()))
	}
}

// SetConnectRoots exports the number of Connect roots trusted.
func (m *Metrics) SetConnectRoots(n int) {
	if m != nil {
		m.connectRoots.Set(float64(n))
	}
}

// ConnectDenied counts one refusal by intentions towards service. It
// resolves its child per call: denials are failures, not the request
// path's common case.
func (m *Metrics) ConnectDenied(service string) {
	if m != nil {
		m.connectDenials.WithLabelValues(service).Inc()
	}
}
