// Package h1 is sluice's HTTP/1.1 server for client connections. It reads
// request heads itself so that framing is strict (RFC 9112) and every phase
// of a request has a timeout with a defined answer; connections that open
// with the HTTP/2 preface are handed to net/http's h2c server.
//
// Handlers see standard *http.Request and http.ResponseWriter values; the
// writer supports Flush, Hijack, 1xx answers and http.ResponseController.
// The request context is cancelled when the client goes away (a read of the
// idle connection returns EOF or an error; the read starts once the handler
// has run for clientGoneDelay, 5 ms) or when the handler returns. It
// carries http.ServerContextKey, so httputil.ReverseProxy aborts (panics
// with http.ErrAbortHandler) on a broken copy instead of ending the answer
// as if it were whole; the server then drops the connection, or answers
// 502 when nothing of the answer was written yet.
//
// On h2c streams BodyTimeout and WriteTimeout hold per read and per write
// as on HTTP/1.1 connections (a stalled body fails with the same 408
// *Error; a stalled answer resets the stream).
//
// With TLSConfig set the server terminates TLS: ALPN "h2" connections go to
// the same HTTP/2 server, every other one is HTTP/1.1, and every request
// carries r.TLS.
package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-lb/sluice/proxy/internal/rawread"
	"github.com/sluice-lb/sluice/proxy/internal/wire"
)

// Defaults of Server's timeouts.
const (
	DefaultHeaderTimeout = 10 * time.Second
	DefaultBodyTimeout   = 60 * time.Second
	DefaultWriteTimeout  = 60 * time.Second
	DefaultIdleTimeout   = 2 * time.Minute
)

// DefaultMaxConcurrentStreams is the HTTP/2 streams a client connection may
// have open at once (HAProxy's default too).
const DefaultMaxConcurrentStreams = 100

// The limits that Server.LimitHit names.
const (
	LimitMaxConnections       = "max_connections"
	LimitMaxHeaderBytes       = "max_header_bytes"
	LimitMaxConcurrentStreams = "max_concurrent_streams"
)

// Server serves HTTP/1.1 (and h2c with prior knowledge, or HTTP/2 over
// TLS by ALPN) on a listener. Fields must not change after Serve is
// called; the four timeouts can be changed at any time with SetTimeouts,
// MaxConns and MaxHeaderBytes with SetLimits.
type Server struct {
	Handler http.Handler
	// TLSConfig, when set, makes every accepted connection TLS. The
	// handshake runs in the connection's goroutine, never in the accept
	// loop; it and the first request head must arrive within
	// HeaderTimeout of the accept. A failed or timed-out handshake closes
	// the connection without an answer and without a log line.
	//
	// The config is used as given and never modified (swap certificates
	// with its GetConfigForClient). The caller sets NextProtos, normally
	// {"h2", "http/1.1"}: a connection that negotiates "h2" is served by
	// the HTTP/2 server (and closed with GOAWAY INADEQUATE_SECURITY when
	// the session is below RFC 9113 section 9.2: TLS 1.2 without an
	// ECDHE AEAD suite, or older), every other one as HTTP/1.1; HTTP/2
	// with prior knowledge is not taken over TLS. Every request carries
	// r.TLS (the handshake's state, shared by the connection's requests:
	// read only); it is nil on plain connections.
	//
	// A tls.Conn whose write timed out cannot write again, so over TLS
	// WriteTimeout holds per TLS record (16 KiB) rather than per byte: a
	// client that takes no whole record for WriteTimeout is cut, where a
	// plain connection's slow reader that keeps taking bytes is not.
	TLSConfig *tls.Config
	// HeaderTimeout bounds the arrival of a whole request head, from the
	// connection's accept or the request's first byte; on expiry the client
	// gets 408 and the connection is closed. An HTTP/2 connection (h2c
	// or ALPN h2) whose first stream has not started HeaderTimeout after
	// the accept is closed without an answer. Default
	// DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// BodyTimeout is the longest wait for a byte of a request body; on
	// expiry the request fails with 408 (the client's fault) and the
	// connection is closed. Default DefaultBodyTimeout.
	BodyTimeout time.Duration
	// WriteTimeout is the longest a write to the client may block (a client
	// that stopped reading); on expiry the connection is closed. Default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that has no new request
	// for this long, without an answer. Default DefaultIdleTimeout.
	//
	// The four timeouts above are read when Serve first runs; once
	// SetTimeouts has been called, its values apply instead.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request head (431 beyond it). Default
	// DefaultMaxHeaderBytes. HTTP/2 streams get the bound in effect when
	// Serve first ran (as net/http's header list size, also 431).
	MaxHeaderBytes int
	// MaxConns bounds the client connections open at once, HTTP/2 and
	// hijacked ones included; 0 (the default) is no bound. A client is
	// never refused for it: at the bound each Serve loop accepts one more
	// connection and holds it unserved (no byte read, no handshake, not
	// yet told to ConnCounter), closes the HTTP/1.1 connection that has
	// waited longest for a next request (one at a time, until the held
	// one has its slot), and otherwise waits until a connection closes;
	// the rest wait in the kernel's backlog. Shutdown and Close end the
	// wait (the held connection is closed). Connections in a handshake or
	// before their first request and HTTP/2 connections are never closed
	// for room (their HeaderTimeout and IdleTimeout end them).
	//
	// MaxHeaderBytes and MaxConns are read when Serve first runs; once
	// SetLimits has been called, its values apply instead.
	MaxConns int
	// MaxConcurrentStreams bounds the HTTP/2 streams a client connection
	// may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); fixed when
	// Serve first runs. Default DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	// LimitHit, when set, is called each time a limit is hit, with
	// LimitMaxConnections when a connection is held at MaxConns,
	// LimitMaxHeaderBytes when a request head is answered 431 (HTTP/1.1
	// only: net/http answers HTTP/2's unseen), or
	// LimitMaxConcurrentStreams when a new HTTP/2 stream brings its
	// connection's running handlers to MaxConcurrentStreams (streams
	// refused beyond it are net/http's, unseen). Called from connection
	// and accept goroutines; it must not block.
	LimitHit func(limit string)
	// ErrorLog receives handler panics and accept errors; nil: log's
	// standard logger.
	ErrorLog *log.Logger
	// AcceptGate, when set, is called before each Accept; it may block
	// while the process cannot serve new connections (out of file
	// descriptors), leaving clients in the kernel's backlog.
	AcceptGate func()
	// AcceptError, when set, is told of every Accept error that is not the
	// listener closing; the server then backs off (5 ms doubling to 1 s).
	AcceptError func(error)
	// ConnCounter, when set, is told of each client connection once when
	// it is accepted and once when it is closed. See ConnCounter.
	ConnCounter ConnCounter

	// timeouts is what SetTimeouts set, else nil; fieldTimeouts is the
	// fields' values with defaults, set by init.
	timeouts      atomic.Pointer[Timeouts]
	fieldTimeouts Timeouts
	// limits and fieldLimits are the same for SetLimits.
	limits      atomic.Pointer[Limits]
	fieldLimits Limits
	maxStreams  int32        // MaxConcurrentStreams with its default
	open        atomic.Int64 // connections admitted and not yet closed
	holding     atomic.Int32 // Serve loops holding a connection at MaxConns

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	h2        *http.Server
	baseCtx   context.Context // of every request: carries ServerContextKey
	h2ln      *chanListener
	shutdown  atomic.Bool
	inShut    chan struct{} // closed when Shutdown or Close starts
	closeOnce sync.Once
	// waiters are the Serve loops' wake channels (capacity 1), signalled
	// whenever a connection closes or the limits change.
	waiters map[chan struct{}]struct{}
	// readers and writers are the connections' 4 KiB buffers (*bufio.Reader,
	// *bufio.Writer), held only while a request is read or answered.
	readers, writers sync.Pool
}

