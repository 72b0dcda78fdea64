package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy"
	"github.com/sluice-lb/sluice/proxy/admin"
	"github.com/sluice-lb/sluice/proxy/h1"
)

// shutdownGrace bounds how long a stop waits for requests and connections
// in flight before closing them.
const shutdownGrace = 10 * time.Second

// serve runs the balancer described by cfg until SIGINT or SIGTERM. Every
// listener is bound before anything starts, so an address in use is a
// start-up error and nothing is left running.
func serve(cfg *config.Config, level string, stderr io.Writer) error {
	logLevel := hclog.LevelFromString(level)
	if logLevel == hclog.NoLevel {
		return fmt.Errorf("unknown log level %q", level)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "sluice", Level: logLevel, Output: stderr})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	lns, err := bindAll(cfg)
	if err != nil {
		return err
	}

	consul, err := api.NewClient(&api.Config{
		Address:    cfg.Consul.Address,
		Token:      cfg.Consul.Token,
		Datacenter: cfg.Consul.Datacenter,
	})
	if err != nil {
		closeAll(lns)
		return fmt.Errorf("consul client: %w", err)
	}

	// The cookie secret of sticky services that set none: random per
	// process, so cookies do not survive a restart or cross processes.
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		closeAll(lns)
		return fmt.Errorf("cookie secret: %w", err)
	}

	// The upstream client outlives the pools (deferred first: closed last);
	// each service's feed tells it which instance addresses are current.
	transport := proxy.NewUpstream()
	defer transport.Close()

	// Pools and watchers live until every listener has drained.
	poolCtx, stopPools := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	defer bg.Wait()
	defer stopPools()

	pools := make([]*balance.Pool, 0, len(cfg.Services))
	services := map[string]proxy.ServiceOptions{}
	for _, name := range cfg.ServiceNames() {
		svc := cfg.Services[name]
		opts := proxy.ServiceOptions{Name: name, Attempts: svc.Retry.Attempts}
		var sticky *balance.StickyOptions
		if s := svc.Sticky; s != nil {
			sticky = &balance.StickyOptions{Mode: s.Mode, CookieName: s.Cookie, TTL: s.TTL, Secret: []byte(s.Secret)}
			switch s.Mode {
			case balance.StickyCookie:
				opts.StickyCookie = s.Cookie
				if s.Secret == "" {
					sticky.Secret = secret
				}
			case balance.StickyHeader:
				opts.StickyHeader = s.Header
			}
		}
		build, err := balance.NewBuilder(name, svc.Strategy, sticky)
		if err != nil {
			closeAll(lns)
			return fmt.Errorf("service %q: %w", name, err)
		}
		poolOpts := balance.PoolOptions{
			Service: name, Strategy: svc.Strategy, Builder: build, SlowStart: svc.SlowStart, Logger: logger.Named("pool"),
		}
		if pv := svc.Passive; pv != nil {
			poolOpts.Passive = &balance.PassiveOptions{
				ConsecutiveFailures: pv.ConsecutiveFailures, EjectionTime: pv.EjectionTime,
				MaxEjectionTime: pv.MaxEjectionTime, MaxEjectionPercent: pv.MaxEjectionPercent,
			}
		}
		pool := balance.NewPool(poolOpts)
		pools = append(pools, pool)
		opts.Pool = pool
		opts.PerTryTimeout = svc.Retry.PerTryTimeout
		opts.ResponseHeaderTimeout = svc.ResponseHeaderTimeout
		opts.ResponseBodyTimeout = svc.ResponseBodyTimeout
		services[name] = opts
		if hc := svc.HealthCheck; hc != nil {
			prober := proxy.NewProber(pool, proxy.ProbeOptions{
				Type: proxy.ProbeType(hc.Type), Path: hc.Path, Interval: hc.Interval, Timeout: hc.Timeout, Rise: hc.Rise, Fall: hc.Fall,
			}, logger.Named("probe"))
			bg.Add(1)
			go func() { defer bg.Done(); prober.Run(poolCtx) }()
		}
		w := discovery.NewWatcher(consul.Health(), discovery.Options{
			Service:    name,
			Tag:        svc.Tag,
			WeightKey:  svc.WeightKey,
			Datacenter: cfg.Consul.Datacenter,
			Stale:      cfg.Consul.Stale,
			Logger:     logger.Named("discovery"),
		})
		updates := make(chan discovery.Update)
		bg.Add(3)
		go func() { defer bg.Done(); pool.Run(poolCtx) }()
		go func() { defer bg.Done(); w.Run(poolCtx, updates) }()
		go func() {
			defer bg.Done()
			feedPool(poolCtx, pool, updates, func(addrs []string) { transport.Track(name, addrs) })
		}()
	}

	errLog := logger.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})
	var servers []server
	var tcps []net.Listener
	serveErr := make(chan error, len(lns))
	var tcpWG sync.WaitGroup
	drainCtx, drainNow := context.WithCancel(context.Background())
	defer drainNow()
	// One account of sluice's own exhaustion (file descriptors, ports) for
	// every listener: while it lasts, no listener accepts.
	pressure := proxy.NewPressure(logger.Named("pressure"))
	// Access logs open before any listener serves, so a bad path stops
	// the start with nothing running.
	accessLogs := make([]*proxy.AccessLog, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		al, closeLog, err := openAccessLog(l.AccessLog)
		if err != nil {
			closeAll(lns)
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
		defer closeLog()
		accessLogs[i] = al
	}
	for i, l := range cfg.Listeners {
		ln, accessLog := lns[i], accessLogs[i]
		switch l.Protocol {
		case "tcp":
			tp := proxy.NewTCPProxy(proxy.TCPOptions{
				Listener: l.Name, Service: services[l.Service], IdleTimeout: l.IdleTimeout,
				AccessLog: accessLog, Logger: logger.Named("tcp"), Pressure: pressure,
			})
			tcps = append(tcps, ln)
			tcpWG.Add(1)
			go func() {
				defer tcpWG.Done()
				tp.Serve(drainCtx, ln)
			}()
		default:
			routes := make([]proxy.Route, 0, len(l.Routes))
			for _, r := range l.Routes {
				routes = append(routes, proxy.Route{Host: r.Host, PathPrefix: r.PathPrefix, Service: services[r.Service]})
			}
			srv := &h1.Server{
				Handler: proxy.NewHTTPHandler(proxy.HTTPOptions{
					Listener: l.Name, Routes: routes, Transport: transport, AccessLog: accessLog, Logger: logger.Named("http"),
					TrustedProxies: l.TrustedProxies, Pressure: pressure,
				}),
				AcceptGate:    func() { pressure.WaitAccept(drainCtx) },
				AcceptError:   func(err error) { pressure.Report(l.Name, err) },
				HeaderTimeout: l.RequestHeaderTimeout,
				BodyTimeout:   l.RequestBodyTimeout,
				WriteTimeout:  l.ResponseWriteTimeout,
				IdleTimeout:   l.IdleTimeout,
				ErrorLog:      errLog,
			}
			servers = append(servers, srv)
			go func() {
				if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
					serveErr <- fmt.Errorf("listener %q: %w", l.Name, err)
				}
			}()
		}
		logger.Info("listening", "listener", l.Name, "address", ln.Addr().String(), "protocol", l.Protocol)
	}
	adminLn := lns[len(lns)-1]
	adminSrv := newServer(admin.NewHandler(pools), errLog, 2*time.Minute)
	servers = append(servers, adminSrv)
	go func() {
		if err := adminSrv.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- fmt.Errorf("admin: %w", err)
		}
	}()
	logger.Info("admin listening", "address", adminLn.Addr().String())

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("stopping", "grace", shutdownGrace)
	case runErr = <-serveErr:
		logger.Error("stopping", "error", runErr)
	}

	shutCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	for _, ln := range tcps {
		ln.Close()
	}
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Shutdown(shutCtx); err != nil {
				srv.Close()
			}
		}()
	}
	tcpDone := make(chan struct{})
	go func() { tcpWG.Wait(); close(tcpDone) }()
	select {
	case <-tcpDone:
	case <-shutCtx.Done():
		drainNow()
		<-tcpDone
	}
	wg.Wait()
	logger.Info("stopped")
	return runErr
}

