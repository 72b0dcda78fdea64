// Package proxy forwards HTTP requests and TCP connections to the instances
// that the balance pools pick, retrying connection failures on other
// instances.
package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/h1"
	"github.com/sluice-lb/sluice/proxy/internal/wire"
	"github.com/sluice-lb/sluice/proxy/metrics"
)

// Route sends requests whose host and path match to a service's pool.
type Route struct {
	Host       string // lowercase host without port; "" matches any host
	PathPrefix string // plain string prefix of the URL path, starting with "/"
	Service    ServiceOptions
	// Label is the route's label value in metrics; default
	// RouteLabel(Host, PathPrefix).
	Label string
	// MaxBodyBytes is the largest request body accepted, in bytes; 0:
	// unlimited. A request that declares a longer Content-Length is
	// answered 413 at once, without contacting an instance; a streamed
	// (chunked) body that grows beyond it fails with 413 when no answer
	// has started. Both are the client's fault: the instance is not
	// judged, nothing is retried, and an HTTP/1.1 connection is closed
	// after the answer. Each counts as a max_body_bytes limit hit.
	MaxBodyBytes int64
}

// RouteLabel is a route's default metrics label: its host and path prefix
// as configured ("api.example.com/v1", "/").
func RouteLabel(host, pathPrefix string) string { return host + pathPrefix }

// NoRouteLabel is the route label of requests that match no route (404);
// their service label is "". No configured route has it: a route's label
// holds its path prefix, which starts with "/".
const NoRouteLabel = "none"

// ServiceOptions is the forwarding policy of one service.
type ServiceOptions struct {
	Name string
	Pool *balance.Pool
	// Attempts is the number of instances a request may try, the first
	// included; default DefaultAttempts, at most balance.MaxTries. See RoundTrip for
	// which failures are retried.
	Attempts int
	// PerTryTimeout bounds each try from the moment the request, its body
	// included, has been sent until the response headers arrive; a try
	// that runs out counts as a failure of the instance and is retried by
	// the failover rules. 0: none (ResponseHeaderTimeout still applies).
	PerTryTimeout time.Duration
	// ResponseHeaderTimeout is the same bound as PerTryTimeout for every
	// try (the shorter of the two applies), and the longest a write of the
	// request to the instance may block. 0: DefaultResponseHeaderTimeout.
	ResponseHeaderTimeout time.Duration
	// ResponseBodyTimeout is the longest wait for a byte of an answer's
	// body; a stall aborts the answer (the client connection is closed)
	// and counts as a failure of the instance. A stream that keeps sending
	// is never cut. 0: DefaultResponseBodyTimeout.
	ResponseBodyTimeout time.Duration
	// StickyCookie or StickyHeader names where the affinity key of a
	// sticky service is read (at most one is set; see balance.StickyOptions).
	StickyCookie string
	StickyHeader string
	// TLS, when set, makes sluice speak TLS to the service's instances
	// (HTTPS for HTTP routes, TLS for TCP listeners); nil: plain. The
	// caller builds it whole (RootCAs, ServerName, InsecureSkipVerify,
	// client Certificates) and must not modify it afterwards; connections
	// are pooled per *tls.Config. An empty ServerName means each
	// instance's host as Consul reports it (an IP address is verified
	// against the certificate's IP SANs), as a browser uses the URL's
	// host. HTTP routes offer ALPN http/1.1 only, whatever NextProtos
	// says, except that a non-nil empty NextProtos offers no ALPN at all
	// (Connect sidecars). A failed handshake is a failed connection to the
	// instance.
	TLS *tls.Config
	// Intentions, when set (Consul Connect services), tells a denial by
	// the mesh's intentions from an instance failure: a denied request is
	// answered 403 at once, not retried nor counted against the instance.
	// nil: every failure is the instance's.
	Intentions Intentions
}

