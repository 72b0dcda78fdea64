package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sluice-lb/sluice/balance"
)

// ProbeType is the kind of an active probe.
type ProbeType string

// Probe types.
const (
	ProbeHTTP ProbeType = "http" // GET Path answers 2xx or 3xx (https with ProbeOptions.TLS)
	ProbeTCP  ProbeType = "tcp"  // a connection opens (and its TLS handshake succeeds, with ProbeOptions.TLS)
)

// ProbeTypes lists every ProbeType.
func ProbeTypes() []ProbeType { return []ProbeType{ProbeHTTP, ProbeTCP} }

// ParseProbeType returns the ProbeType named s, exactly as spelled.
func ParseProbeType(s string) (ProbeType, error) {
	for _, t := range ProbeTypes() {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("unknown probe type %q (want %q or %q)", s, ProbeHTTP, ProbeTCP)
}

// ProbeOptions configure sluice's own active health checks of a service's
// instances, beside Consul's.
type ProbeOptions struct {
	Type     ProbeType     // default ProbeHTTP
	Path     string        // http probe path
	Interval time.Duration // between probes of one instance, with ±10% jitter
	Timeout  time.Duration // per probe
	Rise     int           // successes in a row that make a failing instance passing
	Fall     int           // failures in a row that make an instance failing
	// TLS, when set, is the service's TLS configuration to its instances
	// (ServiceOptions.TLS): an http probe is an HTTPS GET with it (an
	// empty ServerName means the instance's host), and a tcp probe
	// completes a TLS handshake with it and closes, so that an instance
	// whose certificate sluice would refuse fails its probes. nil: plain.
	TLS *tls.Config
	// Intentions, when set (Consul Connect services), makes a probe that
	// the mesh's intentions refused count as neither success nor failure.
	// A tcp probe over TLS 1.3 ends with the handshake, before a sidecar
	// says no: it sees a denial as a success.
	Intentions Intentions
}

// Prober runs one probe loop per instance of a pool: a loop starts when an
// instance appears in a snapshot and stops when it leaves. Verdicts go to
// the pool (SetProbe), which publishes a new picker at once.
//
// A loop starts from the verdict the pool holds for its instance, so a
// prober that replaces another (new probe settings on reload) keeps a
// failing instance failing until Rise successes and a passing one passing
// until Fall failures. While a loop has a verdict it keeps the pool's in
// step with it: after each probe it sets it again if the pool's differs.
type Prober struct {
	pool   *balance.Pool
	opts   ProbeOptions
	client *http.Client
	dialer net.Dialer
	logger hclog.Logger
}

// NewProber returns a prober of pool's instances.
func NewProber(pool *balance.Pool, opts ProbeOptions, logger hclog.Logger) *Prober {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Prober{
		pool: pool,
		opts: opts,
		client: &http.Client{
			// A fresh connection per probe, as HAProxy does: a probe
			// must see a backend that stopped accepting.
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, DisableCompression: true,
				DialContext:     (&net.Dialer{Timeout: opts.Timeout}).DialContext,
				TLSClientConfig: opts.TLS},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Timeout:       opts.Timeout,
		},
		dialer: net.Dialer{Timeout: opts.Timeout},
		logger: logger,
	}
}