// ConnCounter counts a Server's open client connections. ConnOpened is
// called before a connection is served and returns what is told when that
// connection closes (so a counter that changes, on a reload, still pairs
// every close with its open); ConnClosed is called once, when the
// connection is closed: by the server, or, for a connection handed on, by
// its new owner (net/http for h2c, the handler for a hijacked one),
// however often that owner closes it. Calls come from connection
// goroutines and must not block; ConnOpened should not allocate.
type ConnCounter interface {
	ConnOpened() ConnCloser
}

// ConnCloser is told that a connection counted by a ConnCounter closed.
type ConnCloser interface {
	ConnClosed()
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

// Timeouts are the client-side timeouts of a Server, as its fields of the
// same names document them; a zero field means that field's default
// (DefaultHeaderTimeout, DefaultBodyTimeout, DefaultWriteTimeout,
// DefaultIdleTimeout).
type Timeouts struct {
	HeaderTimeout time.Duration
	BodyTimeout   time.Duration
	WriteTimeout  time.Duration
	IdleTimeout   time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	return Timeouts{
		HeaderTimeout: orDefault(t.HeaderTimeout, DefaultHeaderTimeout),
		BodyTimeout:   orDefault(t.BodyTimeout, DefaultBodyTimeout),
		WriteTimeout:  orDefault(t.WriteTimeout, DefaultWriteTimeout),
		IdleTimeout:   orDefault(t.IdleTimeout, DefaultIdleTimeout),
	}
}

// SetTimeouts replaces the server's timeouts, before or after Serve, and
// takes precedence over the fields from then on. An HTTP/1.1 connection
// takes them up at its next request (a request in progress keeps its own),
// an h2c stream when it starts. The connection-level timeouts of h2c
// connections (head, idle, write progress, which net/http applies) stay
// those in effect when Serve first ran.
func (s *Server) SetTimeouts(t Timeouts) {
	t = t.withDefaults()
	s.timeouts.Store(&t)
}

// currentTimeouts returns the timeouts in effect, defaults applied; the
// result is shared and must not be modified.
func (s *Server) currentTimeouts() *Timeouts {
	if t := s.timeouts.Load(); t != nil {
		return t
	}
	return &s.fieldTimeouts
}

// Limits are a Server's limits that can change at run time, as its fields
// of the same names document them: 0 MaxConns is no bound, 0
// MaxHeaderBytes is DefaultMaxHeaderBytes.
type Limits struct {
	MaxConns       int
	MaxHeaderBytes int
}

func (l Limits) withDefaults() Limits {
	return Limits{MaxConns: max(l.MaxConns, 0), MaxHeaderBytes: orInt(l.MaxHeaderBytes, DefaultMaxHeaderBytes)}
}

// SetLimits replaces the server's limits, before or after Serve, and takes
// precedence over the fields from then on. A new MaxConns applies to the
// next accept (a held connection is re-examined at once; connections above
// a lowered bound stay open), a new MaxHeaderBytes to the next HTTP/1.1
// request head.
func (s *Server) SetLimits(l Limits) {
	l = l.withDefaults()
	s.limits.Store(&l)
	s.wake()
}

// currentLimits returns the limits in effect, defaults applied; the result
// is shared and must not be modified.
func (s *Server) currentLimits() *Limits {
	if l := s.limits.Load(); l != nil {
		return l
	}
	return &s.fieldLimits
}

func (s *Server) limitHit(limit string) {
	if s.LimitHit != nil {
		s.LimitHit(limit)
	}
}

func (s *Server) shuttingDown() bool { return s.shutdown.Load() }

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}

