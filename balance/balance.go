// Package balance holds the per-service pools, their immutable snapshots and
// the pickers (strategies) that choose an endpoint for each request.
//
// Contract (grpc-go balancer style): one goroutine per service, the pool
// owner, is the only writer. Every change publishes a new *Snapshot with a
// new Picker through an atomic pointer. The request path does one atomic
// load and one Pick: no mutex, no allocation. Live counters (in-flight,
// requests) live in *Stats keyed by instance ID and survive rebuilds.
//
// This package does not import net/http: HTTP and TCP listeners share it.
package balance

import (
	"errors"
	"net/netip"
	"sync/atomic"
)

// ErrNoEndpoint is returned by Pick when no eligible endpoint is left to try.
var ErrNoEndpoint = errors.New("no eligible instance")

// Stats are the live counters of one instance. They are created when an
// instance first appears in a pool and carried across every rebuild while
// the instance stays, so a Consul update does not reset them. All fields are
// safe for concurrent use.
type Stats struct {
	inflight atomic.Int64
	requests atomic.Uint64
	failures atomic.Uint64
	errors   [numErrorKinds]atomic.Uint64 // by ErrorKind, for metrics
	// ewma is the peak EWMA of response time in nanoseconds (float64
	// bits), last the clock reading of its last update; see ewma.go.
	ewma atomic.Uint64
	last atomic.Int64
	// consec counts failures in a row for passive ejection; reported is
	// set while a report of this instance waits for the pool owner.
	consec   atomic.Int64
	reported atomic.Bool
	// threshold is the passive ejection's failure threshold, 0 without
	// passive ejection; the pool owner stores it, the request path reads it.
	threshold atomic.Int64
	// ejections counts the passive ejections of this instance (owner only
	// writes).
	ejections atomic.Uint64
	// Set once when the pool creates the Stats: the instance ID, the
	// pool's clock and the owner's channel for instances that reach the
	// threshold.
	id      string
	clock   func() int64
	failing chan<- *Stats
}

// newStats returns counters that read time from clock (nanoseconds, monotonic).
func newStats(clock func() int64) *Stats { return &Stats{clock: clock} }

// Inflight reports the picks of this instance whose Done has not been called.
func (s *Stats) Inflight() int64 { return s.inflight.Load() }

// Requests reports how many times this instance was picked.
func (s *Stats) Requests() uint64 { return s.requests.Load() }

// Failures reports how many picks of this instance ended with a non-nil Done error.
func (s *Stats) Failures() uint64 { return s.failures.Load() }

// Ejections reports how many times passive ejection took this instance out
// of rotation while it was in the pool.
func (s *Stats) Ejections() uint64 { return s.ejections.Load() }

// Endpoint is one eligible instance as a picker sees it. Endpoints are
// immutable and belong to one snapshot; Stats is shared across snapshots.
type Endpoint struct {
	ID     string // Consul instance ID, unique within the service
	Addr   string // host:port to dial
	Weight int    // effective weight, >= 1
	Stats  *Stats
}

// PickInfo is the per-request input of a picker. It is passed by value and
// never retained.
type PickInfo struct {
	// Client is the client's address (for ip_hash and source_ip stickiness).
	Client netip.Addr
	// Key is the affinity key of a sticky service: the cookie value in
	// cookie mode, the header value in header mode; "" when absent.
	Key string
	// Tried lists the instances this request already tried; Pick never
	// returns one of them.
	Tried Tried
}

// MaxTries bounds the instances a single request may try (retry.attempts).
const MaxTries = 10

// Tried is a fixed-size set of instances already tried by one request. It
// lives on the caller's stack; the zero value is empty.
type Tried struct {
	n     int
	stats [MaxTries]*Stats
}

// Add records ep as tried. Beyond MaxTries entries it is a no-op.
func (t *Tried) Add(ep *Endpoint) {
	if t.n < MaxTries {
		t.stats[t.n] = ep.Stats
		t.n++
	}
}

// Has reports whether ep was tried.
func (t *Tried) Has(ep *Endpoint) bool {
	for i := 0; i < t.n; i++ {
		if t.stats[i] == ep.Stats {
			return true
		}
	}
	return false
}

// Len reports how many instances were tried.
func (t *Tried) Len() int { return t.n }

