package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-lb/sluice/proxy/internal/wire"
)

// Upstream is sluice's HTTP/1.1 client to its backends: an
// http.RoundTripper that writes the request and reads the answer on the
// calling goroutine over pooled keep-alive connections. Framing is the
// standard library's (Request.Write, http.ReadResponse); what it leaves
// out of http.Transport is the two goroutines per connection and the
// read-ahead that detects closed idle connections, which cost about a fifth
// of sluice's CPU per request in the bench profile.
//
// Connection integrity (the invariant that keeps one client's answer from
// reaching another): a connection goes back to the pool only when its
// answer ended exactly at the message boundary that its framing declared
// (Content-Length or the last chunk; no body for HEAD, 1xx, 204 and 304)
// with nothing more buffered, and a reused connection is written to only
// after a non-blocking read just before the write finds nothing. Anything
// else (bytes after the answer, a body on a bodiless answer, a short or
// malformed body, an answer cut by a timeout) closes the connection. The
// window that remains: bytes that an instance sends after that last check,
// while the next request is being written or answered, are read as the
// start of the next answer; an instance must never send unsolicited bytes.
//
// TLS (TryTLS): the connection is made and its handshake done within the
// dial timeout; a failed handshake is a failed dial (nothing of the request
// was sent). Idle connections are pooled by address and *tls.Config, so
// that requests under one configuration never travel on a connection made
// under another. The integrity rule holds for TLS too: a reused TLS
// connection must have nothing buffered in crypto/tls (no decrypted or
// undecrypted record, not even part of one) besides nothing on the socket;
// see tlsRaw.
//
// The zero value is not usable; use NewUpstream.
type Upstream struct {
	dialer      net.Dialer
	maxIdle     int           // idle connections kept per instance
	idleTimeout time.Duration // an idle connection older than this is closed
	defaults    TryLimits     // for RoundTrip
	defaultTLS  *tls.Config   // for RoundTrip of https:// URLs: system roots
	hosts       sync.Map      // poolKey -> *hostPool
	reaperOnce  sync.Once     // starts reap
	closed      atomic.Bool   // stops reap
	trackMu     sync.Mutex    // guards tracked and refs (Track)
	tracked     map[string]map[string]bool
	refs        map[string]int // address -> services that have it
	bufs        sync.Pool      // *upConn buffers are per connection; this pools upBody
}

// TryLimits bound one exchange with an instance. A limit that runs out is
// the instance's failure.
type TryLimits struct {
	// Header is the longest wait for the response headers once the
	// request (its body included) has been sent. 0:
	// DefaultResponseHeaderTimeout.
	Header time.Duration
	// Write is the longest a write of the request may go without the
	// instance taking a byte. 0: DefaultResponseHeaderTimeout.
	Write time.Duration
	// Body is the longest wait for a byte of the response body. 0:
	// DefaultResponseBodyTimeout.
	Body time.Duration
}

func (l TryLimits) header() time.Duration {
	if l.Header > 0 {
		return l.Header
	}
	return DefaultResponseHeaderTimeout
}

func (l TryLimits) write() time.Duration {
	if l.Write > 0 {
		return l.Write
	}
	return DefaultResponseHeaderTimeout
}

func (l TryLimits) body() time.Duration {
	if l.Body > 0 {
		return l.Body
	}
	return DefaultResponseBodyTimeout
}

// NewUpstream returns the default upstream client: 5 s to connect, the
// default TryLimits for RoundTrip, up to 256 idle connections per instance
// closed after 90 s idle.
func NewUpstream() *Upstream {
	u := &Upstream{
		dialer:      net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second},
		maxIdle:     256,
		idleTimeout: 90 * time.Second,
		defaultTLS:  &tls.Config{},
	}
	u.bufs.New = func() any { return &upBody{} }
	return u
}

var _ http.RoundTripper = (*Upstream)(nil)

// poolKey identifies a hostPool: an instance address and the TLS
// configuration its connections were made with (nil: plain TCP).
type poolKey struct {
	addr string
	tls  *tls.Config
}

