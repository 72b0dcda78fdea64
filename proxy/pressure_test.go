package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/go-hclog"
)

// dialError wraps errno the way net.Dialer returns a failed socket or
// connect call.
func dialError(syscallName string, errno syscall.Errno) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80},
		Err: os.NewSyscallError(syscallName, errno)}
}

func TestIsLocalResourceError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{dialError("socket", syscall.EMFILE), true},
		{dialError("socket", syscall.ENFILE), true},
		{dialError("socket", syscall.ENOBUFS), true},
		{dialError("socket", syscall.ENOMEM), true},
		{dialError("connect", syscall.EADDRNOTAVAIL), true},
		{&net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}, true},
		{fmt.Errorf("wrapped: %w", dialError("socket", syscall.EMFILE)), true},
		{syscall.ENFILE, true},
		{dialError("connect", syscall.ECONNREFUSED), false},
		{dialError("connect", syscall.ETIMEDOUT), false},
		{dialError("connect", syscall.EHOSTUNREACH), false},
		{dialError("connect", syscall.ECONNRESET), false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: context.DeadlineExceeded}, false},
		{errors.New("too many open files"), false}, // judged by errno, not text
		{nil, false},
	} {
		if got := IsLocalResourceError(tc.err); got != tc.want {
			t.Errorf("IsLocalResourceError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestIsLocalResourceErrorRealDial: a real dial with no descriptor left
// fails with an error that IsLocalResourceError recognises. It takes
// descriptors away only from a child process (the main test process keeps
// its limit); see TestMain.
func TestIsLocalResourceErrorRealDial(t *testing.T) {
	out := runHelper(t, "dial", nil)
	if strings.TrimSpace(out) != "local" {
		t.Fatalf("dial without descriptors: helper says %q", out)
	}
}

// lockedBuffer is a log sink safe for the logger's and the test's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// warnings returns the JSON log lines written so far.
func (l *lockedBuffer) warnings(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func jsonLogger(w *lockedBuffer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: w, JSONFormat: true, Level: hclog.Debug})
}

// pauseAfter reports one exhaustion and returns how long WaitAccept then
// blocks (in the bubble's fake time, so exactly).
func pauseAfter(p *Pressure, err error) time.Duration {
	p.Report("l", err)
	start := time.Now()
	p.WaitAccept(context.Background())
	return time.Since(start)
}

func TestPressureBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewPressure(nil)
		if err := p.WaitAccept(context.Background()); err != nil {
			t.Fatal(err)
		}
		emfile := dialError("socket", syscall.EMFILE)
		var want []time.Duration
		for d := 5 * time.Millisecond; len(want) < 10; d = min(2*d, time.Second) {
			want = append(want, d)
		}
		for i, w := range want {
			if got := pauseAfter(p, emfile); got != w {
				t.Fatalf("pause %d: %v, want %v", i, got, w)
			}
		}
		if p.Count() != uint64(len(want)) {
			t.Fatalf("count %d, want %d", p.Count(), len(want))
		}
		// A successful dial resets the doubling; other errors change nothing.
		p.Report("l", nil)
		if p.Report("l", dialError("connect", syscall.ECONNREFUSED)) {
			t.Fatal("ECONNREFUSED reported as local exhaustion")
		}
		if got := pauseAfter(p, emfile); got != 5*time.Millisecond {
			t.Fatalf("pause after a success: %v, want 5ms", got)
		}
		// Reports during a pause count but neither extend nor double it.
		p.Report("l", emfile) // 10ms
		time.Sleep(3 * time.Millisecond)
		for range 5 {
			if !p.Report("l", emfile) {
				t.Fatal("EMFILE not reported as local exhaustion")
			}
		}
		start := time.Now()
		p.WaitAccept(context.Background())
		if got := time.Since(start); got != 7*time.Millisecond {
			t.Fatalf("pause with reports during it ended after %v more, want 7ms", got)
		}
		if got := pauseAfter(p, emfile); got != 20*time.Millisecond {
			t.Fatalf("next pause %v, want 20ms", got)
		}
		if p.Count() != uint64(len(want))+8 {
			t.Fatalf("count %d, want %d", p.Count(), len(want)+8)
		}
		// A context that ends stops the wait with its error.
		p.Report("l", emfile)
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		if err := p.WaitAccept(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitAccept with an ended context: %v", err)
		}
	})
}