func (s *Server) init() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns != nil {
		return
	}
	s.fieldTimeouts = Timeouts{HeaderTimeout: s.HeaderTimeout, BodyTimeout: s.BodyTimeout,
		WriteTimeout: s.WriteTimeout, IdleTimeout: s.IdleTimeout}.withDefaults()
	s.fieldLimits = Limits{MaxConns: s.MaxConns, MaxHeaderBytes: s.MaxHeaderBytes}.withDefaults()
	s.conns = map[*conn]struct{}{}
	s.listeners = map[net.Listener]struct{}{}
	s.waiters = map[chan struct{}]struct{}{}
	s.inShut = make(chan struct{})
	t := s.currentTimeouts()
	streams := s.MaxConcurrentStreams
	if streams == 0 {
		streams = DefaultMaxConcurrentStreams
	}
	s.maxStreams = int32(min(streams, 1<<31-1))
	var protocols http.Protocols
	// Connections reach it through h2ln only, decrypted: they are
	// "unencrypted" to net/http, which therefore never sets r.TLS (serveH2
	// does, from the hijackedConn that ConnContext puts in the context).
	protocols.SetUnencryptedHTTP2(true)
	s.h2ln = newChanListener()
	s.h2 = &http.Server{
		Handler:           http.HandlerFunc(s.serveH2),
		ReadHeaderTimeout: t.HeaderTimeout,
		IdleTimeout:       t.IdleTimeout,
		MaxHeaderBytes:    s.currentLimits().MaxHeaderBytes,
		ErrorLog:          s.ErrorLog,
		Protocols:         &protocols,
		ConnContext:       h2ConnContext,
		// A connection whose client stops reading at the TCP level is
		// closed; a stream whose client keeps its window shut is reset
		// by h2Writer. Frames are read up to RFC 9113's initial 16 KiB
		// (net/http's default is 1 MiB), as HAProxy and nginx do: a
		// larger frame is a FRAME_SIZE_ERROR.
		HTTP2: &http.HTTP2Config{WriteByteTimeout: t.WriteTimeout, MaxConcurrentStreams: int(s.maxStreams), MaxReadFrameSize: 16 << 10},
	}
	s.baseCtx = context.WithValue(context.Background(), http.ServerContextKey, s.h2)
	go s.h2.Serve(s.h2ln)
}

