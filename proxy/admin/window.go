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

// delta is a counter's increase from base to now; a counter that went down
// was reset (its series deleted and made anew), so all of now counts.
func delta(base, now float64) float64 {
	if now < base {
		return now
	}
	return now - base
}

// routeFrame derives a route's rates over the window.
func (w *window) routeFrame(k routeKey) RouteFrame {
	rf := RouteFrame{Route: k.route, Service: k.service}
	secs := w.span().Seconds()
	if secs <= 0 {
		return rf
	}
	now := w.newest().routes[k]
	if now == nil {
		return rf
	}
	base := w.samples[0].routes[k]
	if base == nil {
		base = &routeSample{}
	}
	n := delta(base.count, now.count)
	rps := n / secs
	rf.RPS = &rps
	if n > 0 {
		share := min(delta(base.errors, now.errors)/n, 1)
		rf.ErrorRate = &share
	}
	if len(now.buckets) > 0 {
		diff := make([]bucket, len(now.buckets))
		reset := len(base.buckets) != len(now.buckets) || base.buckets[len(base.buckets)-1].count > now.buckets[len(now.buckets)-1].count
		for i, b := range now.buckets {
			diff[i] = b
			if !reset {
				diff[i].count -= base.buckets[i].count
			}
		}
		rf.P50 = quantile(0.5, diff)
		rf.P99 = quantile(0.99, diff)
	}
	return rf
}

// instanceRates derives an instance's requests per second and errors over
// the window.
func (w *window) instanceRates(k instanceKey) (rps, errs *float64) {
	secs := w.span().Seconds()
	if secs <= 0 {
		return nil, nil
	}
	now, ok := w.newest().instances[k]
	if !ok {
		return nil, nil
	}
	base := w.samples[0].instances[k] // zero when the instance joined since
	r := delta(base[0], now[0]) / secs
	e := delta(base[1], now[1])
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