// hostPool holds the idle connections to one instance under one TLS
// configuration.
type hostPool struct {
	idle chan *upConn
	// dead is set when the address left every tracked service (see
	// Track), or when reap removed an unused TLS pool: the pool is out of
	// Upstream.hosts and closes what it gets.
	dead atomic.Bool
	// emptyReaps counts the reaps in a row that found the pool empty
	// (written by reap only).
	emptyReaps int
}

// upConn is one keep-alive connection.
type upConn struct {
	net.Conn // the *tls.Conn for TLS connections
	// raw is the TCP connection (under Conn); rec is the record tracker
	// between it and crypto/tls, nil for plain connections.
	raw net.Conn
	rec *tlsRaw
	// rawConn is raw's syscall.RawConn (nil when raw has none) and
	// peekRead its Read callback, both made at dial so that alive's peek
	// allocates nothing; peekOpen is the callback's verdict.
	rawConn  syscall.RawConn
	peekRead func(fd uintptr) bool
	peekOpen bool
	br       *bufio.Reader // reads through headerLimiter
	bw       *bufio.Writer // writes through writeLimiter
	idleAt   time.Time
	// writeWait is the progress deadline of each write (TryLimits.Write);
	// 0: none (an upgraded connection).
	writeWait time.Duration
	// werr is the last error writing to the instance, to tell it from an
	// error reading the request body.
	werr error
	// cancelled is set when the request's context ended; deadlines set
	// after it stay in the past (see setReadDeadline).
	cancelled atomic.Bool
	// budget is what may still be read while response headers are read;
	// negative: no limit (bodies).
	budget int64
	// bodyWait, while an answer's body is read (budget negative), is the
	// read deadline armed before each read of the socket
	// (TryLimits.Body); 0: none (an upgraded connection).
	bodyWait time.Duration
	// peekBuf is where alive's peeks read (TLS, and the socket peek).
	peekBuf [1]byte
}

// maxResponseHeader bounds the bytes read from an instance while its
// response headers are read (1 MiB).
const maxResponseHeader = 1 << 20

// errHeaderTooLarge is returned for an answer whose headers exceed maxResponseHeader.
var errHeaderTooLarge = errors.New("upstream response headers exceed 1 MiB")

// headerLimiter is the reader under an upConn's bufio.Reader: it enforces
// the header budget, and arms the body's read deadline before each read of
// the socket. (Per socket read, not per read of the body: one read of a
// chunked body may wait on the socket more than once, for the rest of a
// chunk line and then for data, with bytes already buffered.)
type headerLimiter struct{ c *upConn }

func (l headerLimiter) Read(p []byte) (int, error) {
	c := l.c
	if c.budget < 0 {
		if c.bodyWait > 0 {
			c.setReadDeadline(time.Now().Add(c.bodyWait))
		}
		return c.Conn.Read(p)
	}
	if c.budget == 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > c.budget {
		p = p[:c.budget]
	}
	n, err := c.Conn.Read(p)
	c.budget -= int64(n)
	return n, err
}

// writeLimiter is the writer under an upConn's bufio.Writer: a write fails
// only when the instance takes no byte for writeWait. On a TLS connection
// the progress deadlines are applied under crypto/tls (tlsRaw), whose
// state a write timeout breaks for good.
type writeLimiter struct{ c *upConn }

func (w writeLimiter) Write(p []byte) (int, error) {
	c := w.c
	var n int
	var err error
	if c.rec != nil {
		n, err = c.Conn.Write(p)
	} else {
		n, err = c.writeProgress(c.Conn, p)
	}
	if err != nil {
		c.werr = err
	}
	return n, err
}

