// Package proxy forwards HTTP requests and TCP connections to the instances
// that the balance pools pick, retrying connection failures on other
// instances.
package proxy

import (
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
)

// Route sends requests whose host and path match to a service's pool.
type Route struct {
	Host       string // lowercase host without port; "" matches any host
	PathPrefix string // plain string prefix of the URL path, starting with "/"
	Service    ServiceOptions
}

// ServiceOptions is the forwarding policy of one service.
type ServiceOptions struct {
	Name string
	Pool *balance.Pool
	// Attempts is the number of instances a request may try, the first
	// included; default 2, at most balance.MaxTries. A further instance is
	// tried only after a connection failure that sent nothing upstream.
	Attempts int
	// StickyCookie or StickyHeader names where the affinity key of a
	// sticky service is read (at most one is set; see balance.StickyOptions).
	StickyCookie string
	StickyHeader string
}

// HTTPOptions configure an HTTP handler.
type HTTPOptions struct {
	Routes []Route
	// Transport carries requests upstream; default NewTransport().
	Transport http.RoundTripper
	// Logger receives upstream errors at Debug; nothing is logged per
	// request at the default Info level.
	Logger hclog.Logger
}

// NewTransport returns the upstream transport sluice uses by default:
// keep-alive pools of up to 256 idle connections per instance, 5s dial
// timeout, 90s idle timeout, no proxy from the environment and no
// transparent compression (bodies pass through as the backend sent them).
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
}

// NewHTTPHandler returns a handler that routes each request by host and path
// prefix (longest prefix wins; at equal length a route naming the host wins
// over one for any host) and forwards it to an instance of the route's
// service. Unrouted requests get 404, a service with no eligible instance
// 503, and a request whose every attempt failed 502, each with a JSON body.
func NewHTTPHandler(opts HTTPOptions) http.Handler {
	if opts.Transport == nil {
		opts.Transport = NewTransport()
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	errLog := opts.Logger.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})
	buffers := &bufferPool{}
	bySvc := map[string]*serviceProxy{}
	h := &router{}
	for _, r := range opts.Routes {
		sp := bySvc[r.Service.Name]
		if sp == nil {
			sp = newServiceProxy(r.Service, opts.Transport, buffers, errLog, opts.Logger)
			bySvc[r.Service.Name] = sp
		}
		h.routes = append(h.routes, route{host: strings.ToLower(r.Host), prefix: r.PathPrefix, svc: sp})
	}
	sort.SliceStable(h.routes, func(i, j int) bool {
		a, b := h.routes[i], h.routes[j]
		if len(a.prefix) != len(b.prefix) {
			return len(a.prefix) > len(b.prefix)
		}
		return a.host != "" && b.host == ""
	})
	return h
}

type route struct {
	host   string
	prefix string
	svc    *serviceProxy
}

// router is immutable after NewHTTPHandler; routes are sorted so that the
// first match is the best.
type router struct {
	routes []route
}

func (h *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := requestHost(r.Host)
	for i := range h.routes {
		rt := &h.routes[i]
		if (rt.host == "" || strings.EqualFold(rt.host, host)) && strings.HasPrefix(r.URL.Path, rt.prefix) {
			rt.svc.rp.ServeHTTP(w, r)
			return
		}
	}
	writeJSONError(w, http.StatusNotFound, "no route", "")
}

// requestHost strips the port from a Host header without allocating.
func requestHost(hostport string) string {
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.Contains(hostport[i:], "]") {
		return hostport[:i]
	}
	return hostport
}

// serviceProxy forwards to one service. The ReverseProxy's transport does
// the picking, so failover can re-pick without re-running the handler.
type serviceProxy struct {
	name string
	rp   *httputil.ReverseProxy
}