// PickResult is the outcome of a successful Pick. The caller must call Done
// exactly once when the request (or connection) ends.
type PickResult struct {
	Endpoint *Endpoint
	// SetCookie, when non-nil, is the Set-Cookie header value (one
	// element, shared and read-only) that pins the client to Endpoint: the
	// request carried no valid cookie for an eligible instance.
	SetCookie []string
	// start is the clock reading at the pick when the strategy measures
	// response times (ewma) and the time is not yet recorded, else 0;
	// timed marks such picks for the failure penalty.
	start int64
	timed bool
}

// Done ends the pick: it decrements the in-flight count, records a failure
// when err is non-nil and, for latency-aware strategies, feeds the response
// time of a success into the instance's EWMA. It does not allocate.
//
// A failure is what passive ejection counts: a connection failure or a 5xx
// answer. Use Cancel for picks that end without a verdict on the instance.
func (r PickResult) Done(err error) {
	s := r.Endpoint.Stats
	s.inflight.Add(-1)
	if err != nil {
		s.failures.Add(1)
		s.fail()
		if r.timed {
			// A failure costs like a very slow answer, so a latency-aware
			// strategy does not favour an instance that fails fast.
			s.observe(s.clock(), ewmaFailurePenalty)
		}
		return
	}
	if s.consec.Load() != 0 {
		s.consec.Store(0)
	}
	if r.start != 0 {
		now := s.clock()
		s.observe(now, now-r.start)
	}
}

// Responded records the response time of a latency-aware pick when the
// answer begins (HTTP response headers, TCP connection established), so a
// long body or a long-lived stream does not count as a slow answer. Done
// then records only the outcome. It is a no-op for other strategies.
func (r *PickResult) Responded() {
	if r.start != 0 {
		s := r.Endpoint.Stats
		now := s.clock()
		s.observe(now, now-r.start)
		r.start = 0
	}
}

// Cancel ends the pick without judging the instance, for example when the
// client went away.
func (r PickResult) Cancel() { r.Endpoint.Stats.inflight.Add(-1) }

// fail counts a failure in a row and, from the threshold on, tells the pool
// owner without blocking: at most one report waits at a time, and a report
// that finds the channel full is retried by the next failure.
func (s *Stats) fail() {
	threshold := s.threshold.Load()
	if threshold <= 0 {
		return
	}
	if s.consec.Add(1) >= threshold && s.reported.CompareAndSwap(false, true) {
		select {
		case s.failing <- s:
		default:
			s.reported.Store(false)
		}
	}
}

// Picker chooses an endpoint for one request. Implementations are immutable
// after Build and safe for concurrent use; Pick must not block, lock or
// allocate.
type Picker interface {
	Pick(info PickInfo) (PickResult, error)
}

// picked marks ep as picked (in-flight and request counters) and returns the result.
func picked(ep *Endpoint) (PickResult, error) {
	ep.Stats.inflight.Add(1)
	ep.Stats.requests.Add(1)
	return PickResult{Endpoint: ep}, nil
}

// ErrorKind classifies an instance's failure for metrics
// (sluice_upstream_errors_total's kind label).
type ErrorKind uint8

const (
	ErrorConnect  ErrorKind = iota // the connection could not be made
	ErrorTimeout                   // no answer, or the answer stalled, within its timeout
	ErrorReset                     // the connection broke (reset, or closed early)
	ErrorProtocol                  // the answer was malformed (bad framing, bad status line)
	ErrorStatus                    // a 5xx answer
	numErrorKinds
)

// ErrorKinds lists every ErrorKind, in order.
func ErrorKinds() []ErrorKind {
	return []ErrorKind{ErrorConnect, ErrorTimeout, ErrorReset, ErrorProtocol, ErrorStatus}
}

// String is the kind's label value.
func (k ErrorKind) String() string {
	switch k {
	case ErrorConnect:
		return "connect"
	case ErrorTimeout:
		return "timeout"
	case ErrorReset:
		return "reset"
	case ErrorProtocol:
		return "protocol"
	case ErrorStatus:
		return "status"
	}
	return "unknown"
}

// CountError counts one failure of the instance by kind. It takes no lock
// and does not allocate.
func (s *Stats) CountError(k ErrorKind) {
	if k < numErrorKinds {
		s.errors[k].Add(1)
	}
}

// Errors reports the failures of kind k counted so far.
func (s *Stats) Errors(k ErrorKind) uint64 {
	if k < numErrorKinds {
		return s.errors[k].Load()
	}
	return 0
}
