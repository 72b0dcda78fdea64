package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/cmd/sluice/config"
)

// shutdownGrace bounds how long a stop waits for requests and connections
// in flight before closing them; a listener removed by a reload drains
// for as long.
const shutdownGrace = 10 * time.Second

// signals are the signals serve handles. run makes them with
// notifySignals before anything else, so a SIGHUP during start-up is a
// reload (taken once running), never a kill.
type signals struct {
	// hup has room for one: SIGHUPs that arrive during a reload coalesce
	// into one more reload.
	hup chan os.Signal
	// stop is apart from hup, so no burst of SIGHUPs can crowd out a
	// SIGINT or SIGTERM.
	stop chan os.Signal
}

func notifySignals() *signals {
	s := &signals{hup: make(chan os.Signal, 1), stop: make(chan os.Signal, 1)}
	signal.Notify(s.hup, syscall.SIGHUP)
	signal.Notify(s.stop, syscall.SIGINT, syscall.SIGTERM)
	return s
}

// release stops the delivery of the signals.
func (s *signals) release() {
	signal.Stop(s.hup)
	signal.Stop(s.stop)
}

// serve runs the balancer described by cfg (read from path) until SIGINT
// or SIGTERM, reloading path on every SIGHUP. Every socket is bound before
// anything starts, so an address in use is a start-up error and nothing is
// left running. On SIGINT or SIGTERM a register block's registration is
// removed first and sluice serves on for its shutdown_delay; then it
// drains for up to shutdownGrace.
func serve(path string, cfg *config.Config, level string, stderr io.Writer, sigs *signals) error {
	logLevel := hclog.LevelFromString(level)
	if logLevel == hclog.NoLevel {
		return fmt.Errorf("unknown log level %q", level)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "sluice", Level: logLevel, Output: stderr})
	a, err := newApp(path, version, logger)
	if err != nil {
		return err
	}
	if err := a.start(cfg); err != nil {
		a.shutdown(0)
		return err
	}
	var runErr error
loop:
	for {
		select {
		case <-sigs.hup:
			a.reload()
		case u := <-a.disco.updates:
			a.onCatalog(u)
		case <-a.disco.ready:
			a.reconcileDiscovery(false)
		case sig := <-sigs.stop:
			logger.Info("stopping", "signal", sig.String(), "grace", shutdownGrace)
			a.deregisterFirst(sigs.stop) // register.go; no delay without a register block
			break loop
		case runErr = <-a.fatal:
			logger.Error("stopping", "error", runErr)
			break loop
		}
	}
	a.shutdown(shutdownGrace)
	logger.Info("stopped")
	return runErr
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
