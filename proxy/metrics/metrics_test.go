package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLimitHitsAndCerts: limit hits count per listener and limit without
// allocating; certificate expiries are set, and deleted per listener (by
// DeleteCerts and DeleteListener) with the listener's limit series.
func TestLimitHitsAndCerts(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	web, db := m.Listener("web", "http"), m.Listener("db", "tcp")
	web.LimitHit(LimitMaxBodyBytes)
	web.LimitHit(LimitMaxBodyBytes)
	web.LimitHit(LimitMaxHeaderBytes)
	db.LimitHit(LimitMaxConnections)
	db.LimitHit(LimitMaxHeaderBytes) // not a tcp limit: nothing
	db.LimitHit("nonsense")
	var nilListener *Listener
	nilListener.LimitHit(LimitMaxConnections)
	for _, c := range []struct {
		l, limit string
		want     float64
	}{
		{"web", LimitMaxBodyBytes, 2}, {"web", LimitMaxHeaderBytes, 1}, {"web", LimitMaxConcurrentStreams, 0},
		{"web", LimitMaxConnections, 0}, {"db", LimitMaxConnections, 1},
	} {
		if have := testutil.ToFloat64(m.limitHits.WithLabelValues(c.l, c.limit)); have != c.want {
			t.Errorf("%s %s: want %v, have %v", c.l, c.limit, c.want, have)
		}
	}
	if n := testutil.CollectAndCount(m.limitHits); n != 5 {
		t.Errorf("want 5 limit series (4 http, 1 tcp), have %d", n)
	}
	if a := testing.AllocsPerRun(100, func() { web.LimitHit(LimitMaxBodyBytes) }); a != 0 {
		t.Errorf("LimitHit allocates %v times", a)
	}

	exp := time.Unix(1900000000, 0)
	m.SetCertNotAfter("web", "a.pem", exp)
	m.SetCertNotAfter("web", "b.pem", exp)
	m.SetCertNotAfter("api", "c.pem", exp)
	if have := testutil.ToFloat64(m.certExpiry.WithLabelValues("web", "a.pem")); have != 1900000000 {
		t.Errorf("not after: have %v", have)
	}
	m.DeleteCerts("web")
	if n := testutil.CollectAndCount(m.certExpiry); n != 1 {
		t.Errorf("after DeleteCerts(web): want 1 series, have %d", n)
	}
	m.DeleteListener("api")
	m.DeleteListener("web")
	if n := testutil.CollectAndCount(m.certExpiry); n != 0 {
		t.Errorf("after DeleteListener: want 0 cert series, have %d", n)
	}
	if n := testutil.CollectAndCount(m.limitHits); n != 1 {
		t.Errorf("after DeleteListener(web): want db's limit series only, have %d", n)
	}
	var nilMetrics *Metrics
	nilMetrics.SetCertNotAfter("x", "y", exp)
	nilMetrics.DeleteCerts("x")
}