// writeProgress writes p to conn, failing only when conn takes no byte
// for c.writeWait (or the exchange was cancelled); writeWait 0: no
// deadline.
func (c *upConn) writeProgress(conn net.Conn, p []byte) (int, error) {
	if c.writeWait <= 0 {
		return conn.Write(p)
	}
	total := 0
	for {
		conn.SetWriteDeadline(time.Now().Add(c.writeWait))
		if c.cancelled.Load() {
			conn.SetWriteDeadline(pastDeadline)
		}
		n, err := conn.Write(p)
		total += n
		if err != nil && n > 0 && n < len(p) && errors.Is(err, os.ErrDeadlineExceeded) && !c.cancelled.Load() {
			p = p[n:] // slow but moving: a new deadline for the rest
			continue
		}
		return total, err
	}
}

// tlsRaw is the connection under an upstream *tls.Conn. It applies the
// write progress deadlines (see writeLimiter) and follows the TLS record
// framing of what crypto/tls reads, so that alive can tell whether
// crypto/tls holds bytes: a whole record that it has not yet processed is
// found by a Read while peeking (which returns errPeek instead of reading
// the socket), part of one by the framing position. Used by the
// connection's goroutine only, but for the peek flag, which alive sets
// on an idle connection.
type tlsRaw struct {
	net.Conn
	c       *upConn
	peeking bool
	hdr     [5]byte // the record header being read
	hlen    int     // bytes of hdr read
	need    int     // bytes of the current record's body still to come
}

// errPeek is what tlsRaw returns while peeking: a temporary timeout, so
// that crypto/tls keeps its state (and its buffered bytes) intact.
var errPeek = &peekError{}

type peekError struct{}

func (*peekError) Error() string   { return "peek: would block" }
func (*peekError) Timeout() bool   { return true }
func (*peekError) Temporary() bool { return true }

func (r *tlsRaw) Read(p []byte) (int, error) {
	if r.peeking {
		return 0, errPeek
	}
	n, err := r.Conn.Read(p)
	r.track(p[:n])
	return n, err
}

func (r *tlsRaw) Write(p []byte) (int, error) {
	if r.c == nil { // the handshake: bounded by its deadline
		return r.Conn.Write(p)
	}
	return r.c.writeProgress(r.Conn, p)
}

// track advances the record framing over bytes read.
func (r *tlsRaw) track(p []byte) {
	for len(p) > 0 {
		if r.need > 0 {
			k := min(r.need, len(p))
			r.need -= k
			p = p[k:]
			continue
		}
		k := copy(r.hdr[r.hlen:], p)
		r.hlen += k
		p = p[k:]
		if r.hlen == len(r.hdr) {
			r.need = int(r.hdr[3])<<8 | int(r.hdr[4])
			r.hlen = 0
		}
	}
}

// atBoundary reports whether what was read ends at a record's end.
func (r *tlsRaw) atBoundary() bool { return r.hlen == 0 && r.need == 0 }

// Close closes the connection. A TLS connection is closed without a
// close_notify alert, which could wait on an instance that does not read:
// a connection is closed by sluice only when it is idle, broken or given
// up, and HTTP framing, not the alert, tells where an answer ends.
func (c *upConn) Close() error {
	if c.rec != nil {
		return c.raw.Close()
	}
	return c.Conn.Close()
}

// pastDeadline interrupts any blocked read or write.
var pastDeadline = time.Unix(1, 0)

// cancel interrupts the exchange on c for good: the request's context
// ended.
func (c *upConn) cancel() {
	c.cancelled.Store(true)
	c.Conn.SetDeadline(pastDeadline)
}

// setReadDeadline sets a read deadline that a cancel, before or after,
// always overrides.
func (c *upConn) setReadDeadline(t time.Time) {
	c.Conn.SetReadDeadline(t)
	if c.cancelled.Load() {
		c.Conn.SetReadDeadline(pastDeadline)
	}
}

func (u *Upstream) pool(addr string, tc *tls.Config) *hostPool {
	key := poolKey{addr, tc}
	if hp, ok := u.hosts.Load(key); ok {
		return hp.(*hostPool)
	}
	hp, _ := u.hosts.LoadOrStore(key, &hostPool{idle: make(chan *upConn, u.maxIdle)})
	u.reaperOnce.Do(func() { time.AfterFunc(u.idleTimeout/2, u.reap) })
	return hp.(*hostPool)
}

