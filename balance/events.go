package balance

import (
	"sync"
	"time"
)

// DefaultEventLogSize is how many events an EventLog keeps when NewEventLog
// is given a size below 1.
const DefaultEventLogSize = 100

// EventKind names a pool transition (or, for EventReload, a change the app
// records).
type EventKind string

// The values of EventKind.
const (
	EventAdded          EventKind = "added"            // instance joined the pool; Detail: address and Consul health
	EventRemoved        EventKind = "removed"          // instance left the pool
	EventEligible       EventKind = "eligible"         // instance became eligible
	EventIneligible     EventKind = "ineligible"       // instance became (or joined) ineligible; Detail: the reason
	EventProbe          EventKind = "probe"            // active probe verdict changed; Detail: "old -> new"
	EventEjected        EventKind = "ejected"          // passive ejection; Detail: for how long
	EventEjectionEnded  EventKind = "ejection_ended"   // the ejection's time ran out
	EventConsulError    EventKind = "consul_error"     // a registry query failed (again with each new message); Detail: the error
	EventConsulRecovery EventKind = "consul_recovered" // the first good answer after an error
	EventReload         EventKind = "reload"           // configuration start or reload; Detail: the outcome
)

// Event is one recorded transition. Instance is "" for service-level
// events, Service "" for process-level ones (reloads).
type Event struct {
	Seq      uint64    `json:"seq"` // 1 for the first event of the log, then +1 each
	Time     time.Time `json:"time"`
	Service  string    `json:"service,omitempty"`
	Instance string    `json:"instance,omitempty"`
	Kind     EventKind `json:"kind"`
	Detail   string    `json:"detail,omitempty"`
}

// EventLog is a bounded ring of the last events of every pool that shares
// it (and of the app). Pool owners write at each transition, never per
// request; readers copy out. A mutex guards it: it is never touched by
// Pick or Done. A nil *EventLog records nothing.
type EventLog struct {
	now     func() time.Time
	mu      sync.Mutex
	ring    []Event // len == cap once full; oldest at ring[next%cap]
	seq     uint64  // Seq of the newest event; 0 when empty
	changed chan struct{}
}

// NewEventLog returns a log keeping the last size events (DefaultEventLogSize
// when size < 1), timestamped with now (time.Now when nil).
func NewEventLog(size int, now func() time.Time) *EventLog {
	if size < 1 {
		size = DefaultEventLogSize
	}
	if now == nil {
		now = time.Now
	}
	return &EventLog{now: now, ring: make([]Event, 0, size), changed: make(chan struct{})}
}

// Add records e with the next Seq and, when e.Time is zero, the log's
// clock; the oldest event is dropped when the ring is full. It never
// blocks on readers.
func (l *EventLog) Add(e Event) {
	if l == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	l.mu.Lock()
	l.seq++
	e.Seq = l.seq
	if len(l.ring) < cap(l.ring) {
		l.ring = append(l.ring, e)
	} else {
		l.ring[(l.seq-1)%uint64(cap(l.ring))] = e
	}
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// Events returns a copy of the events kept, oldest first, and the Seq of
// the newest (0 when none was ever added).
func (l *EventLog) Events() ([]Event, uint64) {
	if l == nil {
		return nil, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Event, 0, len(l.ring))
	if len(l.ring) < cap(l.ring) {
		return append(out, l.ring...), l.seq
	}
	start := l.seq % uint64(cap(l.ring))
	out = append(out, l.ring[start:]...)
	return append(out, l.ring[:start]...), l.seq
}

// Changed returns a channel closed by the next Add. A nil log's channel is
// never closed.
func (l *EventLog) Changed() <-chan struct{} {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}