// HTTPOptions configure an HTTP handler.
type HTTPOptions struct {
	Listener string // listener name, for the access log and metrics labels
	Routes   []Route
	// Transport carries requests upstream; default NewUpstream().
	Transport *Upstream
	// TrustedProxies are the peers whose X-Forwarded-* headers are kept
	// (appended to); from any other peer they are replaced. See
	// forwarding.
	TrustedProxies []netip.Prefix
	// Pressure is told of every dial; a dial that fails because sluice is
	// out of file descriptors or ports is answered 503 without blaming or
	// retrying the instance (see Pressure). nil: a private one logging to
	// Logger.
	Pressure *Pressure
	// MaxReplayBody is the largest request body (by Content-Length) that
	// is buffered so that an idempotent request can be retried after it
	// was sent; default 64 KiB. Larger or chunked bodies are streamed and
	// retried only when the connection failed before any was sent.
	MaxReplayBody int64
	// AccessLog, when set, gets one line per request.
	AccessLog *AccessLog
	// Logger receives upstream errors at Debug; nothing is logged per
	// request at the default Info level.
	Logger hclog.Logger
	// Metrics, when set, counts every answered request by route and
	// status code with its duration (from the start of forwarding; for a
	// 404, from routing), retries by service and upstream errors by
	// instance; children are resolved when a table is built. The open
	// connections gauge is the handler's (see ConnOpened). nil: none.
	Metrics *metrics.Metrics
	// ReverseProxyOnly sends every request through httputil.ReverseProxy,
	// the fast path (see fastEligible) off: for diagnosis and for tests
	// that compare the two paths. Default false.
	ReverseProxyOnly bool
	// RedirectHTTPS makes the handler answer every request with 308
	// Permanent Redirect to https://<the request's host>[:HTTPSPort]<its
	// path and query>, without routing it or reading its body (an
	// HTTP/1.1 connection with a body pending is closed after). A Host
	// that is not a host name or an IP literal is answered 400. Routes
	// are not used. Counted under the route label RedirectLabel.
	RedirectHTTPS bool
	// HTTPSPort is the port of the redirect's Location; 0: 443, which the
	// Location leaves out.
	HTTPSPort int
	// HSTSMaxAge, when positive, adds "Strict-Transport-Security:
	// max-age=<seconds>" to every answer to a request that came over TLS
	// (r.TLS != nil), sluice's own error answers included; an instance's
	// own Strict-Transport-Security header is replaced. 0: off.
	HSTSMaxAge time.Duration
}

// RedirectLabel is the route label under which a RedirectHTTPS handler
// counts its answers (service "").
const RedirectLabel = "redirect"

// Defaults of the upstream transport.
const (
	DefaultDialTimeout           = 5 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultResponseBodyTimeout   = 60 * time.Second
	// DefaultAttempts is the number of instances a request or connection
	// may try, the first included.
	DefaultAttempts      = 2
	DefaultMaxReplayBody = 64 << 10
	// DefaultHTTPSPort is the port of RedirectHTTPS's Location.
	DefaultHTTPSPort = 443
)

// HTTPHandler routes each request by host and path prefix (longest prefix
// wins; at equal length a route naming the host wins over one for any host)
// and forwards it to an instance of the route's service. Unrouted requests
// get 404, a service with no eligible instance 503, and a request whose
// every try failed 502, each with a JSON body.
//
// Its routing table (routes, service options, trusted proxies, replay
// limit, access log) is an immutable value behind an atomic pointer:
// Update swaps it for the requests that start afterwards, and a request in
// flight finishes on the table it started with. The request path does one
// atomic load. Transport, Pressure and Logger are fixed when the handler is
// made.
type HTTPHandler struct {
	table     atomic.Pointer[router]
	transport *Upstream
	pressure  *Pressure
	logger    hclog.Logger
	errLog    *log.Logger
	buffers   *bufferPool // ReverseProxy copy buffers, shared by every table
}

var _ http.Handler = (*HTTPHandler)(nil)