// get returns an idle connection that is not too old, or nil.
func (u *Upstream) get(hp *hostPool) *upConn {
	for {
		select {
		case c := <-hp.idle:
			if time.Since(c.idleAt) < u.idleTimeout {
				return c
			}
			c.Close()
		default:
			return nil
		}
	}
}

// put returns a connection to its pool, or closes it when the pool is full.
func (u *Upstream) put(hp *hostPool, c *upConn) {
	c.idleAt = time.Now()
	select {
	case hp.idle <- c:
	default:
		c.Close()
	}
	if hp.dead.Load() {
		// Forgotten meanwhile: forget sets dead before it drains, so a
		// connection sent after its drain is closed here.
		drain(hp)
	}
}

// drain closes every idle connection of hp.
func drain(hp *hostPool) {
	for {
		select {
		case c := <-hp.idle:
			c.Close()
		default:
			return
		}
	}
}

// Track tells the client the instance addresses of one service (the whole
// set each time; nil when the service is gone). An address that is in no
// tracked service any more is forgotten: its idle connections are closed
// at once and its entry removed; connections in use close when their
// answers end. Addresses that were never tracked are kept (and reaped when
// idle). Track is for the pool owners, not the request path: it takes a
// lock.
func (u *Upstream) Track(service string, addrs []string) {
	u.trackMu.Lock()
	defer u.trackMu.Unlock()
	if u.tracked == nil {
		u.tracked, u.refs = map[string]map[string]bool{}, map[string]int{}
	}
	next := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		next[a] = true
	}
	prev := u.tracked[service]
	for a := range next {
		if !prev[a] {
			u.refs[a]++
		}
	}
	for a := range prev {
		if !next[a] {
			if u.refs[a]--; u.refs[a] <= 0 {
				delete(u.refs, a)
				u.forget(a)
			}
		}
	}
	if len(next) == 0 {
		delete(u.tracked, service)
	} else {
		u.tracked[service] = next
	}
}

// Forget closes the idle connections to addrs (under every TLS
// configuration) and makes those in use close when their answers end, so
// that the next request to any of them dials anew; the addresses stay
// tracked. For the pool owners and Consul watches, not the request path.
func (u *Upstream) Forget(addrs []string) {
	for _, a := range addrs {
		u.forget(a)
	}
}

// Tracked returns the addresses last given to Track for service.
func (u *Upstream) Tracked(service string) []string {
	u.trackMu.Lock()
	defer u.trackMu.Unlock()
	out := make([]string, 0, len(u.tracked[service]))
	for a := range u.tracked[service] {
		out = append(out, a)
	}
	return out
}

// forget removes addr's pools (of every TLS configuration) and closes
// their idle connections.
func (u *Upstream) forget(addr string) {
	u.hosts.Range(func(k, _ any) bool {
		if k.(poolKey).addr == addr {
			u.remove(k)
		}
		return true
	})
}

// remove takes the pool at key out of hosts and closes its idle
// connections; connections in use are closed when they come back.
func (u *Upstream) remove(key any) {
	if v, ok := u.hosts.LoadAndDelete(key); ok {
		hp := v.(*hostPool)
		hp.dead.Store(true)
		drain(hp)
	}
}

