package proxy

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Backoff of the accept pause under local resource exhaustion.
const (
	pressureMinPause = 5 * time.Millisecond
	pressureMaxPause = time.Second
	// pressureLogEvery is the shortest time between two Warn lines of
	// one listener.
	pressureLogEvery = time.Second
	// pressureStrain is how long after an exhaustion accept loops admit
	// one client at a time.
	pressureStrain = time.Second
)

// IsLocalResourceError reports whether err (a dial or accept error, in any
// wrapping) means that sluice itself ran out of a resource: file
// descriptors (EMFILE, ENFILE), socket buffers or memory (ENOBUFS,
// ENOMEM) or local addresses and ephemeral ports (EADDRNOTAVAIL). Such an
// error says nothing about the instance that was dialled.
func IsLocalResourceError(err error) bool {
	if err == nil {
		return false
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL:
		return true
	}
	return false
}

// Pressure tracks sluice's own resource exhaustion (see
// IsLocalResourceError) for the listeners that share it, normally one per
// process since descriptors and ports are per-process. Listeners report
// every dial outcome and every failed accept to Report and call
// WaitAccept before each accept, so that while sluice cannot serve new
// clients they wait in the kernel's listen backlog instead of being
// accepted and failed, and no instance is blamed for it.
//
// Each reported exhaustion pauses accepting: for 5 ms, doubled for every
// exhaustion reported after the previous pause ended, up to 1 s; a
// successful dial resets the doubling. Exhaustion is counted (Count) and
// logged at Warn at most once a second per listener, each line giving the
// count since the previous one. A Pressure is safe for concurrent use; the
// zero value is not usable, call NewPressure.
type Pressure struct {
	logger hclog.Logger
	base   time.Time // origin of until, read through the monotonic clock
	count  atomic.Uint64
	// until is when accepting may resume, in nanoseconds since base; 0
	// when never paused.
	until atomic.Int64
	// pause is the length of the last pause, 0 after a successful dial.
	pause atomic.Int64
	// last is when the last exhaustion was reported, in nanoseconds
	// since base; 0 when never.
	last atomic.Int64

	mu   sync.Mutex // serialises exhaustion reports and guards logs
	logs map[string]*pressureLog
}

// pressureLog is the rate-limited Warn state of one listener.
type pressureLog struct {
	last    time.Time   // when the last line was written
	pending uint64      // exhaustions since the last line
	err     error       // the latest of them
	flush   *time.Timer // writes the pending count; nil when none is due
}

// NewPressure returns a Pressure that logs to logger (nil: nowhere).
func NewPressure(logger hclog.Logger) *Pressure {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Pressure{logger: logger, base: time.Now(), logs: map[string]*pressureLog{}}
}

// Report records the outcome of a dial or accept on the named listener
// (the name is only for the log; "" is allowed) and reports whether err
// was local resource exhaustion. Then the caller must not blame the
// instance (cancel its pick, balance.PickResult.Cancel) nor retry on
// another instance as if this one had failed; it may retry once
// WaitAccept returns. A nil err is a successful dial and resets the
// backoff; it costs one atomic load when there is nothing to reset. Other
// errors are ignored and return false.
func (p *Pressure) Report(listener string, err error) bool {
	if err == nil {
		if p.pause.Load() != 0 {
			p.pause.Store(0)
		}
		return false
	}
	if !IsLocalResourceError(err) {
		return false
	}
	p.count.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Since(p.base)
	p.last.Store(int64(now))
	if now >= time.Duration(p.until.Load()) {
		// Not paused: a new pause, longer than the last one unless a
		// dial succeeded since. Reports during a pause (dials that were
		// already under way) neither extend nor double it.
		pause := min(max(2*time.Duration(p.pause.Load()), pressureMinPause), pressureMaxPause)
		p.pause.Store(int64(pause))
		p.until.Store(int64(now + pause))
	}
	p.logLocked(listener, err)
	return true
}

// logLocked writes the Warn line of listener now, or counts err for the
// line due when a second has passed since the last one. p.mu is held.
func (p *Pressure) logLocked(listener string, err error) {
	l := p.logs[listener]
	if l == nil {
		l = &pressureLog{}
		p.logs[listener] = l
	}
	l.pending++
	l.err = err
	if l.flush != nil {
		return
	}
	if wait := pressureLogEvery - time.Since(l.last); !l.last.IsZero() && wait > 0 {
		l.flush = time.AfterFunc(wait, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			l.flush = nil
			p.writeLocked(listener, l)
		})
		return
	}
	p.writeLocked(listener, l)
}

// writeLocked writes the pending count of l as one Warn line. p.mu is held.
func (p *Pressure) writeLocked(listener string, l *pressureLog) {
	if l.pending == 0 {
		return
	}
	p.logger.Warn("sluice is out of local resources (descriptors, ports or memory): pausing accepts; instances are not blamed",
		"listener", listener, "count", l.pending, "error", l.err, "pause", time.Duration(p.pause.Load()))
	l.last, l.pending, l.err = time.Now(), 0, nil
}

// WaitAccept blocks until no pause of a reported exhaustion is in
// effect, or until ctx ends, whose error it then returns. It returns nil at once when
// not paused, after one atomic load. Accept loops call it before every
// accept; a dial that failed with local exhaustion may be retried once it
// returns.
func (p *Pressure) WaitAccept(ctx context.Context) error {
	for {
		until := time.Duration(p.until.Load())
		if until == 0 {
			return nil
		}
		d := until - time.Since(p.base)
		if d <= 0 {
			return nil
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// strained reports whether an exhaustion was reported within the last
// second: sluice is at its limit, and accept loops admit one client at a
// time.
func (p *Pressure) strained() bool {
	last := p.last.Load()
	return last != 0 && time.Since(p.base) < time.Duration(last)+pressureStrain
}

// Count reports how many local exhaustions were reported since NewPressure.
func (p *Pressure) Count() uint64 { return p.count.Load() }
