package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
)

// TCPOptions configure a TCP proxy for one service.
type TCPOptions struct {
	Service ServiceOptions
	// DialTimeout bounds each connection attempt to an instance; default 5s.
	DialTimeout time.Duration
	Logger      hclog.Logger
}

// TCPProxy forwards each accepted connection to an instance of one service,
// trying another instance when the dial fails.
type TCPProxy struct {
	opts   TCPOptions
	dialer net.Dialer
	wg     sync.WaitGroup
}

// NewTCPProxy returns a proxy; call Serve with a listener.
func NewTCPProxy(opts TCPOptions) *TCPProxy {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.Service.Attempts <= 0 {
		opts.Service.Attempts = 2
	}
	opts.Service.Attempts = min(opts.Service.Attempts, balance.MaxTries)
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	return &TCPProxy{opts: opts, dialer: net.Dialer{Timeout: opts.DialTimeout}}
}

// Serve accepts connections until ln is closed, then waits for the open
// connections to finish or ctx to end, whichever is first. Closing ln is
// the caller's way to stop accepting.
func (p *TCPProxy) Serve(ctx context.Context, ln net.Listener) error {
	connCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var acceptErr error
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if !errors.Is(err, net.ErrClosed) {
				acceptErr = err
			}
			break
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.HandleConn(connCtx, c)
		}()
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		cancel()
		<-done
	}
	return acceptErr
}

// HandleConn proxies one client connection and closes it. Cancelling ctx
// closes both sides.
func (p *TCPProxy) HandleConn(ctx context.Context, client net.Conn) {
	defer client.Close()
	var info balance.PickInfo
	if ap, err := netip.ParseAddrPort(client.RemoteAddr().String()); err == nil {
		info.Client = ap.Addr().Unmap()
	}
	var upstream net.Conn
	var res balance.PickResult
	for attempt := 0; attempt < p.opts.Service.Attempts; attempt++ {
		r, err := p.opts.Service.Pool.Load().Picker.Pick(info)
		if err != nil {
			p.opts.Logger.Debug("no instance for connection", "service", p.opts.Service.Name, "error", err)
			return
		}
		c, err := p.dialer.DialContext(ctx, "tcp", r.Endpoint.Addr)
		if err == nil {
			upstream, res = c, r
			break
		}
		r.Done(err)
		info.Tried.Add(r.Endpoint)
		p.opts.Logger.Debug("dial failed", "service", p.opts.Service.Name, "instance", r.Endpoint.ID, "error", err)
	}
	if upstream == nil {
		return
	}
	defer res.Done(nil)
	defer upstream.Close()

	stop := context.AfterFunc(ctx, func() {
		client.Close()
		upstream.Close()
	})
	defer stop()
	done := make(chan struct{})
	go func() {
		copyToBackend(upstream, client)
		close(done)
	}()
	copyToClient(client, upstream)
	<-done
}

// copyToBackend copies client bytes upstream, then half-closes upstream.
func copyToBackend(upstream, client net.Conn) { copyHalf(upstream, client) }

// copyToClient copies upstream bytes to the client, then half-closes the client.
func copyToClient(client, upstream net.Conn) { copyHalf(client, upstream) }

// copyHalf copies src to dst (io.Copy between *net.TCPConn uses splice) and
// then closes dst for writing so the peer sees EOF; a dst that cannot
// half-close is closed.
func copyHalf(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
		return
	}
	dst.Close()
	src.Close()
}
