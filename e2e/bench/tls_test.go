package main

import "testing"

func TestH2loadParse(t *testing.T) {
	out := `finished in 2.00s, 51809.00 req/s, 1.78MB/s
requests: 103618 total, 103626 started, 103618 done, 103610 succeeded, 8 failed, 0 errored, 0 timeout
status codes: 103610 2xx, 0 3xx, 3 4xx, 5 5xx
                     min         max         mean         sd        +/- sd
time for request:       47us      4.60ms       120us       101us    99.08%
`
	s, err := parseH2load(out)
	if err != nil {
		t.Fatal(err)
	}
	if s.units != 103610 || s.throughput != 51809 || s.errors != 8 || s.p50 != 0.12 || s.p99 != 4.6 {
		t.Fatalf("have %+v", s)
	}
}