// reap closes the idle connections that have been idle for idleTimeout,
// every idleTimeout/2, so that connections to an instance nobody asks for
// any more do not stay open. A TLS pool found empty by three reaps in a
// row is removed (a reload that replaces a service's TLS configuration
// leaves the old configuration's pools unused; a connection in use when
// its pool is removed is closed when its answer ends). It runs on a timer
// from the first pool on; after Close it runs once more and stops.
func (u *Upstream) reap() {
	if u.closed.Load() {
		return
	}
	u.hosts.Range(func(k, v any) bool {
		hp := v.(*hostPool)
		if k.(poolKey).tls != nil {
			if len(hp.idle) > 0 {
				hp.emptyReaps = 0
			} else if hp.emptyReaps++; hp.emptyReaps >= 3 {
				u.remove(k)
				return true
			}
		}
		for n := len(hp.idle); n > 0; n-- {
			select {
			case c := <-hp.idle:
				if time.Since(c.idleAt) < u.idleTimeout {
					u.requeue(hp, c)
				} else {
					c.Close()
				}
			default:
				return true
			}
		}
		return true
	})
	time.AfterFunc(u.idleTimeout/2, u.reap)
}

// requeue puts back a connection that reap took, keeping its idle time.
func (u *Upstream) requeue(hp *hostPool, c *upConn) {
	select {
	case hp.idle <- c:
	default:
		c.Close()
	}
}

// Close closes every idle connection and stops the reaper; connections in
// use are closed when their answers end.
func (u *Upstream) Close() {
	u.closed.Store(true)
	u.CloseIdleConnections()
}

// CloseIdleConnections closes every idle connection.
func (u *Upstream) CloseIdleConnections() {
	u.hosts.Range(func(_, v any) bool {
		drain(v.(*hostPool))
		return true
	})
}

// dial connects to addr and, with tc, completes a TLS handshake (see
// dialTLS), all within the dial timeout and ctx.
func (u *Upstream) dial(ctx context.Context, addr string, tc *tls.Config) (*upConn, error) {
	if tc != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, u.dialer.Timeout)
		defer cancel()
	}
	nc, err := u.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &upConn{Conn: nc, raw: nc, budget: -1}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.rawConn, c.peekRead = rc, c.peekFD
		}
	}
	if tc != nil {
		c.rec = &tlsRaw{Conn: nc}
		tconn, err := handshakeTLS(ctx, c.rec, addr, tc, []string{"http/1.1"})
		if err != nil {
			return nil, err
		}
		c.Conn, c.rec.c = tconn, c
	}
	c.bw = bufio.NewWriterSize(writeLimiter{c}, 4096)
	c.br = bufio.NewReaderSize(headerLimiter{c}, 4096)
	return c, nil
}

// handshakeTLS runs the client side of a TLS handshake over nc, which it
// closes on failure, within ctx. tc is not modified: when its ServerName
// is empty the instance's host (addr without port) is used, as a browser
// would use the URL's host, and ALPN offers alpn when given. A failure is
// returned as a dial error (*net.OpError with Op "dial"): nothing was
// sent, the instance is blamed as for a refused connection and another
// may be tried.
func handshakeTLS(ctx context.Context, nc net.Conn, addr string, tc *tls.Config, alpn []string) (*tls.Conn, error) {
	if tc.NextProtos != nil && len(tc.NextProtos) == 0 {
		alpn = nil // an L4 peer (Connect sidecar): no ALPN at all
	}
	if tc.ServerName == "" || alpn != nil {
		tc = tc.Clone()
		if tc.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			tc.ServerName = host
		}
		if alpn != nil {
			tc.NextProtos = alpn
		}
	}
	tconn := tls.Client(nc, tc)
	if err := tconn.HandshakeContext(ctx); err != nil {
		nc.Close()
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, cause // the caller's context: not the instance's doing
		}
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: nc.RemoteAddr(), Err: fmt.Errorf("tls handshake: %w", err)}
	}
	return tconn, nil
}

// alive reports whether an idle connection may carry a request: nothing
// is buffered from it and a non-blocking read finds nothing (quiet and
// open), neither bytes the instance sent unasked nor EOF. On a TLS
// connection crypto/tls must hold nothing either: no part of a record,
// and a peeking read that processes the whole records it holds yields no
// byte (a post-handshake message, such as a session ticket, is processed
// and yields none).
func (c *upConn) alive() bool {
	if c.br.Buffered() > 0 {
		return false // the server sent something unasked: do not trust it
	}
	if c.rec != nil {
		if !c.rec.atBoundary() {
			return false
		}
		c.rec.peeking = true
		n, err := c.Conn.Read(c.peekBuf[:])
		c.rec.peeking = false
		if n > 0 || err != errPeek {
			return false
		}
	}
	return quiet(c)
}