// NewHTTPHandler returns a handler with opts; see HTTPHandler.
func NewHTTPHandler(opts HTTPOptions) *HTTPHandler {
	if opts.Transport == nil {
		opts.Transport = NewUpstream()
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Pressure == nil {
		opts.Pressure = NewPressure(opts.Logger)
	}
	h := &HTTPHandler{
		transport: opts.Transport,
		pressure:  opts.Pressure,
		logger:    opts.Logger,
		errLog:    opts.Logger.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
		buffers:   &bufferPool{},
	}
	h.Update(opts)
	return h
}

// ConnOpened counts an open client connection of the listener in the
// gauge of the current table (its Metrics and Listener name) and returns
// that gauge, to be told when the connection closes: an Update that
// renames the listener moves new connections only, and every close pairs
// with its open. It makes an HTTPHandler an h1.Server's ConnCounter.
// Without Metrics it counts nothing.
func (h *HTTPHandler) ConnOpened() h1.ConnCloser {
	l := h.table.Load().conns
	l.ConnOpened()
	return l
}

// Update replaces the routing table with one built from opts, for the
// requests that start after it returns; requests in flight finish on the
// table they started with. opts.Transport, opts.Pressure and opts.Logger
// are ignored: those of NewHTTPHandler stay. Update may be called
// concurrently with ServeHTTP; concurrent Updates leave one of the tables.
func (h *HTTPHandler) Update(opts HTTPOptions) {
	if opts.MaxReplayBody <= 0 {
		opts.MaxReplayBody = DefaultMaxReplayBody
	}
	opts.Transport, opts.Pressure, opts.Logger = h.transport, h.pressure, h.logger
	rt := &router{listener: opts.Listener, log: opts.AccessLog, fast: !opts.ReverseProxyOnly && !reverseProxyOnly,
		noRoute: opts.Metrics.Route(opts.Listener, NoRouteLabel, ""), conns: opts.Metrics.Listener(opts.Listener, "http")}
	if opts.HSTSMaxAge > 0 {
		rt.hsts = []string{"max-age=" + strconv.FormatInt(int64(opts.HSTSMaxAge/time.Second), 10)}
	}
	if opts.RedirectHTTPS {
		rt.redirect = true
		if opts.HTTPSPort > 0 && opts.HTTPSPort != DefaultHTTPSPort {
			rt.httpsPort = ":" + strconv.Itoa(opts.HTTPSPort)
		}
		rt.redirects = opts.Metrics.Route(opts.Listener, RedirectLabel, "")
		h.table.Store(rt)
		return
	}
	fwd := &forwarding{trusted: opts.TrustedProxies}
	// One ReverseProxy per route, so that its metrics children are at hand.
	for _, r := range opts.Routes {
		label := r.Label
		if label == "" {
			label = RouteLabel(r.Host, r.PathPrefix)
		}
		sp := newServiceProxy(r.Service, &opts, h.buffers, h.errLog, fwd, opts.Metrics.Route(opts.Listener, label, r.Service.Name),
			rt.conns, r.MaxBodyBytes, rt.hsts)
		rt.routes = append(rt.routes, route{host: strings.ToLower(r.Host), prefix: r.PathPrefix, svc: sp})
	}
	sort.SliceStable(rt.routes, func(i, j int) bool {
		a, b := rt.routes[i], rt.routes[j]
		if len(a.prefix) != len(b.prefix) {
			return len(a.prefix) > len(b.prefix)
		}
		return a.host != "" && b.host == ""
	})
	h.table.Store(rt)
}

// ServeHTTP serves r on the current routing table.
func (h *HTTPHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.table.Load().ServeHTTP(w, r)
}

// LimitHit counts a hit of limit (a metrics.Limit* constant) on the
// listener of the current table, for the server in front of the handler
// (max_connections, max_header_bytes, max_concurrent_streams). It takes no
// lock and does not allocate; without Metrics it counts nothing.
func (h *HTTPHandler) LimitHit(limit string) {
	h.table.Load().conns.LimitHit(limit)
}

type route struct {
	host   string
	prefix string
	svc    *serviceProxy
}

// router is one routing table, immutable once published; routes are
// sorted so that the first match is the best.
type router struct {
	listener string
	fast     bool // fastEligible requests bypass ReverseProxy (serveFast)
	routes   []route
	log      *AccessLog
	noRoute  *metrics.Route    // nil-safe
	conns    *metrics.Listener // open connections gauge; nil-safe
	// hsts is the Strict-Transport-Security value for answers over TLS
	// (len == cap, shared: an append copies); nil: none.
	hsts []string
	// redirect answers every request with a redirect to https://, on
	// httpsPort (":8443", or "" for 443), counted in redirects.
	redirect  bool
	httpsPort string
	redirects *metrics.Route // nil-safe
}

func (h *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.redirect {
		h.redirectHTTPS(w, r)
		return
	}
	host := requestHost(r.Host)
	for i := range h.routes {
		rt := &h.routes[i]
		if (rt.host == "" || strings.EqualFold(rt.host, host)) && strings.HasPrefix(r.URL.Path, rt.prefix) {
			if wt, ok := w.(h1.WriteThrough); ok {
				wt.SetWriteThrough(true)
				if h.fast && fastEligible(r) {
					rt.svc.serveFast(w, r)
					return
				}
				rt.svc.rpThrough.ServeHTTP(w, r)
				return
			}
			rt.svc.rp.ServeHTTP(w, r)
			return
		}
	}
	start := time.Now()
	if h.hsts != nil && r.TLS != nil {
		w.Header()["Strict-Transport-Security"] = h.hsts
	}
	writeJSONError(w, http.StatusNotFound, "no route", "")
	h.noRoute.Observe(http.StatusNotFound, time.Since(start))
	if h.log != nil {
		h.log.write(&logEntry{listener: h.listener, client: r.RemoteAddr, method: r.Method, path: r.URL.Path,
			status: http.StatusNotFound, start: start})
	}
}

// requestHost strips the port from a Host header without allocating.
func requestHost(hostport string) string {
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.Contains(hostport[i:], "]") {
		return hostport[:i]
	}
	return hostport
}

// serviceProxy forwards one route's requests to its service. The
// ReverseProxy's transport does the picking, so failover can re-pick
// without re-running the handler.
type serviceProxy struct {
	rp *httputil.ReverseProxy
	// rpThrough is rp for writers that send each Write as it comes
	// (h1.WriteThrough): it does not flush after each Write, which would
	// send an answer's head in a write of its own (and, with a negative
	// FlushInterval, from a timer goroutine started for every answer).
	// Its FlushInterval is headFlushDelay: the head of an answer whose
	// body is late still goes out then.
	rpThrough *httputil.ReverseProxy
	// The fast path's (serveFast): rp's transport, forwarding rules,
	// HSTS value and copy buffers.
	bt      *balancingTransport
	fwd     *forwarding
	hsts    []string
	buffers *bufferPool
}

// headFlushDelay is how long the head of an answer with a Content-Length
// waits for the body's first bytes (to go out in one write with them)
// before it is sent alone, on HTTP/1.1: a body that an instance holds back
// (a long poll, a file still being made) does not hold back the head. Its
// timer is stopped, never run, when the answer is done sooner.
const headFlushDelay = 5 * time.Millisecond

func newServiceProxy(svc ServiceOptions, opts *HTTPOptions, buffers *bufferPool, errLog *log.Logger, fwd *forwarding, rm *metrics.Route,
	lm *metrics.Listener, maxBody int64, hsts []string) *serviceProxy {
	attempts := svc.Attempts
	if attempts <= 0 {
		attempts = DefaultAttempts
	}
	attempts = min(attempts, balance.MaxTries)
	limits := TryLimits{Header: svc.ResponseHeaderTimeout, Write: svc.ResponseHeaderTimeout, Body: svc.ResponseBodyTimeout}
	if svc.PerTryTimeout > 0 && svc.PerTryTimeout < limits.header() {
		limits.Header = svc.PerTryTimeout
	}
	bt := &balancingTransport{
		listener: opts.Listener, service: svc.Name, pool: svc.Pool, up: opts.Transport,
		attempts: attempts, limits: limits, maxReplay: opts.MaxReplayBody, fwd: fwd, pressure: opts.Pressure,
		cookie: svc.StickyCookie, header: http.CanonicalHeaderKey(svc.StickyHeader), log: opts.AccessLog,
		route: rm, svcm: opts.Metrics.Service(svc.Name), tls: svc.TLS, maxBody: maxBody, intentions: svc.Intentions,
	}
	scheme := "http"
	if svc.TLS != nil {
		scheme = "https"
	}
	logger := opts.Logger
	sp := &serviceProxy{bt: bt, fwd: fwd, hsts: hsts, buffers: buffers}
	var modify func(*http.Response) error
	if hsts != nil {
		modify = func(resp *http.Response) error {
			if resp.Request != nil && resp.Request.TLS != nil {
				resp.Header["Strict-Transport-Security"] = hsts
			}
			return nil
		}
	}
	sp.rp = &httputil.ReverseProxy{
		ModifyResponse: modify,
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The instance is chosen in the transport; the Host header
			// the client sent is passed through unchanged.
			pr.Out.URL.Scheme = scheme
			pr.Out.URL.Host = svc.Name
			pr.Out.Host = pr.In.Host
			fwd.set(pr)
		},
		Transport:  bt,
		BufferPool: buffers,
		// Bytes go to the client as they come from the instance; a small
		// answer read in one piece is still one write.
		FlushInterval: -1,
		ErrorLog:      errLog,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			status := http.StatusBadGateway
			abort := false
			var ce *clientError
			var de *DenialError
			if hsts != nil && r.TLS != nil {
				w.Header()["Strict-Transport-Security"] = hsts
			}
			switch {
			case errors.Is(err, balance.ErrNoEndpoint):
				status = http.StatusServiceUnavailable
				writeJSONError(w, status, "no eligible instance", svc.Name)
			case errors.Is(err, errExhausted):
				status = http.StatusServiceUnavailable
				w.Header().Set("Retry-After", "1")
				writeJSONError(w, status, "proxy out of resources", svc.Name)
			case r.Context().Err() != nil:
				// The client went away: nobody reads an answer. 499 is
				// for the access log only.
				status, abort = 499, true
			case errors.As(err, &de):
				status = http.StatusForbidden
				writeDenial(w, de, svc.Name)
			case errors.As(err, &ce):
				// The server closes an HTTP/1.1 connection whose body
				// failed (its answer says so); on h2 only this stream
				// failed.
				status = ce.status()
				if status == http.StatusRequestEntityTooLarge {
					lm.LimitHit(metrics.LimitMaxBodyBytes)
				}
				writeJSONError(w, status, ce.reason(), svc.Name)
			default:
				logger.Debug("upstream failed", "service", svc.Name, "error", err)
				writeJSONError(w, status, "upstream failed", svc.Name)
			}
			if bt.log != nil || bt.route != nil {
				e := logEntry{listener: bt.listener, service: svc.Name, client: r.RemoteAddr, method: r.Method,
					path: r.URL.Path, status: status, start: time.Now()}
				var ue *upstreamError
				switch {
				case errors.As(err, &ue):
					e.instance, e.attempts, e.start = ue.instance, ue.attempts, ue.start
				case ce != nil && !ce.start.IsZero():
					e.start = ce.start
				}
				bt.route.Observe(status, time.Since(e.start))
				if bt.log != nil {
					bt.log.write(&e)
				}
			}
			if abort {
				// Drops the connection (HTTP/1.1) or resets the stream (h2).
				panic(http.ErrAbortHandler)
			}
		},
	}
	through := *sp.rp
	through.FlushInterval = headFlushDelay
	sp.rpThrough = &through
	return sp
}

