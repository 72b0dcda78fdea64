package proxy

import (
	"bufio"
	"context"
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
// Only plain http:// upstreams are supported. The zero value is not
// usable; use NewUpstream.
type Upstream struct {
	dialer      net.Dialer
	maxIdle     int           // idle connections kept per instance
	idleTimeout time.Duration // an idle connection older than this is closed
	defaults    TryLimits     // for RoundTrip
	hosts       sync.Map      // addr -> *hostPool
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
	}
	u.bufs.New = func() any { return &upBody{} }
	return u
}

var _ http.RoundTripper = (*Upstream)(nil)

// hostPool holds the idle connections to one instance.
type hostPool struct {
	idle chan *upConn
	// dead is set when the address left every tracked service (see
	// Track): the pool is out of Upstream.hosts and closes what it gets.
	dead atomic.Bool
}

// upConn is one keep-alive connection.
type upConn struct {
	net.Conn
	br     *bufio.Reader // reads through headerLimiter
	bw     *bufio.Writer // writes through writeLimiter
	idleAt time.Time
	// writeWait is the progress deadline of each write (TryLimits.Write).
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
}

// maxResponseHeader bounds the bytes read from an instance while its
// response headers are read (1 MiB).
const maxResponseHeader = 1 << 20

// errHeaderTooLarge is returned for an answer whose headers exceed maxResponseHeader.
var errHeaderTooLarge = errors.New("upstream response headers exceed 1 MiB")

// headerLimiter is the reader under an upConn's bufio.Reader: it enforces
// the header budget.
type headerLimiter struct{ c *upConn }

func (l headerLimiter) Read(p []byte) (int, error) {
	c := l.c
	if c.budget < 0 {
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
// only when the instance takes no byte for writeWait.
type writeLimiter struct{ c *upConn }

func (w writeLimiter) Write(p []byte) (int, error) {
	c := w.c
	total := 0
	for {
		c.Conn.SetWriteDeadline(time.Now().Add(c.writeWait))
		if c.cancelled.Load() {
			c.Conn.SetWriteDeadline(pastDeadline)
		}
		n, err := c.Conn.Write(p)
		total += n
		if err != nil && n > 0 && n < len(p) && errors.Is(err, os.ErrDeadlineExceeded) && !c.cancelled.Load() {
			p = p[n:] // slow but moving: a new deadline for the rest
			continue
		}
		if err != nil {
			c.werr = err
		}
		return total, err
	}
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

func (u *Upstream) pool(addr string) *hostPool {
	if hp, ok := u.hosts.Load(addr); ok {
		return hp.(*hostPool)
	}
	hp, _ := u.hosts.LoadOrStore(addr, &hostPool{idle: make(chan *upConn, u.maxIdle)})
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

// forget removes addr's pool and closes its idle connections.
func (u *Upstream) forget(addr string) {
	if v, ok := u.hosts.LoadAndDelete(addr); ok {
		hp := v.(*hostPool)
		hp.dead.Store(true)
		drain(hp)
	}
}

// reap closes the idle connections that have been idle for idleTimeout,
// every idleTimeout/2, so that connections to an instance nobody asks for
// any more do not stay open. It runs on a timer from the first pool on;
// after Close it runs once more and stops.
func (u *Upstream) reap() {
	if u.closed.Load() {
		return
	}
	u.hosts.Range(func(_, v any) bool {
		hp := v.(*hostPool)
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

func (u *Upstream) dial(ctx context.Context, addr string) (*upConn, error) {
	nc, err := u.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &upConn{Conn: nc, budget: -1}
	c.bw = bufio.NewWriterSize(writeLimiter{c}, 4096)
	c.br = bufio.NewReaderSize(headerLimiter{c}, 4096)
	return c, nil
}

// alive reports whether an idle connection may carry a request: nothing
// is buffered from it and a non-blocking read finds nothing (quiet and
// open), neither bytes the instance sent unasked nor EOF.
func (c *upConn) alive() bool {
	if c.br.Buffered() > 0 {
		return false // the server sent something unasked: do not trust it
	}
	return quiet(c.Conn)
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

// RoundTrip sends req to req.URL.Host with the default TryLimits. See Try.
func (u *Upstream) RoundTrip(req *http.Request) (*http.Response, error) {
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
	hp := u.pool(addr)
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
			if c, err = u.dial(req.Context(), addr); err != nil {
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
	err := req.Write(c.bw)
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
		context.AfterFunc(req.Context(), func() { c.Conn.Close() })
		resp.Body = &upgradedConn{upConn: c}
		return resp
	}
	reusable := !resp.Close && !req.Close && resp.ProtoAtLeast(1, 1) && (resp.ContentLength >= 0 || isChunked(resp) || !bodyAllowed(req, resp))
	b := u.bufs.Get().(*upBody)
	b.body, b.conn, b.hp, b.up, b.reusable, b.stop, b.wait = resp.Body, c, hp, u, reusable, stop, limits.body()
	resp.Body = b
	return resp
}

// upgradeAnswered reports whether a 101 answer with header res switches to
// the protocol that a request with header req asked for; ReverseProxy
// would refuse it otherwise, after the transport returned it.
func upgradeAnswered(req, res http.Header) bool {
	asked := req.Get("Upgrade")
	return asked != "" && hasToken(res["Connection"], "upgrade") && strings.EqualFold(asked, res.Get("Upgrade"))
}

// hasToken reports whether comma-separated header values hold token, in
// any case.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}

func isChunked(resp *http.Response) bool {
	return len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked"
}

func bodyAllowed(req *http.Request, resp *http.Response) bool {
	return req.Method != http.MethodHead && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified
}

// upBody is a response body that recycles its connection: to the pool when
// read to EOF and reusable, else closed. Each read that must wait on the
// instance may wait TryLimits.Body; a stall fails with errBodyTimeout.
// A read error keeps the connection from reuse (err). upBody itself is
// pooled: after the first Close it must not be used.
type upBody struct {
	body     io.ReadCloser
	conn     *upConn
	hp       *hostPool
	up       *Upstream
	stop     func() bool // detaches the request context's watch
	wait     time.Duration
	reusable bool
	eof      bool
	err      error // the first read error other than EOF
}

func (b *upBody) Read(p []byte) (int, error) {
	if b.conn.br.Buffered() == 0 {
		b.conn.setReadDeadline(time.Now().Add(b.wait))
	}
	n, err := b.body.Read(p)
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

func (b *upBody) Close() error {
	var err error
	if b.stop() && b.eof && b.err == nil && b.reusable && b.conn.br.Buffered() == 0 {
		err = b.body.Close()
		b.conn.SetReadDeadline(time.Time{})
		b.up.put(b.hp, b.conn)
	} else {
		// Close the connection first: closing an unread body would
		// otherwise drain it to the end, however long it is.
		b.conn.Close()
		err = b.body.Close()
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
