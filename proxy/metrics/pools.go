package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-lb/sluice/balance"
)

// The states of sluice_service_instances that are not a Consul health.
const (
	stateProbeFailing = "probe_failing"
	stateEjected      = "ejected"
	stateEligible     = "eligible"
)

// instanceStates lists the values of sluice_service_instances' state
// label, each exported for every service. A member counts under its
// Consul health (the first four) and, apart from that, under each of the
// others that applies to it.
func instanceStates() []string {
	return []string{
		string(balance.HealthPassing), string(balance.HealthWarning),
		string(balance.HealthCritical), string(balance.HealthMaintenance),
		stateProbeFailing, stateEjected, stateEligible,
	}
}

// poolCollector reads the pools' current snapshots at every scrape; it
// keeps no series of its own.
type poolCollector struct {
	pools func() []*balance.Pool

	up, inflight, ejections, errors                                *prometheus.Desc
	instances, lastSuccess, consulErrors, consulAnswers, consulIdx *prometheus.Desc
	panic                                                          *prometheus.Desc
}

var _ prometheus.Collector = (*poolCollector)(nil)

// NewPoolCollector returns a collector that reads the current pools at
// every scrape: pools is called once per scrape, from the scraping
// goroutine, and must be safe for that; each pool's current Snapshot is
// read with one atomic load, and nothing is locked. Every series is built
// at scrape time, so an instance or a service that leaves has no series in
// the next scrape. Of pools that share a service name only the first
// counts.
func NewPoolCollector(pools func() []*balance.Pool) prometheus.Collector {
	instance := []string{"service", "instance"}
	service := []string{"service"}
	return &poolCollector{
		pools: pools,
		up: prometheus.NewDesc("sluice_instance_up",
			"1 when the instance is eligible for new requests (Consul passing or warning, no failing probe, not ejected, a usable address), else 0.",
			instance, nil),
		inflight: prometheus.NewDesc("sluice_instance_inflight",
			"Requests and TCP connections to the instance in progress.",
			instance, nil),
		ejections: prometheus.NewDesc("sluice_instance_ejections_total",
			"Times passive ejection took the instance out of rotation since it joined the pool.",
			instance, nil),
		errors: prometheus.NewDesc("sluice_upstream_errors_total",
			"Failures blamed on the instance since it joined the pool, by kind: connect, timeout, reset, protocol or status (a 5xx answer).",
			[]string{"service", "instance", "kind"}, nil),
		instances: prometheus.NewDesc("sluice_service_instances",
			"Instances of the service by state: each counts under its Consul health (passing, warning, critical, maintenance) and also under probe_failing, ejected and eligible when they apply.",
			[]string{"service", "state"}, nil),
		lastSuccess: prometheus.NewDesc("sluice_consul_last_success_timestamp_seconds",
			"Unix time of the last answer from Consul for the service; 0 before the first.",
			service, nil),
		consulErrors: prometheus.NewDesc("sluice_consul_errors_total",
			"Failed Consul queries for the service; the last good answer keeps serving meanwhile.",
			service, nil),
		consulAnswers: prometheus.NewDesc("sluice_consul_answers_total",
			"Answers from Consul with a new index for the service (each one a new instance set, changed or not).",
			service, nil),
		consulIdx: prometheus.NewDesc("sluice_consul_index",
			"Consul index (X-Consul-Index) of the last answer for the service; 0 before the first.",
			service, nil),
		panic: prometheus.NewDesc("sluice_service_panic",
			"1 while the service is in panic mode (panic_threshold: probe and ejection verdicts ignored), else 0.",
			service, nil),
	}
}

// Describe sends the descriptors of every family the collector emits.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.inflight, c.ejections, c.errors, c.instances, c.lastSuccess, c.consulErrors, c.consulAnswers, c.consulIdx, c.panic} {
		ch <- d
	}
}

// Collect sends the series of every pool's current snapshot.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, p := range c.pools() {
		if p == nil {
			continue
		}
		snap := p.Load()
		if seen[snap.Service] {
			continue
		}
		seen[snap.Service] = true
		c.collectPool(ch, snap)
	}
}

func (c *poolCollector) collectPool(ch chan<- prometheus.Metric, snap *balance.Snapshot) {
	svc := snap.Service
	counts := map[string]int{}
	kinds := balance.ErrorKinds()
	for _, m := range snap.Members {
		up := 0.0
		if m.Eligible {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, svc, m.ID)
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(m.Stats.Inflight()), svc, m.ID)
		ch <- prometheus.MustNewConstMetric(c.ejections, prometheus.CounterValue, float64(m.Stats.Ejections()), svc, m.ID)
		for _, k := range kinds {
			ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(m.Stats.Errors(k)), svc, m.ID, k.String())
		}
		switch m.Consul {
		case balance.HealthPassing, balance.HealthWarning, balance.HealthCritical, balance.HealthMaintenance:
			counts[string(m.Consul)]++
		}
		if m.Probe == balance.ProbeFailing {
			counts[stateProbeFailing]++
		}
		if m.Ejected {
			counts[stateEjected]++
		}
		if m.Eligible {
			counts[stateEligible]++
		}
	}
	for _, state := range instanceStates() {
		ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(counts[state]), svc, state)
	}
	last := 0.0
	if t := snap.ConsulLastSuccess; !t.IsZero() {
		last = float64(t.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(c.lastSuccess, prometheus.GaugeValue, last, svc)
	ch <- prometheus.MustNewConstMetric(c.consulErrors, prometheus.CounterValue, float64(snap.ConsulErrors), svc)
	ch <- prometheus.MustNewConstMetric(c.consulAnswers, prometheus.CounterValue, float64(snap.ConsulAnswers), svc)
	ch <- prometheus.MustNewConstMetric(c.consulIdx, prometheus.GaugeValue, float64(snap.ConsulIndex), svc)
	panicMode := 0.0
	if snap.Panic {
		panicMode = 1
	}
	ch <- prometheus.MustNewConstMetric(c.panic, prometheus.GaugeValue, panicMode, svc)
}