// balancingTransport picks an instance for each outgoing request and fails
// over to instances not yet tried, up to attempts in all. Every failure is
// blamed on one side:
//   - the client's: its request body is malformed, incomplete or stalls
//     (400 or 408), or it went away (nothing is written). The instance is
//     not judged and nothing is retried.
//   - the instance's: a connection that could not be made (nothing was
//     sent) is always retried; an error after the request may have been
//     sent, a timeout awaiting the headers, or a 502, 503 or 504 answer is
//     retried only for idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT,
//     DELETE) whose body can be replayed (none, or buffered up to
//     maxReplay); an answer whose body breaks or stalls is aborted. All of
//     these, and 5xx answers, are failures for passive ejection.
type balancingTransport struct {
	listener  string
	service   string
	pool      *balance.Pool
	up        *Upstream
	attempts  int
	limits    TryLimits
	maxReplay int64
	fwd       *forwarding
	pressure  *Pressure
	cookie    string // sticky cookie name, or ""
	header    string // canonical sticky header name, or ""
	log       *AccessLog
	route     *metrics.Route   // nil-safe
	svcm      *metrics.Service // nil-safe
	tls       *tls.Config      // to the instances; nil: plain
	maxBody   int64            // request body limit; 0: none
	// intentions tells denials from instance failures; nil: none.
	intentions Intentions
}