func orInt(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// Serve accepts connections on ln until it is closed or the server shuts
// down, and returns ErrServerClosed after Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.shuttingDown() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	wake := make(chan struct{}, 1)
	s.waiters[wake] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		delete(s.waiters, wake)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		if s.AcceptGate != nil {
			s.AcceptGate()
		}
		rwc, err := ln.Accept()
		if err != nil {
			if s.shuttingDown() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			if s.AcceptError != nil {
				s.AcceptError(err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logf("h1: accept error: %v; retrying in %v", err, delay)
			select {
			case <-time.After(delay):
			case <-s.inShut:
			}
			continue
		}
		delay = 0
		if !s.admit(wake) {
			rwc.Close()
			return ErrServerClosed
		}
		c := s.newConn(rwc)
		if c == nil {
			rwc.Close()
			s.connDone()
			continue
		}
		if s.ConnCounter != nil {
			c.closer = s.ConnCounter.ConnOpened()
		}
		go c.serve()
	}
}

// admit takes a connection slot for a connection just accepted, holding it
// while MaxConns connections are open (see MaxConns); false when the
// server shut down first. wake is the calling Serve loop's.
func (s *Server) admit(wake chan struct{}) bool {
	held := false
	var reaped *conn
	for {
		n := s.open.Load()
		limit := int64(s.currentLimits().MaxConns)
		if limit <= 0 || n < limit {
			if s.open.CompareAndSwap(n, n+1) {
				return true
			}
			continue
		}
		if !held {
			held = true
			s.holding.Add(1)
			defer s.holding.Add(-1)
			s.limitHit(LimitMaxConnections)
			// A signal from before the hold is stale: every close from
			// now on signals again.
			select {
			case <-wake:
			default:
			}
			continue
		}
		reaped = s.closeLongestIdle(reaped)
		select {
		case <-wake:
		case <-s.inShut:
			return false
		}
	}
}

// closeLongestIdle closes the HTTP/1.1 connection that has waited longest
// for a next request, unless prev (its last pick) is still closing, and
// returns the connection it closed or is waiting for (nil: none idle).
func (s *Server) closeLongestIdle(prev *conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[prev]; ok && prev != nil {
		return prev
	}
	var oldest *conn
	var since int64
	for c := range s.conns {
		if c.idle.Load() && !c.fresh.Load() {
			if t := c.idleSince.Load(); oldest == nil || t < since {
				oldest, since = c, t
			}
		}
	}
	// The connection's goroutine takes idle back when its next request's
	// first byte arrives: whoever swaps it first owns the connection.
	if oldest == nil || !oldest.idle.CompareAndSwap(true, false) {
		return nil
	}
	oldest.netConn.Close()
	return oldest
}

// wake signals every Serve loop that may hold a connection.
func (s *Server) wake() {
	s.mu.Lock()
	s.wakeLocked()
	s.mu.Unlock()
}

// connDone frees the slot of a closed connection.
func (s *Server) connDone() {
	s.mu.Lock()
	s.connDoneLocked()
	s.mu.Unlock()
}

func (s *Server) connDoneLocked() {
	s.open.Add(-1)
	s.wakeLocked()
}

// wakeLocked signals every Serve loop that may hold a connection.
func (s *Server) wakeLocked() {
	for w := range s.waiters {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

func (s *Server) newConn(rwc net.Conn) *conn {
	c := &conn{srv: s, rwc: rwc, netConn: rwc, accepted: time.Now(), busy: true}
	if s.TLSConfig != nil {
		c.tls = tls.Server(rwc, s.TLSConfig)
		c.rwc = c.tls
	}
	c.fresh.Store(true)
	c.r = &connReader{c: c, fd: -1}
	if c.tls == nil {
		c.raw = rawread.New(rwc, c.readRaw)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shuttingDown() {
		return nil
	}
	s.conns[c] = struct{}{}
	return c
}

// Shutdown stops accepting, closes idle connections, lets every request in
// flight finish (its answer says Connection: close) and returns when all
// connections are closed or ctx ends (then with ctx's error; the caller may
// Close). h2c connections are shut down by net/http.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.beginShutdown()
	h2err := make(chan error, 1)
	go func() { h2err <- s.h2.Shutdown(ctx) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.closeIdle() == 0 {
			return <-h2err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.init()
	s.beginShutdown()
	s.mu.Lock()
	for c := range s.conns {
		c.netConn.Close()
	}
	s.mu.Unlock()
	return s.h2.Close()
}

func (s *Server) beginShutdown() {
	s.mu.Lock()
	s.shutdown.Store(true)
	s.closeOnce.Do(func() { close(s.inShut) })
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	s.h2ln.Close()
}

// newConnGrace is how long Shutdown lets a new connection that has sent
// nothing yet live: its request may be on the wire.
const newConnGrace = 500 * time.Millisecond

// closeIdle closes the connections waiting for a request (a new one, or
// one in its TLS handshake, only after newConnGrace) and returns how many
// connections remain. It closes the socket under TLS: a close_notify could
// block.
func (s *Server) closeIdle() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.idle.Load() && (!c.fresh.Load() || time.Since(c.accepted) >= newConnGrace) {
			c.netConn.Close()
		}
	}
	return len(s.conns)
}

// forget drops c from the open connections; closed: c is closed (not
// handed on), and its slot is free.
func (s *Server) forget(c *conn, closed bool) {
	s.mu.Lock()
	delete(s.conns, c)
	if closed {
		s.connDoneLocked()
	}
	s.mu.Unlock()
}

// conn is one client connection. Its fields are used by the connection's
// goroutine (and the handler it runs) only, except idle, idleSince, fresh,
// netConn's Close and the background read in connReader.
type conn struct {
	srv      *Server
	rwc      net.Conn // tls or netConn
	netConn  net.Conn // as accepted; other goroutines close this one
	tls      *tls.Conn
	tlsState *tls.ConnectionState // after the handshake; nil on plain conns
	r        *connReader
	// br and bw are taken from the server's pools when a request's first
	// byte is there (bw: when its answer starts) and given back when the
	// connection waits for the next one with nothing buffered; nil in
	// between. Over TLS (raw nil) br is kept from the first byte on.
	br        *bufio.Reader
	bw        *bufio.Writer
	raw       *rawread.Reader // waits for a request without a buffer; nil over TLS
	w         *response       // the answer in progress
	idle      atomic.Bool     // waiting for a request (or in the TLS handshake)
	idleSince atomic.Int64    // UnixNano when a keep-alive wait began
	fresh     atomic.Bool     // no byte received yet
	accepted  time.Time
	broken    bool // framing or a write failed: close after this request
	linger    bool // the client may have sent bytes that were not read
	// busy: the connection is new, or its last request came within
	// keepAliveStay of the answer before; its next keep-alive wait stays
	// on this goroutine (else it moves at once).
	busy     bool
	hijacked bool
	remote   string     // RemoteAddr, formatted once
	t        *Timeouts  // of the request in progress (or the idle wait after it)
	closer   ConnCloser // from ConnCounter.ConnOpened; nil when not counted
}

// deadlineWriter fails a write to the client only when the client takes
// no byte for WriteTimeout: a slow reader that keeps reading is not cut.
// Over TLS it holds per record instead (see Server.TLSConfig).
type deadlineWriter struct{ c *conn }

// tlsRecord is the most plaintext a TLS record carries.
const tlsRecord = 16 << 10

func (d deadlineWriter) Write(p []byte) (int, error) {
	total := 0
	if d.c.tls != nil {
		for len(p) > 0 {
			d.c.rwc.SetWriteDeadline(time.Now().Add(d.c.t.WriteTimeout))
			n, err := d.c.rwc.Write(p[:min(len(p), tlsRecord)])
			total += n
			if err != nil {
				return total, err
			}
			p = p[n:]
		}
		return total, nil
	}
	for {
		d.c.rwc.SetWriteDeadline(time.Now().Add(d.c.t.WriteTimeout))
		n, err := d.c.rwc.Write(p)
		total += n
		if err != nil && n > 0 && n < len(p) && errors.Is(err, os.ErrDeadlineExceeded) {
			p = p[n:]
			continue
		}
		return total, err
	}
}

var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

func (c *conn) serve() { c.run(true, false) }

// keepAliveStay is how long a busy keep-alive connection (a new one, or
// one whose last request came within keepAliveStay) waits for its next
// request on the goroutine that served the last one. A connection still
// idle then, and any other at once, moves to a new goroutine, so that the
// stack the last request grew (proxying takes tens of KiB) is freed and
// the idle connection costs a small one; a busy client keeps its grown
// stack and pays no goroutine start or stack growth per request, and a
// mostly idle one no timer.
const keepAliveStay = 20 * time.Millisecond

// run serves the connection from its first request (first) or from a
// keep-alive wait. A keep-alive wait longer than keepAliveStay moves to a
// new goroutine (fresh set there, so that it waits rather than moves
// again).
func (c *conn) run(first, fresh bool) {
	handedOff, moved := false, false
	defer func() {
		if moved {
			return // the new goroutine owns the connection
		}
		defer c.releaseBuffers()
		switch {
		case c.hijacked, handedOff:
			// The new owner closes it (see hijackedConn.Close).
		case c.linger && !(c.tls != nil && c.broken):
			c.lingerClose()
			c.counted()
		case c.tls != nil && c.broken:
			// A failed write left the TLS session unable to send its
			// close_notify: close the socket without waiting on it.
			c.netConn.Close()
			c.counted()
		default:
			c.rwc.Close()
			c.counted()
		}
		c.srv.forget(c, !c.hijacked && !handedOff)
	}()
	s := c.srv
	if c.tls != nil {
		if !c.handshake() {
			return
		}
		if c.tlsState.NegotiatedProtocol == "h2" {
			if !h2Adequate(c.tlsState) {
				c.inadequateSecurity()
				return
			}
			handedOff = c.handOff(s)
			return
		}
	}
	for {
		start := time.Now()
		if fresh {
			// Moved after keepAliveStay: the idle time runs from the end
			// of the last answer.
			start = time.Unix(0, c.idleSince.Load())
		}
		if first {
			// The first head is due HeaderTimeout after the accept,
			// the TLS handshake included.
			start = c.accepted
		} else {
			// Keep-alive: wait for the next request's first byte.
			if !fresh {
				c.idleSince.Store(start.UnixNano())
			}
			c.idle.Store(true)
			if s.shuttingDown() {
				return
			}
			if s.holding.Load() > 0 {
				// A held connection waits for a slot: this one may
				// make room (see closeLongestIdle).
				s.wake()
			}
			idleEnd := start.Add(c.t.IdleTimeout)
			c.rwc.SetReadDeadline(idleEnd)
			if !fresh && c.raw != nil && (c.br == nil || c.br.Buffered() == 0) && !c.r.hasByte {
				c.releaseReader()
				var err error
				if c.busy {
					if stay := start.Add(keepAliveStay); stay.Before(idleEnd) {
						c.rwc.SetReadDeadline(stay)
					}
					_, err = c.raw.Read()
				} else if _, err = c.raw.TryRead(); err == rawread.ErrWouldBlock {
					moved = true
					go c.run(false, true)
					return
				}
				if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(idleEnd) {
					c.rwc.SetReadDeadline(idleEnd)
					moved = true
					go c.run(false, true)
					return
				}
				if err != nil {
					return // closed, or idle too long: no answer
				}
			}
			fresh = false
			if err := c.awaitRequest(); err != nil {
				return // closed, idle too long, or shut down: no answer
			}
			if !c.idle.CompareAndSwap(true, false) {
				return // closed for room (Server.MaxConns)
			}
			start = time.Now()
			c.busy = start.Sub(time.Unix(0, c.idleSince.Load())) < keepAliveStay
		}
		c.t = s.currentTimeouts()
		c.rwc.SetReadDeadline(start.Add(c.t.HeaderTimeout))
		if first {
			first = false
			// A new connection that has sent nothing is idle: Shutdown
			// closes it (after newConnGrace, see closeIdle) rather than
			// wait for its header timeout. No shutdown check here: one
			// that began before this goroutine ran must give its request,
			// which may be on the wire, the same grace.
			c.idle.Store(true)
			if err := c.awaitRequest(); err != nil {
				c.refuse(err)
				return
			}
			c.idle.Store(false)
			c.fresh.Store(false)
			if b, err := c.br.Peek(1); err == nil && b[0] == 'P' && c.tls == nil && c.isH2Preface() {
				handedOff = c.handOff(s)
				return
			}
		}
		h, err := readHead(c.br, s.currentLimits().MaxHeaderBytes)
		if err != nil {
			c.refuse(err)
			return
		}
		if !c.serveRequest(h) {
			return
		}
	}
}

// awaitRequest waits, within the read deadline set, until a request's
// first byte is in c.br. A plain connection holds no read buffer while it
// waits (see rawread): the buffer is taken when bytes are there.
func (c *conn) awaitRequest() error {
	if c.br != nil && c.br.Buffered() > 0 {
		return nil // pipelined
	}
	if c.raw == nil || c.r.hasByte {
		c.takeReader()
		_, err := c.br.Peek(1)
		return err
	}
	c.releaseReader()
	_, err := c.raw.Read()
	return err
}

// readRaw is c.raw's read: it fills c.br from the socket without blocking
// and keeps it when bytes came, else gives it back.
func (c *conn) readRaw(fd int) (int, error) {
	c.takeReader()
	c.r.fd = fd
	_, err := c.br.Peek(1)
	c.r.fd = -1
	if err != nil {
		c.releaseReader()
		return 0, err
	}
	return 1, nil
}

// takeReader gives c a read buffer when it has none.
func (c *conn) takeReader() {
	if c.br != nil {
		return
	}
	if br, ok := c.srv.readers.Get().(*bufio.Reader); ok {
		br.Reset(c.r)
		c.br = br
		return
	}
	c.br = bufio.NewReaderSize(c.r, 4096)
}

// takeWriter gives c a write buffer when it has none.
func (c *conn) takeWriter() {
	if c.bw != nil {
		return
	}
	if bw, ok := c.srv.writers.Get().(*bufio.Writer); ok {
		bw.Reset(deadlineWriter{c})
		c.bw = bw
		return
	}
	c.bw = bufio.NewWriterSize(deadlineWriter{c}, 4096)
}

// releaseReader gives the read buffer back; what it holds is dropped.
func (c *conn) releaseReader() {
	if c.br != nil {
		c.br.Reset(nil)
		c.srv.readers.Put(c.br)
		c.br = nil
	}
}

// releaseWriter gives the write buffer back; what it holds is dropped.
func (c *conn) releaseWriter() {
	if c.bw != nil {
		c.bw.Reset(nil)
		c.srv.writers.Put(c.bw)
		c.bw = nil
	}
}

// releaseBuffers gives both buffers back once the connection is closed or
// handed on.
func (c *conn) releaseBuffers() {
	c.releaseReader()
	c.releaseWriter()
}

// counted tells the ConnCounter that the connection is closed.
func (c *conn) counted() {
	if c.closer != nil {
		c.closer.ConnClosed()
	}
}

// isH2Preface reports whether the connection starts with the HTTP/2
// client preface; it reads no further than needed to tell.
func (c *conn) isH2Preface() bool {
	b, err := c.br.Peek(len("PRI * HTTP/2.0"))
	if err != nil || string(b) != string(h2Preface[:len(b)]) {
		return false
	}
	b, err = c.br.Peek(len(h2Preface))
	return err == nil && string(b) == string(h2Preface)
}

// handshake runs the TLS handshake within HeaderTimeout of the accept and
// reports whether it succeeded. Until it is done the connection counts as
// new and idle for Shutdown.
func (c *conn) handshake() bool {
	c.idle.Store(true)
	if c.srv.shuttingDown() {
		return false
	}
	c.netConn.SetDeadline(c.accepted.Add(c.srv.currentTimeouts().HeaderTimeout))
	if err := c.tls.Handshake(); err != nil {
		return false
	}
	c.netConn.SetWriteDeadline(time.Time{})
	st := c.tls.ConnectionState()
	c.tlsState = &st
	return true
}

// h2Adequate reports whether a TLS session may carry HTTP/2 (RFC 9113
// section 9.2): TLS 1.3, or TLS 1.2 with an ephemeral key exchange and an
// AEAD cipher (the suites off the RFC's Appendix A list).
func h2Adequate(st *tls.ConnectionState) bool {
	switch {
	case st.Version >= tls.VersionTLS13:
		return true
	case st.Version < tls.VersionTLS12:
		return false
	}
	switch st.CipherSuite {
	case tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:
		return true
	}
	return false
}

// h2InadequateSecurity is the server's connection preface (an empty
// SETTINGS frame) and a GOAWAY with last stream 0 and error
// INADEQUATE_SECURITY (0xc).
var h2InadequateSecurity = []byte{
	0, 0, 0, 0x4, 0, 0, 0, 0, 0,
	0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc,
}

// inadequateSecurity ends an h2 connection whose TLS session is not fit
// for HTTP/2 (RFC 9113 section 9.2.1).
func (c *conn) inadequateSecurity() {
	c.rwc.SetWriteDeadline(time.Now().Add(c.srv.currentTimeouts().WriteTimeout))
	c.rwc.Write(h2InadequateSecurity)
}

// handOff passes an h2c connection, with what was buffered, or an ALPN h2
// one, to net/http.
func (c *conn) handOff(s *Server) bool {
	var buf []byte
	if c.br != nil {
		buf, _ = c.br.Peek(c.br.Buffered())
	}
	pc := &hijackedConn{Conn: c.rwc, counter: c.closer, srv: s, tlsState: c.tlsState}
	if len(buf) > 0 {
		pc.pending = append([]byte(nil), buf...)
	}
	c.rwc.SetDeadline(time.Time{})
	probePeer(c.netConn)
	// The first stream's head is due HeaderTimeout after the accept, as
	// on HTTP/1.1; net/http would keep a connection without a stream
	// for IdleTimeout.
	// (Armed once assigned: the timer's function reads the field.)
	pc.firstStream = time.AfterFunc(time.Hour, func() {
		if pc.started.CompareAndSwap(false, true) {
			pc.Close()
		}
	})
	pc.firstStream.Reset(time.Until(c.accepted.Add(s.currentTimeouts().HeaderTimeout)))
	return s.h2ln.deliver(pc)
}

// refuse answers a head that could not be read: 408 on a timeout, the
// *Error's status, or nothing when the client closed or the connection
// failed before a whole head.
func (c *conn) refuse(err error) {
	var e *Error
	switch {
	case errors.As(err, &e):
	case errors.Is(err, os.ErrDeadlineExceeded):
		e = &Error{Status: http.StatusRequestTimeout, Reason: "request header timeout"}
	default:
		return // EOF or a reset: nobody to answer
	}
	if e.Status == http.StatusRequestHeaderFieldsTooLarge {
		c.srv.limitHit(LimitMaxHeaderBytes)
	}
	c.writeError(e)
}

// writeError writes a final answer for e with Connection: close.
func (c *conn) writeError(e *Error) {
	body := e.body()
	c.takeWriter()
	bw := c.bw
	writeStatusLine(bw, e.Status)
	bw.WriteString("Content-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\n\r\n")
	bw.WriteString(body)
	bw.Flush()
	c.linger = true
}

// lingerClose closes the connection after an answer that left client bytes
// unread: a plain close would reset the connection, and the reset can
// destroy the answer before the client reads it. It half-closes, then
// discards what the client still sends, for at most 500 ms and 256 KiB.
func (c *conn) lingerClose() {
	if tc, ok := c.rwc.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
		c.rwc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		io.CopyN(io.Discard, c.rwc, 256<<10)
	}
	c.rwc.Close()
}

// serveRequest runs the handler for one request and reports whether the
// connection may carry another.
func (c *conn) serveRequest(h *head) (keep bool) {
	s := c.srv
	ctx, cancel := context.WithCancel(s.baseCtx)
	defer cancel()
	req := h.req.WithContext(ctx)
	if c.remote == "" {
		c.remote = c.rwc.RemoteAddr().String()
	}
	req.RemoteAddr = c.remote
	req.TLS = c.tlsState
	var b *body
	switch {
	case h.chunked:
		b = &body{c: c, chunked: true, expect100: h.expect100}
		b.cr.Reset(c.br, (*bodyWaiter)(c), nil)
		req.Body = b
	case h.contentLength > 0:
		b = &body{c: c, remaining: h.contentLength, expect100: h.expect100}
		req.Body = b
	default:
		req.Body = http.NoBody
	}
	c.takeWriter()
	w := &response{c: c, req: req, header: make(http.Header, 8), closeAfter: h.closeAfter, body: b}
	c.w = w
	c.r.cancel = cancel
	// The bytes after an Upgrade request belong to the upgraded stream:
	// no background read may take them.
	c.r.noWatch = h.upgrade
	if b == nil && !h.upgrade {
		c.r.bodyDone()
	}
	aborted := c.runHandler(w, req)
	c.r.abortPendingRead()
	c.r.cancel = nil
	if c.hijacked {
		return false
	}
	if aborted {
		// A handler that aborts before its answer started gets a 502
		// for it (sluice's handlers abort on a broken upstream answer),
		// unless the client is gone; once the answer started, dropping
		// the connection is the only way to tell the client.
		c.broken = true
		if !w.wrote && ctx.Err() == nil {
			c.writeError(&Error{Status: http.StatusBadGateway, Reason: "upstream failed"})
		}
		return false
	}
	if b != nil && !b.done {
		// Unread request body: its remains would be read as a request.
		w.closeAfter = true
		c.linger = true
	}
	keep = w.finish()
	c.w = nil
	if keep {
		c.releaseWriter()
	}
	return keep && !c.r.clientGone.Load()
}

// runHandler calls the handler and reports whether it aborted (a panic;
// http.ErrAbortHandler is not logged).
func (c *conn) runHandler(w *response, req *http.Request) (aborted bool) {
	defer func() {
		if v := recover(); v != nil {
			aborted = true
			if v != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.srv.logf("h1: panic serving %v: %v\n%s", c.rwc.RemoteAddr(), v, buf)
			}
		}
	}()
	c.srv.Handler.ServeHTTP(w, req)
	return false
}

// clientGoneDelay is how long a handler runs before the background read
// that detects a client going away starts: most answers are done sooner,
// and then cost no goroutine and no wake-up for it. A client that goes
// away cancels its request at most this long after it left.
const clientGoneDelay = 5 * time.Millisecond

// States of connReader.watch.
const (
	watchOff     int32 = iota
	watchArmed         // the timer will start the background read
	watchRunning       // the background read runs
)

// connReader is the reader under a conn's bufio.Reader. While the handler
// runs (from clientGoneDelay on) and no request bytes remain to be read,
// a background read watches the connection so that a client that goes
// away cancels its request; a byte it reads (a pipelined request) is kept
// for the next read.
type connReader struct {
	c          *conn
	fd         int                // >= 0: read this socket without blocking (conn.readRaw)
	cancel     context.CancelFunc // of the request in progress
	noWatch    bool               // no background read for this request
	hasByte    bool
	byteBuf    [1]byte
	watch      atomic.Int32  // watchOff, watchArmed or watchRunning
	timer      *time.Timer   // starts the background read; made on first use
	done       chan struct{} // a background read ended (capacity 1)
	aborting   atomic.Bool
	clientGone atomic.Bool
}

func (cr *connReader) Read(p []byte) (int, error) {
	if cr.hasByte {
		p[0] = cr.byteBuf[0]
		cr.hasByte = false
		return 1, nil
	}
	if cr.fd >= 0 {
		n, err := rawread.ReadFD(cr.fd, p)
		if n == 0 && err == nil {
			err = io.EOF
		}
		return n, err
	}
	return cr.c.rwc.Read(p)
}

// bodyDone arms the background read when the request has been read
// whole and nothing of a next request is buffered.
func (cr *connReader) bodyDone() {
	if cr.watch.Load() != watchOff || cr.hasByte || cr.noWatch || cr.c.br.Buffered() > 0 || cr.cancel == nil {
		return
	}
	cr.c.rwc.SetReadDeadline(time.Time{})
	cr.watch.Store(watchArmed)
	if cr.timer == nil {
		cr.done = make(chan struct{}, 1)
		cr.timer = time.AfterFunc(clientGoneDelay, cr.backgroundRead)
	} else {
		cr.timer.Reset(clientGoneDelay)
	}
}

// backgroundRead runs on the timer's goroutine: it reads one byte unless
// abortPendingRead disarmed it first. cancel was set before the timer was
// armed.
func (cr *connReader) backgroundRead() {
	if !cr.watch.CompareAndSwap(watchArmed, watchRunning) {
		return
	}
	defer func() { cr.done <- struct{}{} }()
	n, err := cr.c.rwc.Read(cr.byteBuf[:])
	if n == 1 {
		cr.hasByte = true
	}
	if err != nil && !cr.aborting.Load() {
		cr.clientGone.Store(true)
		cr.cancel()
	}
}

// abortPendingRead disarms the background read, or stops it and waits
// for it.
func (cr *connReader) abortPendingRead() {
	if cr.watch.CompareAndSwap(watchArmed, watchOff) {
		cr.timer.Stop()
		return
	}
	if cr.watch.Load() != watchRunning {
		return
	}
	cr.aborting.Store(true)
	cr.c.rwc.SetReadDeadline(time.Unix(1, 0))
	<-cr.done
	cr.watch.Store(watchOff)
	cr.aborting.Store(false)
	cr.c.rwc.SetReadDeadline(time.Time{})
}

// chanListener hands connections to net/http's h2c server.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{}), addr: &net.TCPAddr{}}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// deliver passes c to the h2c server; false when it is closed.
func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// serveH2 runs the handler for an h2c stream with the timeouts of
// HTTP/1.1: BodyTimeout for each read of the request body (a stall fails
// the read with the same 408 *Error) and WriteTimeout for each write or
// flush of the answer (a stall resets the stream). net/http's own
// ReadTimeout and WriteTimeout would bound a whole stream instead, and
// cut long uploads and streamed answers.
//
// It sets r.TLS on streams of a TLS connection, and counts the stream
// against MaxConcurrentStreams for LimitHit.
func (s *Server) serveH2(w http.ResponseWriter, r *http.Request) {
	if hc, ok := r.Context().Value(h2ConnKey{}).(*hijackedConn); ok {
		r.TLS = hc.tlsState
		if !hc.started.Load() && hc.started.CompareAndSwap(false, true) {
			hc.firstStream.Stop()
		}
		if hc.streams.Add(1) == s.maxStreams {
			s.limitHit(LimitMaxConcurrentStreams)
		}
		defer hc.streams.Add(-1)
	}
	if e := checkH2Request(r); e != nil {
		writeH2Error(w, e)
		return
	}
	rc := http.NewResponseController(w)
	t := s.currentTimeouts()
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &h2Body{ReadCloser: r.Body, rc: rc, timeout: t.BodyTimeout}
	}
	s.Handler.ServeHTTP(&h2Writer{ResponseWriter: w, rc: rc, timeout: t.WriteTimeout}, r)
}