// errStaleConn marks a reused connection that the server had closed.
var errStaleConn = errors.New("reused connection closed by the server")

// errHeaderTimeout is an instance that did not answer within TryLimits.Header.
var errHeaderTimeout = errors.New("timeout awaiting response headers")

// errWriteTimeout is an instance that took no byte of the request for
// TryLimits.Write.
var errWriteTimeout = errors.New("timeout writing the request")

// errBodyTimeout is an instance that stalled its answer's body for
// TryLimits.Body.
var errBodyTimeout = errors.New("timeout awaiting response body")

// errTooManyInterim is an instance that sent more 1xx answers than allowed.
var errTooManyInterim = errors.New("too many interim (1xx) answers")

// errBadStatus is an answer whose status code is below 100.
var errBadStatus = errors.New("malformed status code")

// errUnaskedUpgrade is a 101 answer to a request that asked for no
// upgrade, or that switches to another protocol than the one asked for
// (Upgrade, with Connection: upgrade).
var errUnaskedUpgrade = errors.New("101 Switching Protocols to a protocol that was not asked for")

// maxInterim bounds the 1xx answers before a final one.
const maxInterim = 16

// RoundTrip sends req to req.URL.Host with the default TryLimits: http://
// URLs over TCP (see Try), https:// ones over TLS with the system's roots
// (see TryTLS).
func (u *Upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "https" {
		return u.TryTLS(req, req.URL.Host, u.defaultTLS, u.defaults)
	}
	return u.Try(req, req.URL.Host, u.defaults)
}

// Try sends req to the instance at addr ("host:port"; req.URL.Host is not
// read, so a caller need not copy a request to aim it) and returns its
// answer's head. It does not modify req. The caller
// must close the response body; the connection goes back to the pool when
// the body was read to its end (see the integrity rule on Upstream).
// Cancelling req's context interrupts the exchange at any point, the body
// included. Interim answers are passed to an httptrace Got1xxResponse hook
// in the context (but 100 Continue, which sluice answers itself); 101 ends
// the exchange and the body is the connection.
func (u *Upstream) Try(req *http.Request, addr string, limits TryLimits) (*http.Response, error) {
	if req.URL.Scheme != "http" {
		return nil, fmt.Errorf("upstream: unsupported scheme %q", req.URL.Scheme)
	}
	return u.TryTLS(req, addr, nil, limits)
}