// errStatus marks a 5xx answer as a failure of the instance.
var errStatus = errors.New("upstream answered 5xx")

// errExhausted marks a request that sluice could not forward because it
// ran out of its own resources (file descriptors, ports).
var errExhausted = errors.New("sluice is out of local resources")

// errBodyTooLarge is a request body beyond its route's MaxBodyBytes.
var errBodyTooLarge = &h1.Error{Status: http.StatusRequestEntityTooLarge, Reason: "request body too large"}

// clientError is a request that failed on the client's account: its body
// could not be read, or is too large.
type clientError struct {
	err   error
	start time.Time
}

func (e *clientError) Error() string { return "client request body: " + e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// status is the answer to the client: the h1 server's (400, 408), else 400.
func (e *clientError) status() int {
	var he *h1.Error
	if errors.As(e.err, &he) {
		return he.Status
	}
	return http.StatusBadRequest
}

func (e *clientError) reason() string {
	var he *h1.Error
	if errors.As(e.err, &he) {
		return he.Reason
	}
	return "malformed request body"
}

// upstreamError is what RoundTrip returns when it gives up: the last
// failure with the instance and the number of tries.
type upstreamError struct {
	err      error
	instance string
	attempts int
	start    time.Time
}

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// withBody is the copy of a request with a body that each try sends
// with its own body (RoundTrip never modifies the request it was given).
// It is not recycled.
type withBody struct {
	out    http.Request
	replay replayBody // a buffered body, replayed per try
	client clientBody // a streamed body
}

// RoundTrip forwards req; see balancingTransport. It does not modify req:
// a try aims at the instance's address through Upstream.Try's addr, and a
// request with a body sends a shallow copy with its own body. It allocates
// the response body wrapper (doneBody, not recycled, so a body closed
// twice never touches another request's state); a request with a body
// also its copy and, when replayable, its buffer; a failure its error.
func (t *balancingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var start time.Time // only the access log and metrics need it
	if t.log != nil || t.route != nil {
		start = time.Now()
	}
	if t.maxBody > 0 && req.ContentLength > t.maxBody {
		return nil, &clientError{err: errBodyTooLarge, start: start}
	}
	var info balance.PickInfo
	info.Client = t.fwd.client(req)
	switch {
	case t.cookie != "":
		info.Key = cookieValue(req.Header["Cookie"], t.cookie)
	case t.header != "":
		if v := req.Header[t.header]; len(v) > 0 {
			info.Key = v[0]
		}
	}
	idempotent := isIdempotent(req.Method)
	replayable := req.Body == nil || req.Body == http.NoBody
	var cb *clientBody
	var body []byte
	var x *withBody
	send := req // what each try sends
	if !replayable {
		x = &withBody{out: *req}
		send = &x.out
		if idempotent && req.ContentLength > 0 && req.ContentLength <= t.maxReplay {
			body = make([]byte, req.ContentLength)
			if _, err := io.ReadFull(req.Body, body); err != nil {
				return nil, &clientError{err: err, start: start}
			}
			replayable = true
		} else {
			// The transport closes the body when a dial fails; clientBody
			// keeps it open for the next try, tells whether any of it was
			// read and keeps the client's read error for the blame.
			cb = &x.client
			cb.ReadCloser = req.Body
			cb.left = t.maxBody
			if cb.left <= 0 {
				cb.left = -1
			}
		}
	}
	var last *upstreamError
	for attempt := 1; ; attempt++ {
		res, err := t.pool.Load().Picker.Pick(info)
		if err != nil {
			if last != nil {
				return nil, last
			}
			return nil, &upstreamError{err: err, attempts: attempt - 1, start: start}
		}
		ep := res.Endpoint
		if attempt > 1 {
			t.svcm.Retried()
		}
		switch {
		case body != nil:
			x.replay.Reset(body)
			x.out.Body = &x.replay
		case cb != nil:
			x.out.Body = cb
		}
		resp, err := t.up.TryTLS(send, ep.Addr, t.tls, t.limits)
		if err != nil {
			if cb != nil && cb.err != nil {
				res.Cancel() // the client's body failed: not the instance's fault
				return nil, &clientError{err: cb.err, start: start}
			}
			if req.Context().Err() != nil {
				res.Cancel() // the client went away
				return nil, &upstreamError{err: err, instance: ep.ID, attempts: attempt, start: start}
			}
			if t.pressure.Report(t.listener, err) {
				// sluice is out of descriptors or ports: not the
				// instance's fault, and another would fail alike.
				res.Cancel()
				return nil, &upstreamError{err: fmt.Errorf("%w: %w", errExhausted, err), instance: ep.ID, attempts: attempt, start: start}
			}
			if d := denied(req.Context(), t.intentions, err); d != nil {
				res.Cancel() // the mesh refused sluice: not the instance's fault
				return nil, &upstreamError{err: d, instance: ep.ID, attempts: attempt, start: start}
			}
			blame(res, err)
			last = &upstreamError{err: err, instance: ep.ID, attempts: attempt, start: start}
			dialed := !isDialError(err) || (cb != nil && cb.read)
			if attempt >= t.attempts || (dialed && !(idempotent && replayable)) {
				return nil, last
			}
			info.Tried.Add(ep)
			continue
		}
		t.pressure.Report(t.listener, nil)
		res.Responded()
		failed := resp.StatusCode >= 500
		if retryStatus(resp.StatusCode) && idempotent && replayable && attempt < t.attempts {
			info.Tried.Add(ep)
			if hasUntried(t.pool.Load().Eligible, &info.Tried) && req.Context().Err() == nil {
				// Another instance is there to try: drop this answer,
				// draining a short body so the connection can be reused.
				if resp.ContentLength >= 0 && resp.ContentLength <= 4<<10 {
					io.Copy(io.Discard, resp.Body)
				}
				resp.Body.Close()
				blame(res, errStatus)
				last = &upstreamError{err: fmt.Errorf("status %d", resp.StatusCode), instance: ep.ID, attempts: attempt, start: start}
				continue
			}
		}
		if res.SetCookie != nil {
			if prev := resp.Header["Set-Cookie"]; prev == nil {
				resp.Header["Set-Cookie"] = res.SetCookie // shared, len == cap: an append copies
			} else {
				resp.Header["Set-Cookie"] = append(prev, res.SetCookie[0])
			}
		}
		entry := logEntry{listener: t.listener, service: t.service, instance: ep.ID, client: req.RemoteAddr,
			method: req.Method, path: req.URL.Path, status: resp.StatusCode, start: start, attempts: attempt}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// The upgraded connection is not counted as in flight.
			res.Done(nil)
			t.route.Observe(resp.StatusCode, time.Since(start))
			if t.log != nil {
				t.log.write(&entry)
			}
			return resp, nil
		}
		db := &doneBody{}
		db.ReadCloser, db.res, db.failed, db.ctx, db.owner = resp.Body, res, failed, req.Context(), t
		db.entry = entry
		resp.Body = db
		return resp, nil
	}
}