// TestPressureLogRateLimit: at most one Warn line a second per listener,
// each with the count since the previous line.
func TestPressureLogRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf lockedBuffer
		p := NewPressure(jsonLogger(&buf))
		emfile := dialError("socket", syscall.EMFILE)
		for range 100 {
			p.Report("a", emfile)
		}
		p.Report("b", emfile)
		synctest.Wait()
		lines := buf.warnings(t)
		if len(lines) != 2 || lines[0]["listener"] != "a" || lines[0]["count"] != 1.0 ||
			lines[1]["listener"] != "b" || lines[1]["count"] != 1.0 {
			t.Fatalf("first lines: %v", lines)
		}
		if lines[0]["@level"] != "warn" || !strings.Contains(lines[0]["error"].(string), "too many open files") {
			t.Fatalf("line: %v", lines[0])
		}
		time.Sleep(999 * time.Millisecond)
		synctest.Wait()
		if n := len(buf.warnings(t)); n != 2 {
			t.Fatalf("%d lines within the second", n)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		lines = buf.warnings(t)
		if len(lines) != 3 || lines[2]["listener"] != "a" || lines[2]["count"] != 99.0 {
			t.Fatalf("lines after a second: %v", lines)
		}
		// Quiet for over a second: the next report is logged at once.
		time.Sleep(2 * time.Second)
		p.Report("a", emfile)
		synctest.Wait()
		lines = buf.warnings(t)
		if len(lines) != 4 || lines[3]["count"] != 1.0 {
			t.Fatalf("lines after a quiet time: %v", lines)
		}
		if p.Count() != 102 {
			t.Fatalf("count %d", p.Count())
		}
	})
}

// fakeListener returns queued errors from Accept, recording when each
// call came, then blocks until closed.
type fakeListener struct {
	mu     sync.Mutex
	errs   []error
	calls  []time.Time
	closed chan struct{}
	once   sync.Once
}

func (l *fakeListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	l.calls = append(l.calls, time.Now())
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	<-l.closed
	return nil, net.ErrClosed
}

func (l *fakeListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// TestTCPAcceptPausesOnExhaustion: accept errors of exhaustion pause the
// accept loop through the Pressure, doubling while they repeat, and are
// counted and logged once.
func TestTCPAcceptPausesOnExhaustion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		accErr := func(errno syscall.Errno) error {
			return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
		}
		ln := &fakeListener{closed: make(chan struct{}),
			errs: []error{accErr(syscall.EMFILE), accErr(syscall.EMFILE), accErr(syscall.ENFILE), accErr(syscall.EMFILE)}}
		var buf lockedBuffer
		pr := NewPressure(jsonLogger(&buf))
		tp := NewTCPProxy(TCPOptions{Listener: "db", Pressure: pr})
		served := make(chan struct{})
		go func() { tp.Serve(context.Background(), ln); close(served) }()
		defer func() { ln.Close(); <-served }()
		time.Sleep(500 * time.Millisecond) // past the pauses: 5+10+20+40 ms
		synctest.Wait()                    // Serve blocks in the fifth Accept
		ln.mu.Lock()
		calls := ln.calls
		ln.mu.Unlock()
		if len(calls) != 5 {
			t.Fatalf("%d accept calls, want 5", len(calls))
		}
		for i, want := range []time.Duration{5, 10, 20, 40} {
			if got := calls[i+1].Sub(calls[i]); got != want*time.Millisecond {
				t.Errorf("accept %d came %v after the previous one, want %v", i+2, got, want*time.Millisecond)
			}
		}
		if pr.Count() != 4 {
			t.Fatalf("count %d, want 4", pr.Count())
		}
		if lines := buf.warnings(t); len(lines) != 1 || lines[0]["listener"] != "db" {
			t.Fatalf("log: %v", lines)
		}
	})
}