// checkH2Request holds an HTTP/2 request to the rules that readHead
// applies to HTTP/1.1 where net/http's HTTP/2 server does not: it checks
// that the fields hold no forbidden bytes, but takes any :method and
// :authority, from which the request line and Host sent to an instance
// are written ("GET /admin" as a method would put a second target in
// that line). Nil: the request may be served.
func checkH2Request(r *http.Request) *Error {
	switch {
	case !wire.IsToken(r.Method):
		return badRequest("malformed method")
	case r.Method == http.MethodConnect:
		return &Error{Status: http.StatusMethodNotAllowed, Reason: "CONNECT is not supported"}
	case !validHost(r.Host):
		return badRequest("malformed authority")
	}
	return nil
}

// writeH2Error answers an HTTP/2 stream with e as writeError does, but
// without Connection: close, which would end the connection's other
// streams too.
func writeH2Error(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(e.Status)
	io.WriteString(w, e.body())
}

// body is the JSON answer body for e.
func (e *Error) body() string {
	reason, _ := json.Marshal(e.Reason)
	return `{"error":` + string(reason) + "}\n"
}

// h2ConnKey is the context key of a handed-off connection's *hijackedConn
// in the contexts of its HTTP/2 streams.
type h2ConnKey struct{}

// h2ConnContext is the HTTP/2 server's ConnContext.
func h2ConnContext(ctx context.Context, nc net.Conn) context.Context {
	if hc, ok := nc.(*hijackedConn); ok {
		return context.WithValue(ctx, h2ConnKey{}, hc)
	}
	return ctx
}

// h2Body arms the stream's read deadline for the length of each Read
// only: net/http's deadline is a timer that would otherwise fire while the
// handler is busy elsewhere (writing upstream) and fail the body.
type h2Body struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
}

func (b *h2Body) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := b.ReadCloser.Read(p)
	b.rc.SetReadDeadline(time.Time{})
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = errBodyTimeout
	}
	return n, err
}

// h2Writer arms the stream's write deadline for the length of each Write
// and Flush only, so that an answer that streams slowly (long gaps between
// writes) is never cut, while one the client stops taking is. Unwrap gives
// http.ResponseController the rest.
type h2Writer struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (w *h2Writer) Write(p []byte) (int, error) {
	w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	n, err := w.ResponseWriter.Write(p)
	w.rc.SetWriteDeadline(time.Time{})
	return n, err
}

func (w *h2Writer) FlushError() error {
	w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	err := w.rc.Flush()
	w.rc.SetWriteDeadline(time.Time{})
	return err
}

func (w *h2Writer) Flush() { w.FlushError() }

func (w *h2Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