// TryTLS is Try over TLS made with tc (nil: plain TCP, as Try, but
// req.URL.Scheme is not checked). tc is not modified and must not be
// modified once used: connections are pooled by tc's identity. An empty
// tc.ServerName means the instance's host (addr without its port), an IP
// address verified against the certificate's IP SANs; ALPN always offers
// http/1.1 only. A failed handshake is returned as a failed dial.
func (u *Upstream) TryTLS(req *http.Request, addr string, tc *tls.Config, limits TryLimits) (*http.Response, error) {
	hp := u.pool(addr, tc)
	hasBody := req.Body != nil && req.Body != http.NoBody
	for {
		c := u.get(hp)
		reused := c != nil
		if reused && !c.alive() {
			c.Close()
			continue
		}
		if !reused {
			var err error
			if c, err = u.dial(req.Context(), addr, tc); err != nil {
				return nil, err
			}
		}
		resp, stop, err := u.exchange(c, req, limits)
		if err == nil {
			return u.wrap(hp, c, req, resp, stop, limits), nil
		}
		c.Close()
		if reused && !hasBody && isIdempotent(req.Method) && errors.Is(err, errStaleConn) && req.Context().Err() == nil {
			continue // the server closed it as the request went out: try a fresh one
		}
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
}

// exchange writes req on c and reads the response headers. On success the
// returned stop detaches the context watch; it must be called when the
// body is done, and reports false when the context ended meanwhile.
func (u *Upstream) exchange(c *upConn, req *http.Request, limits TryLimits) (*http.Response, func() bool, error) {
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	// Cancelling the request (client gone) interrupts any blocked read or
	// write on the connection, until the body is closed.
	stop := context.AfterFunc(ctx, c.cancel)
	c.setReadDeadline(time.Time{})
	c.writeWait = limits.write()
	c.werr = nil
	err := writeRequest(c.bw, req)
	if err == nil {
		err = c.bw.Flush()
	}
	var writeErr error
	if err != nil {
		if c.werr == nil || ctx.Err() != nil {
			// Reading the request body failed (the caller tells whose
			// fault it is), or the request was cancelled.
			stop()
			return nil, nil, u.connErr(ctx, err, false, false)
		}
		// The instance stopped taking the request: it may have answered
		// early (413, 401) and closed. An answer already received is
		// read; else the write error stands.
		writeErr = err
		c.setReadDeadline(time.Now().Add(earlyAnswerWait))
	} else {
		c.setReadDeadline(time.Now().Add(limits.header()))
	}
	c.budget = maxResponseHeader
	defer func() { c.budget = -1 }()
	for interim := 0; ; interim++ {
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			stop()
			if writeErr != nil {
				return nil, nil, u.connErr(ctx, writeErr, interim == 0 && c.budget == maxResponseHeader, true)
			}
			// Stale only when not one byte of an answer came back.
			return nil, nil, u.connErr(ctx, err, interim == 0 && c.budget == maxResponseHeader, false)
		}
		switch code := resp.StatusCode; {
		case code < 100:
			stop()
			return nil, nil, fmt.Errorf("%w: %d", errBadStatus, code)
		case code == http.StatusSwitchingProtocols && !upgradeAnswered(req.Header, resp.Header):
			stop()
			return nil, nil, errUnaskedUpgrade
		case code < 200 && code != http.StatusSwitchingProtocols:
			// Interim answers (100 Continue, 103 Early Hints).
			if interim >= maxInterim {
				stop()
				return nil, nil, errTooManyInterim
			}
			if code != http.StatusContinue {
				if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
					if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
						stop()
						return nil, nil, err
					}
				}
			}
			continue
		}
		if writeErr != nil {
			resp.Close = true // the request was not sent whole: never reused
		}
		c.setReadDeadline(time.Time{})
		return resp, stop, nil
	}
}

// earlyAnswerWait is how long an answer is awaited after the instance
// stopped taking the request: it was sent already, or it will not come.
const earlyAnswerWait = 100 * time.Millisecond

// connErr turns a connection error into the error Try returns: the
// context's cause when it ended, errWriteTimeout or errHeaderTimeout,
// errStaleConn (wrapping err) for a connection the server had closed
// before answering.
func (u *Upstream) connErr(ctx context.Context, err error, mayBeStale, writing bool) error {
	if ctx.Err() != nil {
		if cause := context.Cause(ctx); cause != nil {
			return cause
		}
		return ctx.Err()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if writing {
			return fmt.Errorf("%w: %w", errWriteTimeout, err)
		}
		return fmt.Errorf("%w: %w", errHeaderTimeout, err)
	}
	if mayBeStale && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		return fmt.Errorf("%w: %w", errStaleConn, err)
	}
	return err
}

