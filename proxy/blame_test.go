package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
)

// startPassiveTCPProxy serves a TCP proxy to the single instance at addr,
// whose pool ejects it at its first failure; it returns the proxy's
// address and the pool.
func startPassiveTCPProxy(t *testing.T, idle time.Duration, addr string) (string, *balance.Pool) {
	t.Helper()
	build, _ := balance.Lookup("round_robin")
	p := balance.NewPool(balance.PoolOptions{Service: "up", Strategy: "round_robin", Builder: build,
		Passive: &balance.PassiveOptions{ConsecutiveFailures: 1, EjectionTime: time.Minute, MaxEjectionPercent: 100}})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { p.Run(ctx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran })
	if err := p.SetMembers(ctx, 1, []balance.Member{m("up", addr, 1)}); err != nil {
		t.Fatal(err)
	}
	for snap := p.Load(); !snap.Synced; snap = p.Load() {
		<-snap.Next()
	}
	tp := NewTCPProxy(TCPOptions{Service: ServiceOptions{Name: "up", Pool: p, Attempts: 1}, IdleTimeout: idle})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { tp.Serve(ctx, ln); close(served) }()
	t.Cleanup(func() { ln.Close(); <-served })
	return ln.Addr().String(), p
}

// reset closes c with an RST instead of a FIN.
func reset(c net.Conn) {
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// TestTCPBlame runs one connection per case through a proxy with passive
// ejection at the first failure and checks whether the instance was
// blamed (a failure, and ejected) or not.
func TestTCPBlame(t *testing.T) {
	for _, tc := range []struct {
		name    string
		idle    time.Duration
		backend func(c net.Conn, accepted chan<- struct{})
		client  func(c net.Conn, accepted <-chan struct{})
		blamed  bool
	}{
		{
			name:    "closes before a byte while the client waits",
			backend: func(c net.Conn, _ chan<- struct{}) { c.Close() },
			client:  func(c net.Conn, _ <-chan struct{}) { io.Copy(io.Discard, c) },
			blamed:  true,
		},
		{
			name:    "closes before a byte after the client sent some",
			backend: func(c net.Conn, _ chan<- struct{}) { c.Read(make([]byte, 2)); c.Close() },
			client:  func(c net.Conn, _ <-chan struct{}) { io.WriteString(c, "hi"); io.Copy(io.Discard, c) },
			blamed:  true,
		},
		{
			name:    "resets before a byte",
			backend: func(c net.Conn, _ chan<- struct{}) { reset(c) },
			client:  func(c net.Conn, _ <-chan struct{}) { io.WriteString(c, "hi"); io.Copy(io.Discard, c) },
			blamed:  true,
		},
		{
			name: "resets after the client half-closed",
			backend: func(c net.Conn, _ chan<- struct{}) {
				io.Copy(io.Discard, c)
				reset(c)
			},
			client: func(c net.Conn, _ <-chan struct{}) {
				io.WriteString(c, "hi")
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			},
			blamed: true,
		},
		{
			name: "sends nothing and closes after the client half-closed",
			backend: func(c net.Conn, _ chan<- struct{}) {
				io.Copy(io.Discard, c)
				c.Close()
			},
			client: func(c net.Conn, _ <-chan struct{}) {
				io.WriteString(c, "log line\n")
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			},
		},
		{
			name: "sends a byte then resets",
			backend: func(c net.Conn, _ chan<- struct{}) {
				c.Write([]byte("x"))
				c.Read(make([]byte, 1)) // the client's acknowledgement
				reset(c)
			},
			client: func(c net.Conn, _ <-chan struct{}) {
				io.ReadFull(c, make([]byte, 1))
				c.Write([]byte("k"))
				io.Copy(io.Discard, c)
			},
		},
		{
			name: "client resets before the instance answers",
			backend: func(c net.Conn, accepted chan<- struct{}) {
				close(accepted)
				io.Copy(io.Discard, c)
				c.Close()
			},
			client: func(c net.Conn, accepted <-chan struct{}) {
				io.WriteString(c, "hi")
				<-accepted
				reset(c)
			},
		},
		{
			name: "idle timeout before a byte",
			idle: 100 * time.Millisecond,
			backend: func(c net.Conn, _ chan<- struct{}) {
				io.Copy(io.Discard, c)
				c.Close()
			},
			client: func(c net.Conn, _ <-chan struct{}) { io.WriteString(c, "hi"); io.Copy(io.Discard, c) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			accepted := make(chan struct{})
			backend := serveOneConn(t, func(c net.Conn) { tc.backend(c, accepted) })
			addr, p := startPassiveTCPProxy(t, tc.idle, backend)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			tc.client(c, accepted)
			c.Close() // the connection is judged when both sides are done
			deadline := time.Now().Add(10 * time.Second)
			for {
				ms := p.Load().Members
				st := ms[0].Stats
				if st.Requests() == 1 && st.Inflight() == 0 && (!tc.blamed || ms[0].Ejected) {
					if blamed := st.Failures() != 0; blamed != tc.blamed || ms[0].Ejected != tc.blamed {
						t.Fatalf("failures %d, ejected %v; want blamed %v", st.Failures(), ms[0].Ejected, tc.blamed)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("connection not judged: requests %d, in flight %d, failures %d, ejected %v",
						st.Requests(), st.Inflight(), st.Failures(), ms[0].Ejected)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// TestTCPVerdict: the blame rules on the recorded state of a connection,
// telling a success (Done(nil), which resets the failure count) from no
// verdict (Cancel).
func TestTCPVerdict(t *testing.T) {
	rst := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	for _, tc := range []struct {
		name        string
		out         int64
		upstreamEOF bool
		afterClient bool
		ended       int32
		want        int
	}{
		{"bytes sent, then a reset", 1, false, false, partyInstance, verdictSuccess},
		{"bytes sent, client gone", 10, false, false, partyClient, verdictSuccess},
		{"bytes sent, shutdown", 10, false, false, partyShutdown, verdictSuccess},
		{"clean close while the client waits", 0, true, false, partyNone, verdictFailure},
		{"clean close, then the client reset", 0, true, false, partyClient, verdictFailure},
		{"clean close after the client's half-close", 0, true, true, partyNone, verdictSuccess},
		{"reset before a byte", 0, false, false, partyInstance, verdictFailure},
		{"client gone before a byte", 0, false, false, partyClient, verdictNone},
		{"idle before a byte", 0, false, false, partyIdle, verdictNone},
		{"shutdown before a byte", 0, false, false, partyShutdown, verdictNone},
	} {
		s := &tcpSession{upstreamEOF: tc.upstreamEOF, afterClient: tc.afterClient}
		s.end(tc.ended, rst)
		got, err := s.verdict(tc.out)
		if got != tc.want || (got == verdictFailure) != (err != nil) {
			t.Errorf("%s: verdict %d (%v), want %d", tc.name, got, err, tc.want)
		}
		if tc.ended == partyInstance && got == verdictFailure && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: error %v does not wrap the reset", tc.name, err)
		}
	}
}