// hasUntried reports whether eps holds an instance not in tried.
func hasUntried(eps []*balance.Endpoint, tried *balance.Tried) bool {
	for _, ep := range eps {
		if !tried.Has(ep) {
			return true
		}
	}
	return false
}

// isIdempotent reports whether a request with method may be sent twice.
func isIdempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// retryStatus reports whether an answer is worth another instance.
func retryStatus(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

// cookieValue returns the value of the first cookie called name in Cookie
// header lines, without allocating; "" when absent.
func cookieValue(lines []string, name string) string {
	for _, line := range lines {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			if k, v, ok := strings.Cut(part, "="); ok && k == name {
				return strings.Trim(v, `"`)
			}
		}
	}
	return ""
}

// blame ends a pick with the instance's failure err, counting it by kind.
func blame(res balance.PickResult, err error) {
	res.Endpoint.Stats.CountError(errorKind(err))
	res.Done(err)
}

// errorKind classifies an instance's failure: a 5xx answer (errStatus), a
// failed dial (connect, whatever the cause), a timeout (a deadline or a
// timeout net.Error), a malformed answer (protocol), else a connection
// that broke (reset).
func errorKind(err error) balance.ErrorKind {
	var ne net.Error
	var pe textproto.ProtocolError
	var we *wire.Error
	switch {
	case errors.Is(err, errStatus):
		return balance.ErrorStatus
	case isDialError(err):
		return balance.ErrorConnect
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return balance.ErrorTimeout
	case errors.Is(err, errBadStatus), errors.Is(err, errUnaskedUpgrade), errors.Is(err, errTooManyInterim),
		errors.Is(err, errHeaderTooLarge), errors.As(err, &pe), errors.As(err, &we),
		// net/http's framing errors are not exported types.
		strings.Contains(err.Error(), "malformed"):
		return balance.ErrorProtocol
	}
	return balance.ErrorReset
}