func newServiceProxy(svc ServiceOptions, base http.RoundTripper, buffers *bufferPool, errLog *log.Logger, logger hclog.Logger) *serviceProxy {
	attempts := svc.Attempts
	if attempts <= 0 {
		attempts = 2
	}
	attempts = min(attempts, balance.MaxTries)
	bt := &balancingTransport{service: svc.Name, pool: svc.Pool, base: base, attempts: attempts,
		cookie: svc.StickyCookie, header: http.CanonicalHeaderKey(svc.StickyHeader)}
	bt.bodies.New = func() any { return &doneBody{} }
	sp := &serviceProxy{name: svc.Name}
	sp.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The instance is chosen in the transport; the Host header
			// the client sent is passed through unchanged.
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = svc.Name
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:  bt,
		BufferPool: buffers,
		ErrorLog:   errLog,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, balance.ErrNoEndpoint) {
				writeJSONError(w, http.StatusServiceUnavailable, "no eligible instance", svc.Name)
				return
			}
			if r.Context().Err() != nil {
				// The client went away; nobody reads an answer.
				w.WriteHeader(499)
				return
			}
			logger.Debug("upstream failed", "service", svc.Name, "error", err)
			writeJSONError(w, http.StatusBadGateway, "upstream failed", svc.Name)
		},
	}
	return sp
}

// balancingTransport picks an instance for each outgoing request and, when
// the connection to it fails before anything was sent, tries another
// instance not yet tried, up to attempts in all.
type balancingTransport struct {
	service  string
	pool     *balance.Pool
	base     http.RoundTripper
	attempts int
	cookie   string    // sticky cookie name, or ""
	header   string    // canonical sticky header name, or ""
	bodies   sync.Pool // of *doneBody
}

func (t *balancingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var info balance.PickInfo
	if ap, err := netip.ParseAddrPort(req.RemoteAddr); err == nil {
		info.Client = ap.Addr().Unmap()
	}
	switch {
	case t.cookie != "":
		info.Key = cookieValue(req.Header["Cookie"], t.cookie)
	case t.header != "":
		if v := req.Header[t.header]; len(v) > 0 {
			info.Key = v[0]
		}
	}
	var body *replayGuard
	if req.Body != nil && req.Body != http.NoBody {
		// The transport closes the body when a dial fails; the guard keeps
		// it open for the next attempt and tells whether any of it was read.
		body = &replayGuard{ReadCloser: req.Body}
		req.Body = body
	}
	var lastErr error
	for attempt := 0; attempt < t.attempts; attempt++ {
		res, err := t.pool.Load().Picker.Pick(info)
		if err != nil {
			if lastErr != nil {
				return nil, lastErr
			}
			return nil, err
		}
		req.URL.Host = res.Endpoint.Addr
		resp, err := t.base.RoundTrip(req)
		if err == nil {
			if res.SetCookie != nil {
				if prev := resp.Header["Set-Cookie"]; prev == nil {
					resp.Header["Set-Cookie"] = res.SetCookie // shared, len == cap: an append copies
				} else {
					resp.Header["Set-Cookie"] = append(prev, res.SetCookie[0])
				}
			}
			if resp.StatusCode == http.StatusSwitchingProtocols {
				// The upgraded connection is not counted as in flight.
				res.Done(nil)
				return resp, nil
			}
			db := t.bodies.Get().(*doneBody)
			db.ReadCloser, db.res, db.owner = resp.Body, res, t
			resp.Body = db
			return resp, nil
		}
		if req.Context().Err() != nil {
			res.Done(nil) // the client cancelled: not the instance's fault
			return nil, err
		}
		res.Done(err)
		lastErr = err
		if !isDialError(err) || (body != nil && body.read) {
			return nil, err
		}
		info.Tried.Add(res.Endpoint)
	}
	return nil, lastErr
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

// isDialError reports whether err is a failure to connect, so that nothing
// of the request reached the instance.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// replayGuard lets a request body survive a failed dial. Close is a no-op:
// the server closes the inbound body when the handler returns.
type replayGuard struct {
	io.ReadCloser
	read bool
}

func (g *replayGuard) Read(p []byte) (int, error) {
	g.read = true
	return g.ReadCloser.Read(p)
}

func (g *replayGuard) Close() error { return nil }

// doneBody ends the pick when ReverseProxy closes the response body, which
// it always does. It is recycled through the transport's pool.
type doneBody struct {
	io.ReadCloser
	res   balance.PickResult
	owner *balancingTransport
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.res.Done(nil)
	owner := b.owner
	*b = doneBody{}
	owner.bodies.Put(b)
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

// writeJSONError writes {"error": msg, "service": service}.
func writeJSONError(w http.ResponseWriter, code int, msg, service string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	body := struct {
		Error   string `json:"error"`
		Service string `json:"service,omitempty"`
	}{msg, service}
	_ = json.NewEncoder(w).Encode(body)
}