// server is an HTTP server that shuts down gracefully.
type server interface {
	Shutdown(context.Context) error
	Close() error
}

// newServer returns the admin API's HTTP server: 10 s to read request
// headers, 1 MiB of headers, idle keep-alive connections closed after
// idle; HTTP/1.1 and HTTP/2 without TLS (h2c).
func newServer(h http.Handler, errLog *log.Logger, idle time.Duration) *http.Server {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       idle,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          errLog,
		Protocols:         &protocols,
	}
}

// openAccessLog opens a listener's access log: "" is off, "stdout" and
// "stderr" are the process's, anything else a file opened for appending.
func openAccessLog(where string) (*proxy.AccessLog, func(), error) {
	switch where {
	case "":
		return nil, func() {}, nil
	case "stdout":
		return proxy.NewAccessLog(os.Stdout), func() {}, nil
	case "stderr":
		return proxy.NewAccessLog(os.Stderr), func() {}, nil
	}
	f, err := os.OpenFile(where, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("access log: %w", err)
	}
	return proxy.NewAccessLog(f), func() { f.Close() }, nil
}

// bindAll listens on every listener address, then the admin address (last).
// On failure it closes what it opened and names the listener.
func bindAll(cfg *config.Config) ([]net.Listener, error) {
	var lns []net.Listener
	bind := func(what, addr string) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll(lns)
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("%s: address %s is already in use", what, addr)
			}
			return fmt.Errorf("%s: cannot listen on %s: %w", what, addr, err)
		}
		lns = append(lns, ln)
		return nil
	}
	for _, l := range cfg.Listeners {
		if err := bind(fmt.Sprintf("listener %q", l.Name), l.Address); err != nil {
			return nil, err
		}
	}
	if err := bind("admin", cfg.Admin.Address); err != nil {
		return nil, err
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// feedPool turns discovery updates into pool changes until ctx is done.
// track is told the addresses of every new member set.
func feedPool(ctx context.Context, pool *balance.Pool, updates <-chan discovery.Update, track func([]string)) {
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			if u.Err != nil {
				_ = pool.SetError(ctx, u.Err)
				continue
			}
			members := make([]balance.Member, len(u.Instances))
			for i, in := range u.Instances {
				members[i] = balance.Member{ID: in.ID, Addr: in.HostPort(), Weight: in.Weight, Consul: in.Health, Invalid: in.Invalid}
			}
			_ = pool.SetMembers(ctx, u.Index, members)
			addrs := make([]string, 0, len(members))
			for _, m := range members {
				if m.Invalid == "" {
					addrs = append(addrs, m.Addr)
				}
			}
			track(addrs)
		}
	}
}
