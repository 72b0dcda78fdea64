package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/proxy"
	"github.com/sluice-lb/sluice/proxy/certs"
	"github.com/sluice-lb/sluice/proxy/h1"
)

// listener is the runtime of one configured listener: its socket, its
// server (HTTP) or proxy (TCP) and its access log. A reload that keeps the
// listener's address and protocol keeps all three and updates them in
// place; the app goroutine owns it.
type listener struct {
	cfg config.Listener
	ln  net.Listener
	log *accessLog // never nil; off when cfg.AccessLog is ""

	srv     *h1.Server         // http
	handler *proxy.HTTPHandler // http
	tcp     *proxy.TCPProxy    // tcp
	tls     *certs.Server      // nil unless the listener terminates TLS
	stopNow context.CancelFunc // ends waits for pressure and, for tcp, closes connections still open
	stopCtx context.Context    // done when stopNow is called
	done    chan struct{}      // closed when serving has ended
	closing atomic.Bool        // set by stopAccepting: Serve's error is expected

	// discovered are the http listener's routes made from Consul tags,
	// after those of cfg in its table (discover.go sets them).
	discovered []proxy.Route
}

// bind listens on addr; what names the listener in the error. Accepted
// connections get no TCP keep-alive probes (as with HAProxy's and nginx's
// defaults): every listener closes idle connections by its idle_timeout,
// and each connection is spared the four setsockopt calls that turn the
// probes on.
func bind(what, addr string) (net.Listener, error) {
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%s: address %s is already in use", what, addr)
		}
		return nil, fmt.Errorf("%s: cannot listen on %s: %w", what, addr, err)
	}
	return ln, nil
}

// httpOptions translates an http listener and the services it routes to;
// discovered are its routes made from Consul tags.
func httpOptions(l *config.Listener, services map[string]*service, e *env, log *proxy.AccessLog, discovered []proxy.Route) proxy.HTTPOptions {
	routes := make([]proxy.Route, 0, len(l.Routes)+len(discovered))
	for _, r := range l.Routes {
		routes = append(routes, proxy.Route{Host: r.Host, PathPrefix: r.PathPrefix, Service: services[r.Service].fwd,
			MaxBodyBytes: r.MaxBodyBytes})
	}
	routes = append(routes, discovered...)
	return proxy.HTTPOptions{
		Listener: l.Name, Routes: routes, Transport: e.transport, AccessLog: log, Logger: e.logger.Named("http"),
		TrustedProxies: l.TrustedProxies, Pressure: e.pressure, Metrics: e.metrics,
		RedirectHTTPS: l.RedirectHTTPS, HTTPSPort: l.HTTPSPort, HSTSMaxAge: l.HSTSMaxAge,
	}
}

// tcpOptions translates a tcp listener; tlsCfg is its TLS when it
// terminates, else nil. A passthrough listener forwards the client's own
// TLS session, so it never speaks TLS to instances itself even when a
// service has a tls block (its probes still do).
func tcpOptions(l *config.Listener, services map[string]*service, tlsCfg *tls.Config, e *env, log *proxy.AccessLog) proxy.TCPOptions {
	opts := proxy.TCPOptions{
		Listener: l.Name, IdleTimeout: l.IdleTimeout, TLS: tlsCfg, MaxConns: l.MaxConnections,
		AccessLog: log, Logger: e.logger.Named("tcp"), Pressure: e.pressure, Metrics: e.metrics,
	}
	if l.Service != "" {
		opts.Service = services[l.Service].fwd
	}
	for _, r := range l.SNIRoutes {
		fwd := services[r.Service].fwd
		fwd.TLS = nil
		opts.SNIRoutes = append(opts.SNIRoutes, proxy.SNIRoute{ServerName: r.Host, Service: fwd})
	}
	return opts
}

// tlsConfig is the listener's TLS for its server or proxy; nil when it
// does not terminate TLS.
func (l *listener) tlsConfig() *tls.Config {
	if l.tls == nil {
		return nil
	}
	return l.tls.Config()
}

// limits translates an http listener's connection and head limits.
func limits(l *config.Listener) h1.Limits {
	return h1.Limits{MaxConns: l.MaxConnections, MaxHeaderBytes: l.MaxHeaderBytes}
}

// timeouts translates an http listener's client-side timeouts.
func timeouts(l *config.Listener) h1.Timeouts {
	return h1.Timeouts{
		HeaderTimeout: l.RequestHeaderTimeout, BodyTimeout: l.RequestBodyTimeout,
		WriteTimeout: l.ResponseWriteTimeout, IdleTimeout: l.IdleTimeout,
	}
}

