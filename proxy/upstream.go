package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// Upstream is sluice's HTTP/1.1 client to its backends: an
// http.RoundTripper that writes the request and reads the answer on the
// calling goroutine over pooled keep-alive connections. Framing is the
// standard library's (Request.Write, http.ReadResponse); what it leaves
// out of http.Transport is the two goroutines per connection and the
// read-ahead that detects closed idle connections, which cost about a fifth
// of sluice's CPU per request in the bench profile. A reused connection
// that turns out to be closed is replaced transparently when the request
// has no body, and checked before use when it has one.
//
// Only plain http:// upstreams are supported. The zero value is not
// usable; use NewUpstream.
type Upstream struct {
	dialer      net.Dialer
	maxIdle     int           // idle connections kept per instance
	idleTimeout time.Duration // an idle connection older than this is closed
	headerWait  time.Duration // to the response headers; 0: none
	hosts       sync.Map      // addr -> *hostPool
	bufs        sync.Pool     // *upConn buffers are per connection; this pools upBody
}

// NewUpstream returns the default upstream client: 5 s to connect, 60 s to
// the response headers, up to 256 idle connections per instance closed
// after 90 s idle.
func NewUpstream() *Upstream {
	u := &Upstream{
		dialer:      net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second},
		maxIdle:     256,
		idleTimeout: 90 * time.Second,
		headerWait:  DefaultResponseHeaderTimeout,
	}
	u.bufs.New = func() any { return &upBody{} }
	return u
}

var _ http.RoundTripper = (*Upstream)(nil)

// hostPool holds the idle connections to one instance.
type hostPool struct {
	idle chan *upConn
}

// upConn is one keep-alive connection.
type upConn struct {
	net.Conn
	br     *bufio.Reader // reads through headerLimiter
	bw     *bufio.Writer
	idleAt time.Time
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

func (u *Upstream) pool(addr string) *hostPool {
	if hp, ok := u.hosts.Load(addr); ok {
		return hp.(*hostPool)
	}
	hp, _ := u.hosts.LoadOrStore(addr, &hostPool{idle: make(chan *upConn, u.maxIdle)})
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
}

// CloseIdleConnections closes every idle connection.
func (u *Upstream) CloseIdleConnections() {
	u.hosts.Range(func(_, v any) bool {
		hp := v.(*hostPool)
		for {
			select {
			case c := <-hp.idle:
				c.Close()
			default:
				return true
			}
		}
	})
}

func (u *Upstream) dial(ctx context.Context, addr string) (*upConn, error) {
	nc, err := u.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &upConn{Conn: nc, bw: bufio.NewWriterSize(nc, 4096), budget: -1}
	c.br = bufio.NewReaderSize(headerLimiter{c}, 4096)
	return c, nil
}

// alive reports whether an idle connection is still open, with one
// non-blocking peek (recv MSG_PEEK|MSG_DONTWAIT): an open, quiet connection
// has nothing to read; a closed one reads EOF or an error.
func (c *upConn) alive() bool {
	if c.br.Buffered() > 0 {
		return false // the server sent something unasked: do not trust it
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var buf [1]byte
	open := false
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = n <= 0 && (rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK)
		return true // never wait
	})
	return err == nil && open
}

// errStaleConn marks a reused connection that the server had closed.
var errStaleConn = errors.New("reused connection closed by the server")

// RoundTrip sends req to req.URL.Host and returns its answer. The caller
// must close the response body; the connection goes back to the pool when
// the body was read to the end.
func (u *Upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" {
		return nil, fmt.Errorf("upstream: unsupported scheme %q", req.URL.Scheme)
	}
	hp := u.pool(req.URL.Host)
	hasBody := req.Body != nil && req.Body != http.NoBody
	for {
		c := u.get(hp)
		reused := c != nil
		if reused && hasBody && !c.alive() {
			c.Close()
			continue
		}
		if !reused {
			var err error
			if c, err = u.dial(req.Context(), req.URL.Host); err != nil {
				return nil, err
			}
		}
		resp, err := u.exchange(c, req)
		if err == nil {
			return u.wrap(hp, c, req, resp), nil
		}
		c.Close()
		if reused && !hasBody && errors.Is(err, errStaleConn) && req.Context().Err() == nil {
			continue // nothing reached a live server: try a fresh connection
		}
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
}

// exchange writes req on c and reads the response headers, honouring the
// request's context and the header timeout.
func (u *Upstream) exchange(c *upConn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Cancelling the request (client gone, per-try timeout) interrupts any
	// blocked read or write on the connection.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if u.headerWait > 0 {
		c.SetDeadline(time.Now().Add(u.headerWait))
	}
	if err := req.Write(c.bw); err != nil {
		return nil, u.connErr(ctx, err, c.br.Buffered() == 0)
	}
	if err := c.bw.Flush(); err != nil {
		return nil, u.connErr(ctx, err, true)
	}
	c.budget = maxResponseHeader
	defer func() { c.budget = -1 }()
	for {
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			return nil, u.connErr(ctx, err, true)
		}
		// Skip interim answers (100 Continue, 103 Early Hints), not 101.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		if !stop() {
			// The context ended as the answer came: the deadline is set.
			return nil, u.connErr(ctx, ctx.Err(), false)
		}
		c.SetDeadline(time.Time{})
		return resp, nil
	}
}

// connErr turns a connection error into the error RoundTrip returns: the
// context's cause when it ended, errStaleConn (wrapping err) for a
// connection the server had closed before answering.
func (u *Upstream) connErr(ctx context.Context, err error, mayBeStale bool) error {
	if ctx.Err() != nil {
		if cause := context.Cause(ctx); cause != nil {
			return cause
		}
		return ctx.Err()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("timeout awaiting response headers: %w", err)
	}
	if mayBeStale && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		return fmt.Errorf("%w: %w", errStaleConn, err)
	}
	return err
}

// wrap hands the response to the caller with a body that returns c to the
// pool once read to the end, or closes it.
func (u *Upstream) wrap(hp *hostPool, c *upConn, req *http.Request, resp *http.Response) *http.Response {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection now belongs to the upgrade (ReverseProxy needs an
		// io.ReadWriteCloser body).
		resp.Body = &upgradedConn{upConn: c}
		return resp
	}
	reusable := !resp.Close && !req.Close && resp.ProtoAtLeast(1, 1) && (resp.ContentLength >= 0 || isChunked(resp) || !bodyAllowed(req, resp))
	b := u.bufs.Get().(*upBody)
	b.body, b.conn, b.hp, b.up, b.reusable = resp.Body, c, hp, u, reusable
	resp.Body = b
	return resp
}

func isChunked(resp *http.Response) bool {
	return len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked"
}

func bodyAllowed(req *http.Request, resp *http.Response) bool {
	return req.Method != http.MethodHead && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified
}

// upBody is a response body that recycles its connection: to the pool when
// read to EOF and reusable, else closed. Close is called exactly once (by
// ReverseProxy); upBody itself is pooled.
type upBody struct {
	body     io.ReadCloser
	conn     *upConn
	hp       *hostPool
	up       *Upstream
	reusable bool
	eof      bool
}

func (b *upBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *upBody) Close() error {
	var err error
	if b.eof && b.reusable && b.conn.br.Buffered() == 0 {
		err = b.body.Close()
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
