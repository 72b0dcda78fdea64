package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// connsResult is what `bench connload` prints as JSON at the end.
type connsResult struct {
	tcpResult
	// Opened is the connections that were open, each having been
	// answered once, when the rate phase began.
	Opened int `json:"opened"`
}

// runConnLoad is `bench connload -addr A -c N -rate R -d D`: N keep-alive
// HTTP/1.1 connections, mostly idle, carrying R requests per second in
// all. It opens the N connections, sends one request on each, prints
// "open" and waits for a line on stdin; then it sends R requests a second
// for D, spread evenly over the connections (each connection's requests
// are scheduled every N/R seconds; latency counts from the scheduled
// time), prints "done" with the connections still open and waits for
// another line; then it closes them (with a reset, leaving no TIME_WAIT)
// and prints a connsResult as JSON. Count is the requests of the rate
// phase. Requests are "GET / HTTP/1.1" with a Host header, answers are
// read by their Content-Length.
func runConnLoad(args []string) error {
	fs := flag.NewFlagSet("connload", flag.ExitOnError)
	addr := fs.String("addr", "", "address")
	conns := fs.Int("c", 1000, "connections")
	rate := fs.Float64("rate", 2000, "requests per second, in all")
	dur := fs.Duration("d", 5*time.Second, "duration of the rate phase")
	fs.Parse(args)

	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
	type client struct {
		c  net.Conn
		br *bufio.Reader
	}
	exchange := func(cl *client) error {
		cl.c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := cl.c.Write(req); err != nil {
			return err
		}
		return readAnswer(cl.br)
	}
	clients := make([]*client, *conns)
	var openErr error
	// Open in parallel batches: a proxy's accept backlog is finite.
	var wg sync.WaitGroup
	var mu sync.Mutex
	sem := make(chan struct{}, 64)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", *addr, 10*time.Second)
			if err == nil {
				cl := &client{c: c, br: bufio.NewReaderSize(c, 512)}
				if err = exchange(cl); err == nil {
					clients[i] = cl
					return
				}
				c.Close()
			}
			mu.Lock()
			if openErr == nil {
				openErr = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	var res connsResult
	open := clients[:0:0]
	for _, cl := range clients {
		if cl != nil {
			open = append(open, cl)
		}
	}
	res.Opened = len(open)
	if openErr != nil {
		res.Errors = int64(*conns - len(open))
		res.FirstErr = "open: " + openErr.Error()
	}
	stdin := bufio.NewReader(os.Stdin)
	fmt.Println("open")
	stdin.ReadString('\n')

	loop := openLoop(len(open), *rate, time.Now().Add(20*time.Millisecond), *dur, false, func(w int) error {
		return exchange(open[w])
	})
	res.Count, res.Seconds, res.P50ms, res.P99ms, res.P999ms = loop.Count, loop.Seconds, loop.P50ms, loop.P99ms, loop.P999ms
	res.Errors += loop.Errors
	if res.FirstErr == "" {
		res.FirstErr = loop.FirstErr
	}
	fmt.Println("done")
	stdin.ReadString('\n')
	for _, cl := range open {
		if tc, ok := cl.c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		cl.c.Close()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// readAnswer reads one answer with a Content-Length from br; anything but
// 200 is an error.
func readAnswer(br *bufio.Reader) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("answer %q", bytes.TrimSpace(line))
	}
	length := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(string(k), "Content-Length") {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(v))); err != nil {
				return fmt.Errorf("Content-Length %q", v)
			}
		}
	}
	if length < 0 {
		return errors.New("answer without Content-Length")
	}
	_, err = br.Discard(length)
	return err
}

// connsRun measures a proxy holding conns mostly idle keep-alive client
// connections that carry rate requests a second in all: CPU per request
// over the rate phase, and the growth of the proxy's resident memory per
// connection (from before the connections opened to the end of the rate
// phase, all still open).
func connsRun(conns int, rate int) func(*options, *env, *contender) (sample, error) {
	return func(o *options, e *env, c *contender) (sample, error) {
		cmd := exec.Command("taskset", "-c", "1", e.self, "connload", "-addr", c.httpAddr,
			"-c", strconv.Itoa(conns), "-rate", strconv.Itoa(rate), "-d", o.duration.String())
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return sample{}, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return sample{}, err
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		// A fresh process: memory that an earlier run left free inside
		// the proxy would otherwise hide what the connections cost.
		if err := e.restart(c); err != nil {
			return sample{}, err
		}
		settle()
		rss0 := procRSS(c)
		if err := cmd.Start(); err != nil {
			return sample{}, err
		}
		defer cmd.Wait()
		defer stdin.Close()
		out := bufio.NewReader(stdout)
		expect := func(want string) error {
			line, err := out.ReadString('\n')
			if strings.TrimSpace(line) != want {
				return fmt.Errorf("connload said %q (%v) %s", line, err, stderr.String())
			}
			return nil
		}
		if err := expect("open"); err != nil {
			return sample{}, err
		}
		before := procTicks(c)
		io.WriteString(stdin, "go\n")
		if err := expect("done"); err != nil {
			return sample{}, err
		}
		ticks := procTicks(c) - before
		settle()
		rss1 := procRSS(c)
		io.WriteString(stdin, "close\n")
		var r connsResult
		if err := json.NewDecoder(out).Decode(&r); err != nil {
			return sample{}, fmt.Errorf("connload output: %w %s", err, stderr.String())
		}
		s := sample{units: float64(r.Count), throughput: float64(r.Count) / r.Seconds,
			p50: r.P50ms, p99: r.P99ms, p999: r.P999ms, errors: r.Errors, firstErr: r.FirstErr}
		if c.proc != nil && r.Count > 0 {
			s.cpuUsPerUnit = float64(ticks) * 1e6 / clockTick / float64(r.Count)
		}
		if c.proc != nil && r.Opened > 0 {
			s.kibPerConn = float64(rss1-rss0) / float64(r.Opened)
		}
		return s, nil
	}
}

// restart starts the contender's process anew and waits until it
// answers; nothing for "direct".
func (e *env) restart(c *contender) error {
	if c.proc == nil {
		return nil
	}
	old := c.proc
	p, err := old.restart()
	if err != nil {
		return err
	}
	c.proc = p
	for i, q := range e.procs {
		if q == old {
			e.procs[i] = p
		}
	}
	return waitHTTP("http://"+c.httpAddr+"/", 200, 30*time.Second)
}

// settle lets a proxy finish what the last run left (closing connections,
// a collection) before its memory is read.
func settle() { time.Sleep(time.Second) }

// procRSS is the resident memory of the contender's process and its
// descendants, in KiB (0 for "direct").
func procRSS(c *contender) int64 {
	if c.proc == nil {
		return 0
	}
	return rssKiB(c.proc.pid())
}

func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	var kib int64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	for _, child := range children(pid) {
		kib += rssKiB(child)
	}
	return kib
}
