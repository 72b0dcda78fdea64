package admin

import (
	"math"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// routeKey names a route's series: its listener, route and service labels.
type routeKey struct{ listener, route, service string }

// instanceKey names an instance: its service and ID.
type instanceKey struct{ service, id string }

// bucket is one cumulative histogram bucket.
type bucket struct{ upper, count float64 }

// routeSample is a route's counters at one gather.
type routeSample struct {
	count, errors float64  // requests, and of those 5xx answers
	buckets       []bucket // cumulative, ascending, the last one +Inf
}

// sample is one gather: the counters the rates are derived from.
type sample struct {
	at        time.Time
	routes    map[routeKey]*routeSample
	conns     map[string]float64         // open connections by listener
	instances map[instanceKey][2]float64 // requests, errors
}

func (s *sample) route(m *dto.Metric) *routeSample {
	k := routeKey{labelValue(m, "listener"), labelValue(m, "route"), labelValue(m, "service")}
	rs := s.routes[k]
	if rs == nil {
		rs = &routeSample{}
		s.routes[k] = rs
	}
	return rs
}

// window holds the samples of the last dashboardWindow, oldest first: the
// oldest is the base every rate is measured from. It belongs to one
// sampleLoop.
type window struct{ samples []*sample }

// add appends s and drops the samples that are no longer needed as a base.
func (w *window) add(s *sample) {
	w.samples = append(w.samples, s)
	drop := 0
	for drop+1 < len(w.samples) && s.at.Sub(w.samples[drop+1].at) >= dashboardWindow {
		drop++
	}
	if drop > 0 {
		w.samples = append(w.samples[:0], w.samples[drop:]...)
	}
}

func (w *window) newest() *sample {
	if len(w.samples) == 0 {
		return nil
	}
	return w.samples[len(w.samples)-1]
}

// span is the time the rates cover; 0 with fewer than two samples.
func (w *window) span() time.Duration {
	if len(w.samples) < 2 {
		return 0
	}
	return w.newest().at.Sub(w.samples[0].at)
}

// The rates are increases over the window summed sample by sample, as
// Prometheus' increase() does, so that a counter reset anywhere in the
// window (a reload deleted a route's series and it was made anew, an
// instance left the pool and came back with new counters) loses neither
// what came before it nor what came after: a step in which a counter went
// down counts the counter's whole new value, and a sample without the
// series counts as 0 (the series did not exist then).

// routeFrame derives a route's rates over the window.
func (w *window) routeFrame(k routeKey) RouteFrame {
	rf := RouteFrame{Route: k.route, Service: k.service}
	secs := w.span().Seconds()
	if secs <= 0 || w.newest().routes[k] == nil {
		return rf
	}
	var n, errs float64
	var hist []bucket // increases per bucket, cumulative
	prev := w.samples[0].routes[k]
	for _, s := range w.samples[1:] {
		cur := s.routes[k]
		if cur == nil {
			prev = nil
			continue
		}
		if prev == nil {
			prev = &routeSample{}
		}
		if cur.count < prev.count || cur.errors < prev.errors {
			n, errs = n+cur.count, errs+cur.errors
		} else {
			n, errs = n+cur.count-prev.count, errs+cur.errors-prev.errors
		}
		hist = addBuckets(hist, prev.buckets, cur.buckets)
		prev = cur
	}
	rps := n / secs
	rf.RPS = &rps
	if n > 0 {
		share := min(errs/n, 1)
		rf.ErrorRate = &share
	}
	rf.P50 = quantile(0.5, hist)
	rf.P99 = quantile(0.99, hist)
	return rf
}

// addBuckets adds the increase of a histogram from prev to cur to sum and
// returns it. A histogram whose layout changed or whose count went down
// was reset: all of cur counts. sum restarts when the layout changes, so
// it always has cur's bounds.
func addBuckets(sum, prev, cur []bucket) []bucket {
	if len(cur) == 0 {
		return sum
	}
	if !sameBounds(sum, cur) {
		sum = make([]bucket, len(cur))
		for i, b := range cur {
			sum[i].upper = b.upper
		}
	}
	reset := !sameBounds(prev, cur) || prev[len(prev)-1].count > cur[len(cur)-1].count
	for i, b := range cur {
		sum[i].count += b.count
		if !reset {
			sum[i].count -= prev[i].count
		}
	}
	return sum
}

func sameBounds(a, b []bucket) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].upper != b[i].upper {
			return false
		}
	}
	return true
}

// instanceRates derives an instance's requests per second and errors over
// the window.
func (w *window) instanceRates(k instanceKey) (rps, errs *float64) {
	secs := w.span().Seconds()
	if secs <= 0 {
		return nil, nil
	}
	if _, ok := w.newest().instances[k]; !ok {
		return nil, nil
	}
	var n, e float64
	prev, known := w.samples[0].instances[k]
	for _, s := range w.samples[1:] {
		cur, ok := s.instances[k]
		if !ok {
			known = false
			continue
		}
		if !known {
			prev = [2]float64{}
		}
		if cur[0] < prev[0] || cur[1] < prev[1] {
			n, e = n+cur[0], e+cur[1]
		} else {
			n, e = n+cur[0]-prev[0], e+cur[1]-prev[1]
		}
		prev, known = cur, true
	}
	r := n / secs
	return &r, &e
}

// quantile estimates the q-quantile of cumulative buckets as Prometheus'
// histogram_quantile does: linear within the bucket that holds it, the
// highest finite bound when it falls in +Inf. nil without observations.
func quantile(q float64, buckets []bucket) *float64 {
	if len(buckets) == 0 {
		return nil
	}
	total := buckets[len(buckets)-1].count
	if total <= 0 {
		return nil
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for i, b := range buckets {
		if b.count >= rank {
			var v float64
			switch {
			case math.IsInf(b.upper, 1):
				if i == 0 {
					return nil
				}
				v = buckets[i-1].upper
			case b.count == below:
				v = b.upper
			default:
				v = lower + (b.upper-lower)*(rank-below)/(b.count-below)
			}
			return &v
		}
		lower, below = b.upper, b.count
	}
	return nil
}