// isDialError reports whether err is a failure to connect, so that nothing
// of the request reached the instance.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// clientBody lets a request body survive a failed dial (Close is a no-op:
// the server closes the inbound body when the handler returns), records
// whether any of it was read, enforces the route's body limit, and keeps
// the first read error: a failure of the client, not of the instance.
type clientBody struct {
	io.ReadCloser
	read bool
	left int64 // bytes the limit still allows; negative: no limit
	err  error
}

func (g *clientBody) Read(p []byte) (int, error) {
	g.read = true
	if g.err != nil {
		return 0, g.err
	}
	if g.left >= 0 && int64(len(p)) > g.left {
		// One byte beyond the limit tells a body that ends at it from
		// one that goes on.
		p = p[:g.left+1]
	}
	n, err := g.ReadCloser.Read(p)
	if g.left >= 0 {
		if int64(n) > g.left {
			g.err = errBodyTooLarge
			return 0, g.err
		}
		g.left -= int64(n)
	}
	if err != nil && err != io.EOF && g.err == nil {
		g.err = err
	}
	return n, err
}

func (g *clientBody) Close() error { return nil }

// replayBody is a buffered request body, rewound for each try.
type replayBody struct{ bytes.Reader }

func (*replayBody) Close() error { return nil }

// doneBody ends the pick when the response body is closed, and writes the
// access log line. A read error (the answer broke or stalled) is the
// instance's failure unless the client had gone. Close is idempotent: the
// first one ends the pick, later ones do nothing. Read and Close are for
// one goroutine at a time, as for any response body.
type doneBody struct {
	io.ReadCloser
	res     balance.PickResult
	failed  bool            // a 5xx answer: a failure for passive ejection
	readErr error           // the first error reading the answer's body
	ctx     context.Context // the request's
	owner   *balancingTransport
	entry   logEntry
	closed  atomic.Bool
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.entry.bytes += int64(n)
	if err != nil && err != io.EOF && b.readErr == nil {
		b.readErr = err
	}
	return n, err
}

// whole is the body's whole (see upBody.whole); false for other bodies.
func (b *doneBody) whole() bool {
	ub, ok := b.ReadCloser.(*upBody)
	return ok && ub.whole()
}

func (b *doneBody) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := b.ReadCloser.Close()
	switch {
	case b.readErr != nil && b.ctx.Err() != nil:
		b.res.Cancel() // the client went away mid-answer
	case b.readErr != nil:
		blame(b.res, b.readErr)
	case b.failed:
		blame(b.res, errStatus)
	default:
		b.res.Done(nil)
	}
	b.owner.route.Observe(b.entry.status, time.Since(b.entry.start))
	if b.owner.log != nil {
		b.owner.log.write(&b.entry)
	}
	return err
}

// bufferPool recycles the 32 KiB copy buffers of ReverseProxy.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// writeJSONError writes {"error": msg, "service": service} with its length.
func writeJSONError(w http.ResponseWriter, code int, msg, service string) {
	body, _ := json.Marshal(struct {
		Error   string `json:"error"`
		Service string `json:"service,omitempty"`
	}{msg, service})
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body)
}