// Run follows the pool's snapshots until ctx is done, starting and stopping
// probe loops, and waits for them to end.
func (p *Prober) Run(ctx context.Context) {
	type loop struct {
		addr   string
		stats  *balance.Stats // identifies one life of the instance in the pool
		cancel context.CancelFunc
		done   chan struct{}
	}
	loops := map[string]*loop{}
	defer func() {
		for _, l := range loops {
			l.cancel()
			<-l.done
		}
	}()
	for {
		snap := p.pool.Load()
		seen := make(map[string]bool, len(snap.Members))
		for _, m := range snap.Members {
			if m.Invalid != "" {
				continue // never dialled: its address came from Consul malformed
			}
			seen[m.ID] = true
			if l := loops[m.ID]; l != nil && l.addr == m.Addr && l.stats == m.Stats {
				continue
			} else if l != nil {
				// The instance moved, or left and came back with a fresh
				// verdict in the pool: a new loop starts from that.
				l.cancel()
				<-l.done
			}
			lctx, cancel := context.WithCancel(ctx)
			l := &loop{addr: m.Addr, stats: m.Stats, cancel: cancel, done: make(chan struct{})}
			loops[m.ID] = l
			go func(id, addr string) {
				defer close(l.done)
				p.probeLoop(lctx, id, addr)
			}(m.ID, m.Addr)
		}
		for id, l := range loops {
			if !seen[id] {
				l.cancel()
				<-l.done
				delete(loops, id)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-snap.Next():
		}
	}
}

// probeLoop probes one instance until ctx is done. The verdict starts as
// the pool's: unknown (eligible as far as probes go) for a new instance,
// whose first success makes it passing; Fall failures in a row make an
// instance failing, and Rise successes in a row bring a failing instance
// back.
func (p *Prober) probeLoop(ctx context.Context, id, addr string) {
	state := p.poolVerdict(id)
	if state != balance.ProbePassing && state != balance.ProbeFailing {
		state = balance.ProbeUnknown
	}
	var successes, failures int
	// The first probe runs within a tenth of an interval, so a new
	// instance gets a verdict quickly and probes of many instances spread.
	wait := time.Duration(rand.Int64N(int64(p.opts.Interval)/10 + 1))
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		err := p.probe(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if denied(ctx, p.opts.Intentions, err) != nil {
			// Refused by intentions: says nothing about the instance.
			timer.Reset(p.opts.Interval)
			continue
		}
		next := state
		if err == nil {
			successes, failures = successes+1, 0
			if state == balance.ProbeUnknown || (state == balance.ProbeFailing && successes >= p.opts.Rise) {
				next = balance.ProbePassing
			}
		} else {
			successes, failures = 0, failures+1
			if state != balance.ProbeFailing && failures >= p.opts.Fall {
				next = balance.ProbeFailing
			}
		}
		if next != state {
			reason := "probe passed"
			if err != nil {
				reason = err.Error()
			}
			p.logger.Info("probe state changed", "service", p.pool.Service(), "instance", id,
				"from", state, "to", next, "reason", reason)
			state = next
			if p.pool.SetProbe(ctx, id, state) != nil {
				return
			}
		} else if state != balance.ProbeUnknown && p.poolVerdict(id) != state {
			// The pool's verdict lags (the seed was read before a
			// verdict of the previous loop was applied) or another
			// writer changed it: this loop's stands.
			if p.pool.SetProbe(ctx, id, state) != nil {
				return
			}
		}
		// ±10% jitter keeps the probes of many instances from aligning.
		jitter := time.Duration(rand.Int64N(int64(p.opts.Interval)/5+1)) - p.opts.Interval/10
		timer.Reset(p.opts.Interval + jitter)
	}
}

// poolVerdict returns the probe verdict the pool's current snapshot holds
// for id, or "" when id is not a member.
func (p *Prober) poolVerdict(id string) balance.ProbeState {
	ms := p.pool.Load().Members
	i := sort.Search(len(ms), func(i int) bool { return ms[i].ID >= id })
	if i < len(ms) && ms[i].ID == id {
		return ms[i].Probe
	}
	return ""
}

// probe checks one instance once.
func (p *Prober) probe(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	if p.opts.Type == ProbeTCP {
		c, err := p.dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		if p.opts.TLS != nil {
			tc, err := handshakeTLS(ctx, c, addr, p.opts.TLS, nil)
			if err != nil {
				return err
			}
			c = tc
		}
		return c.Close()
	}
	scheme := "http://"
	if p.opts.TLS != nil {
		scheme = "https://"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+addr+p.opts.Path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "sluice-probe")
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("probe answered %d", resp.StatusCode)
	}
	return nil
}