// wrap hands the response to the caller with a body that returns c to the
// pool once read to the end, or closes it.
func (u *Upstream) wrap(hp *hostPool, c *upConn, req *http.Request, resp *http.Response, stop func() bool, limits TryLimits) *http.Response {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection now belongs to the upgrade (ReverseProxy needs an
		// io.ReadWriteCloser body); it is closed when the request's
		// context ends, whatever ReverseProxy does with it.
		stop()
		c.SetDeadline(time.Time{})
		c.writeWait = 0 // an upgraded stream's writes have no deadline, as on plain TCP
		c.bodyWait = 0  // nor its reads
		context.AfterFunc(req.Context(), func() { c.Conn.Close() })
		resp.Body = &upgradedConn{upConn: c}
		return resp
	}
	reusable := !resp.Close && !req.Close && resp.ProtoAtLeast(1, 1) && (resp.ContentLength >= 0 || isChunked(resp) || !bodyAllowed(req, resp))
	c.bodyWait = limits.body()
	b := u.bufs.Get().(*upBody)
	b.body, b.conn, b.hp, b.up, b.reusable, b.stop = resp.Body, c, hp, u, reusable, stop
	b.length = resp.ContentLength
	if b.chunked = isChunked(resp) && bodyAllowed(req, resp); b.chunked {
		// Decoded by sluice (bytes handed on as they arrive), not by the
		// body http.ReadResponse framed, which is left unread.
		b.cr.Reset(c.br, nil, &resp.Trailer)
	}
	resp.Body = b
	return resp
}

// upgradeAnswered reports whether a 101 answer with header res switches to
// the protocol that a request with header req asked for; ReverseProxy
// would refuse it otherwise, after the transport returned it.
func upgradeAnswered(req, res http.Header) bool {
	asked := req.Get("Upgrade")
	return asked != "" && wire.HasToken(res["Connection"], "upgrade") && strings.EqualFold(asked, res.Get("Upgrade"))
}

func isChunked(resp *http.Response) bool {
	return len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked"
}

func bodyAllowed(req *http.Request, resp *http.Response) bool {
	return req.Method != http.MethodHead && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified
}

// upBody is a response body that recycles its connection: to the pool when
// read to EOF and reusable, else closed. Each wait on the instance's socket
// may last TryLimits.Body (see headerLimiter); a stall fails with
// errBodyTimeout.
// A read error keeps the connection from reuse (err). upBody itself is
// pooled: after the first Close it must not be used.
type upBody struct {
	body     io.ReadCloser // as http.ReadResponse framed it; unused when chunked
	chunked  bool
	cr       wire.ChunkedReader // the body when chunked; trailers go to the answer's Trailer
	conn     *upConn
	hp       *hostPool
	up       *Upstream
	stop     func() bool // detaches the request context's watch
	length   int64       // the answer's Content-Length; -1: chunked or unknown
	reusable bool
	eof      bool
	err      error // the first read error other than EOF
}

func (b *upBody) Read(p []byte) (n int, err error) {
	if b.chunked {
		n, err = b.cr.Read(p)
	} else {
		n, err = b.body.Read(p)
	}
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: %w", errBodyTimeout, err)
		}
		if b.err == nil {
			b.err = err
		}
	}
	return n, err
}

// whole reports, before the first Read, whether every byte of a body with
// a Content-Length is already in the read buffer: reading it cannot wait.
func (b *upBody) whole() bool { return b.length >= 0 && int64(b.conn.br.Buffered()) >= b.length }

func (b *upBody) Close() error {
	var err error
	if b.stop() && b.eof && b.err == nil && b.reusable && b.conn.br.Buffered() == 0 {
		if !b.chunked {
			err = b.body.Close()
		}
		b.conn.SetReadDeadline(time.Time{})
		b.up.put(b.hp, b.conn)
	} else {
		// Close the connection first: closing an unread body would
		// otherwise drain it to the end, however long it is.
		b.conn.Close()
		if !b.chunked {
			err = b.body.Close()
		}
	}
	up := b.up
	*b = upBody{}
	up.bufs.Put(b)
	return err
}

// upgradedConn is the connection of a 101 answer: reads drain what the
// reader buffered first.
type upgradedConn struct {
	*upConn
}

func (c *upgradedConn) Read(p []byte) (int, error)  { return c.br.Read(p) }
func (c *upgradedConn) Write(p []byte) (int, error) { return c.upConn.Conn.Write(p) }
func (c *upgradedConn) Close() error                { return c.upConn.Conn.Close() }
