package proxy

import (
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// reverseProxyOnly is HTTPOptions.ReverseProxyOnly for every handler
// built while it is set; the package's tests set it once, before any
// handler is built, to run on the ReverseProxy path
// (SLUICE_NO_FASTPATH=1). Never written at run time.
var reverseProxyOnly bool

// fastEligible reports whether r takes the fast path: an HTTP/1.1 GET or
// HEAD without a body, without hop-by-hop or Expect fields, whose query
// ReverseProxy would pass unchanged. Everything else goes through
// httputil.ReverseProxy.
func fastEligible(r *http.Request) bool {
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 || (r.Method != http.MethodGet && r.Method != http.MethodHead) ||
		r.ContentLength != 0 || (r.Body != nil && r.Body != http.NoBody) {
		return false
	}
	for _, k := range hopHeaders {
		if _, ok := r.Header[k]; ok {
			return false
		}
	}
	if _, ok := r.Header["Expect"]; ok {
		return false
	}
	return plainQuery(r.URL.RawQuery)
}

// hopHeaders are the hop-by-hop fields, as httputil.ReverseProxy removes them.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// plainQuery reports whether ReverseProxy would forward q unchanged: no ';',
// every '%' escape complete, at most 10000 parameters.
func plainQuery(q string) bool {
	if strings.Count(q, "&") >= 10000 {
		return false
	}
	for i := 0; i < len(q); i++ {
		switch q[i] {
		case ';':
			return false
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// emptyUA keeps the upstream request free of Go's default User-Agent
// (len == cap, shared: an append copies).
var emptyUA = []string{""}

// serveFast forwards an eligible request (see fastEligible) as rp would,
// without ReverseProxy: the same transport, error handler, header rules and
// copying. w is the h1 server's write-through writer. r's header is
// rewritten in place (the handler owns it).
func (sp *serviceProxy) serveFast(w http.ResponseWriter, r *http.Request) {
	sp.fwd.setHeader(r, r.Header)
	if _, ok := r.Header["User-Agent"]; !ok {
		r.Header["User-Agent"] = emptyUA
	}
	// Interim answers are passed on as ReverseProxy does; the hook runs on
	// this goroutine (Upstream reads on the caller's).
	out := r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, header textproto.MIMEHeader) error {
			h := w.Header()
			for k, vv := range header {
				h[k] = append(h[k], vv...)
			}
			w.WriteHeader(code)
			clear(h)
			return nil
		},
	}))
	resp, err := sp.bt.RoundTrip(out)
	if err != nil {
		sp.rp.ErrorHandler(w, out, err)
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body.Close()
		sp.rp.ErrorHandler(w, out, errUnaskedUpgrade)
		return
	}
	removeHop(resp.Header)
	if sp.hsts != nil && r.TLS != nil {
		resp.Header["Strict-Transport-Security"] = sp.hsts
	}
	dst := w.Header()
	for k, vv := range resp.Header {
		if prev := dst[k]; prev != nil {
			dst[k] = append(prev, vv...)
		} else {
			dst[k] = vv
		}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	latency := headFlushDelay
	if resp.ContentLength == -1 || isEventStream(resp.Header) {
		latency = -1
	}
	if err := sp.copyBody(w, resp, latency); err != nil {
		defer resp.Body.Close()
		if r.Context().Value(http.ServerContextKey) != nil {
			panic(http.ErrAbortHandler)
		}
		return
	}
	resp.Body.Close()
	if len(resp.Trailer) > 0 {
		http.NewResponseController(w).Flush()
	}
	if len(resp.Trailer) == announced {
		for k, vv := range resp.Trailer {
			dst[k] = append(dst[k], vv...)
		}
		return
	}
	for k, vv := range resp.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

func isEventStream(h http.Header) bool {
	v := h["Content-Type"]
	if len(v) == 0 {
		return false
	}
	mt, _, _ := strings.Cut(v[0], ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// removeHop removes the hop-by-hop fields of h and those its Connection
// field names.
func removeHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				delete(h, http.CanonicalHeaderKey(sf))
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// copyBody copies resp's body to w as ReverseProxy's copyResponse does:
// latency < 0 flushes after each write; otherwise the head and any unsent
// bytes go out at latency after the last write, except for a body whose
// bytes are all in the upstream read buffer (upBody.whole): its writes end
// the answer before any wait, so it runs no timer.
func (sp *serviceProxy) copyBody(w http.ResponseWriter, resp *http.Response, latency time.Duration) error {
	if resp.Body == http.NoBody {
		return nil
	}
	buf := sp.buffers.Get()
	defer sp.buffers.Put(buf)
	var dst io.Writer = w
	if db, ok := resp.Body.(*doneBody); !ok || latency < 0 || !db.whole() {
		// A copy that may wait on the instance: flushes as ReverseProxy
		// does. One whose bytes are all here cannot wait, so needs no timer.
		lw := &latencyWriter{dst: w, latency: latency}
		lw.flushPending = true
		lw.t = time.AfterFunc(latency, lw.delayedFlush)
		defer lw.stop()
		dst = lw
	}
	for {
		nr, rerr := resp.Body.Read(buf)
		if nr > 0 {
			if _, werr := dst.Write(buf[:nr]); werr != nil {
				return werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}

// latencyWriter is httputil's maxLatencyWriter.
type latencyWriter struct {
	dst          http.ResponseWriter
	latency      time.Duration
	mu           sync.Mutex // protects t, flushPending and dst's Flush
	t            *time.Timer
	flushPending bool
}

func (m *latencyWriter) flush() {
	if f, ok := m.dst.(http.Flusher); ok {
		f.Flush()
	}
}

func (m *latencyWriter) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.dst.Write(p)
	if m.latency < 0 {
		m.flush()
		return n, err
	}
	if m.flushPending {
		return n, err
	}
	if m.t == nil {
		m.t = time.AfterFunc(m.latency, m.delayedFlush)
	} else {
		m.t.Reset(m.latency)
	}
	m.flushPending = true
	return n, err
}

func (m *latencyWriter) delayedFlush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.flushPending {
		return
	}
	m.flush()
	m.flushPending = false
}

func (m *latencyWriter) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushPending = false
	if m.t != nil {
		m.t.Stop()
	}
}
