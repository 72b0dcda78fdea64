package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"
)

// runHTTPRate is `bench httprate -url U -rate R -c N -d D`: an open-loop
// load of R requests per second over N keep-alive connections for D. Each
// request has a scheduled send time; its latency counts from that time, so
// a proxy that stalls is charged for the requests queued behind the stall
// (no coordinated omission). Prints a tcpResult as JSON (Count = requests).
func runHTTPRate(args []string) error {
	fs := flag.NewFlagSet("httprate", flag.ExitOnError)
	url := fs.String("url", "", "URL")
	rate := fs.Float64("rate", 10000, "requests per second")
	conns := fs.Int("c", 32, "connections")
	dur := fs.Duration("d", 5*time.Second, "duration")
	fs.Parse(args)

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns, DisableCompression: true,
	}}
	res := openLoop(*conns, *rate, time.Now().Add(50*time.Millisecond), *dur, true, func(int) error {
		resp, err := client.Get(*url)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	return json.NewEncoder(os.Stdout).Encode(res)
}

// openLoop sends rate requests a second for dur from start, spread evenly
// over workers (worker w's are every workers/rate seconds, offset by its
// share), each by do(w), and returns the count, latency percentiles and
// errors. A request's latency counts from its scheduled time (no
// coordinated omission); failed ones count in it too when withErrors.
func openLoop(workers int, rate float64, start time.Time, dur time.Duration, withErrors bool, do func(w int) error) tcpResult {
	interval := time.Duration(float64(time.Second) * float64(workers) / rate)
	end := start.Add(dur)
	var (
		mu  sync.Mutex
		lat []time.Duration
		res tcpResult
		wg  sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, int(float64(dur)/float64(interval))+1)
			var errs int64
			var first string
			next := start.Add(time.Duration(w) * interval / time.Duration(workers))
			for next.Before(end) {
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				err := do(w)
				if err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
				}
				if err == nil || withErrors {
					mine = append(mine, time.Since(next))
				}
				next = next.Add(interval)
			}
			mu.Lock()
			lat = append(lat, mine...)
			res.Errors += errs
			if res.FirstErr == "" {
				res.FirstErr = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Seconds = dur.Seconds()
	res.Count = int64(len(lat))
	if len(lat) > 0 {
		slices.Sort(lat)
		pct := func(p float64) float64 {
			return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))].Microseconds()) / 1000
		}
		res.P50ms, res.P99ms, res.P999ms = pct(0.5), pct(0.99), pct(0.999)
	}
	return res
}