// newListener builds the runtime of cfg on the bound socket ln; certs is
// its TLS material when it terminates TLS (else nil); start begins
// serving.
func newListener(cfg *config.Listener, ln net.Listener, log *accessLog, certSet *certs.Set, services map[string]*service, e *env) *listener {
	l := &listener{cfg: *cfg, ln: ln, log: log, done: make(chan struct{})}
	l.stopCtx, l.stopNow = context.WithCancel(context.Background())
	if certSet != nil {
		l.tls = certs.NewServer(certSet)
	}
	switch cfg.Protocol {
	case config.ProtocolTCP:
		l.tcp = proxy.NewTCPProxy(tcpOptions(cfg, services, l.tlsConfig(), e, log.log()))
	default:
		l.handler = proxy.NewHTTPHandler(httpOptions(cfg, services, e, log.log(), nil))
		name, stopCtx := cfg.Name, l.stopCtx
		l.srv = &h1.Server{
			Handler:              l.handler,
			ConnCounter:          l.handler,
			LimitHit:             l.handler.LimitHit,
			TLSConfig:            l.tlsConfig(),
			MaxConcurrentStreams: uint32(cfg.MaxConcurrentStreams),
			AcceptGate:           func() { e.pressure.WaitAccept(stopCtx) },
			AcceptError:          func(err error) { e.pressure.Report(name, err) },
			ErrorLog:             e.errLog,
		}
		l.srv.SetTimeouts(timeouts(cfg))
		l.srv.SetLimits(limits(cfg))
	}
	return l
}

// start serves in the background; fatal receives the error of an HTTP
// server that stops on its own.
func (l *listener) start(fatal chan<- error) {
	if l.tcp != nil {
		go func() { defer close(l.done); l.tcp.Serve(l.stopCtx, l.ln) }()
		return
	}
	go func() {
		defer close(l.done)
		if err := l.srv.Serve(l.ln); !errors.Is(err, http.ErrServerClosed) && !l.closing.Load() {
			select {
			case fatal <- fmt.Errorf("listener %q: %w", l.cfg.Name, err):
			default:
			}
		}
	}()
}

// update applies cfg (same address, protocol, TLS shape and HTTP/2
// stream limit: see prepare) from the next request or connection on;
// connections already open stay. A replaced access log is not closed:
// requests and connections that began before may still write to it, and
// its file is closed by the runtime once nothing refers to it (see
// reopenFile).
func (l *listener) update(cfg *config.Listener, log *accessLog, services map[string]*service, e *env) {
	l.cfg = *cfg
	l.log = log
	if l.tcp != nil {
		l.tcp.Update(tcpOptions(cfg, services, l.tlsConfig(), e, log.log()))
		return
	}
	l.handler.Update(httpOptions(cfg, services, e, log.log(), l.discovered))
	l.srv.SetTimeouts(timeouts(cfg))
	l.srv.SetLimits(limits(cfg))
}

// swapCerts makes certSet the TLS material of a terminating listener for
// new handshakes; connections already open keep theirs.
func (l *listener) swapCerts(certSet *certs.Set) {
	if l.tls != nil && certSet != nil {
		l.tls.Swap(certSet)
	}
}

// stopAccepting closes the socket at once, so that its address is free
// when it returns.
func (l *listener) stopAccepting() {
	l.closing.Store(true)
	l.ln.Close()
}

// shutdown stops accepting and waits for open connections (HTTP: requests
// in flight finish, idle connections close) until ctx ends; then it closes
// what is left. It returns once serving has ended.
func (l *listener) shutdown(ctx context.Context) {
	l.stopAccepting()
	if l.srv != nil {
		if err := l.srv.Shutdown(ctx); err != nil {
			l.srv.Close()
		}
	} else {
		select {
		case <-l.done:
		case <-ctx.Done():
		}
	}
	l.stopNow()
	<-l.done
	l.log.close()
}

// accessLog is a listener's access log destination: off, stdout, stderr
// or a file that every reload reopens (so logrotate needs no
// copytruncate).
type accessLog struct {
	where string
	al    *proxy.AccessLog // nil when off
	file  *reopenFile      // nil unless a file
}

// log returns the proxy's access log, nil when off.
func (a *accessLog) log() *proxy.AccessLog { return a.al }

// openAccessLog opens where: "" is off, "stdout" and "stderr" are the
// process's, anything else a file opened for appending (created 0640:
// it holds client addresses).
func openAccessLog(where string) (*accessLog, error) {
	a := &accessLog{where: where}
	switch where {
	case "":
	case "stdout":
		a.al = proxy.NewAccessLog(os.Stdout)
	case "stderr":
		a.al = proxy.NewAccessLog(os.Stderr)
	default:
		f, err := openAppend(where)
		if err != nil {
			return nil, err
		}
		a.file = &reopenFile{}
		a.file.cur.Store(f)
		a.al = proxy.NewAccessLog(a.file)
	}
	return a, nil
}

func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("access log: %w", err)
	}
	return f, nil
}

// close closes the file of a file log; others need nothing.
func (a *accessLog) close() {
	if a.file != nil {
		a.file.close()
	}
}

// reopenFile is a file that can be replaced under concurrent writers
// without a lock: Write uses the newest file. A replaced *os.File is not
// closed here, since a write may have loaded it just before: the runtime
// closes it once no write holds it (an *os.File closes its descriptor when
// it becomes unreachable), within a garbage collection cycle (at most
// about two minutes on an idle process).
type reopenFile struct {
	cur atomic.Pointer[os.File]
}

func (r *reopenFile) Write(p []byte) (int, error) { return r.cur.Load().Write(p) }

// swap makes f the file written to.
func (r *reopenFile) swap(f *os.File) { r.cur.Store(f) }

// close closes the current file; for shutdown, once nothing writes.
func (r *reopenFile) close() { r.cur.Load().Close() }
