package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// runBackend is `bench backend -http ADDR -tcp ADDR`: an HTTP server
// ("/" a 13-byte body, "/64k" 64 KiB, "/_last" the unix nanoseconds of the
// last other request) and a TCP server (first byte 'B': send bulkBytes then
// close; 'E': echo until EOF).
func runBackend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	httpAddr := fs.String("http", "", "HTTP listen address")
	tcpAddr := fs.String("tcp", "", "TCP listen address")
	name := fs.String("name", "b", "backend name")
	fs.Parse(args)

	var last atomic.Int64
	small := []byte("hello, world\n")
	big := make([]byte, 64<<10)
	for i := range big {
		big[i] = byte('a' + i%26)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/_last", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, last.Load())
	})
	mux.HandleFunc("/64k", func(w http.ResponseWriter, r *http.Request) {
		last.Store(time.Now().UnixNano())
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		w.Write(big)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		last.Store(time.Now().UnixNano())
		w.Header().Set("X-Backend", *name)
		w.Header().Set("Content-Length", strconv.Itoa(len(small)))
		w.Write(small)
	})
	errc := make(chan error, 2)
	if *httpAddr != "" {
		ln, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return err
		}
		go func() { errc <- (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(ln) }()
	}
	if *tcpAddr != "" {
		ln, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			return err
		}
		go func() { errc <- serveTCP(ln) }()
	}
	return <-errc
}

// bulkBytes is what one bulk connection downloads.
const bulkBytes = 256 << 20

func serveTCP(ln net.Listener) error {
	chunk := make([]byte, 256<<10)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var first [1]byte
			if _, err := io.ReadFull(c, first[:]); err != nil {
				return
			}
			switch first[0] {
			case 'B':
				for sent := 0; sent < bulkBytes; sent += len(chunk) {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			case 'E':
				c.Write(first[:])
				io.Copy(c, c)
			}
		}()
	}
}

// tcpResult is what `bench tcpload` prints as JSON.
type tcpResult struct {
	Count    int64   `json:"count"` // connections, or bytes for bulk
	Seconds  float64 `json:"seconds"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	P999ms   float64 `json:"p999_ms"`
	Errors   int64   `json:"errors"`
	FirstErr string  `json:"first_error,omitempty"`
}

// runTCPLoad is `bench tcpload -mode bulk|connrate -addr A -c N -d D`.
// bulk: N connections each download bulkBytes; Count is bytes.
// connrate: N workers for D each open a connection, exchange one byte and
// close; Count is connections, with latency percentiles.
func runTCPLoad(args []string) error {
	fs := flag.NewFlagSet("tcpload", flag.ExitOnError)
	mode := fs.String("mode", "bulk", "bulk or connrate")
	addr := fs.String("addr", "", "address")
	conns := fs.Int("c", 4, "connections or workers")
	dur := fs.Duration("d", 5*time.Second, "duration (connrate)")
	fs.Parse(args)

	var res tcpResult
	var mu sync.Mutex
	var lat []time.Duration
	fail := func(err error) {
		mu.Lock()
		res.Errors++
		if res.FirstErr == "" {
			res.FirstErr = err.Error()
		}
		mu.Unlock()
	}
	var total atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if *mode == "bulk" {
				c, err := net.Dial("tcp", *addr)
				if err != nil {
					fail(err)
					return
				}
				defer c.Close()
				c.Write([]byte{'B'})
				n, err := io.Copy(io.Discard, c)
				total.Add(n)
				if err != nil || n != bulkBytes {
					fail(fmt.Errorf("bulk: %d bytes, %v", n, err))
				}
				return
			}
			var mine []time.Duration
			buf := []byte{'E'}
			for ctx.Err() == nil {
				t0 := time.Now()
				c, err := net.Dial("tcp", *addr)
				if err != nil {
					fail(err)
					continue
				}
				_, err = c.Write(buf)
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				c.Close()
				if err != nil {
					fail(err)
					continue
				}
				mine = append(mine, time.Since(t0))
				total.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Count = total.Load()
	if len(lat) > 0 {
		slices.Sort(lat)
		pct := func(p float64) float64 {
			return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))].Microseconds()) / 1000
		}
		res.P50ms, res.P99ms, res.P999ms = pct(0.5), pct(0.99), pct(0.999)
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
