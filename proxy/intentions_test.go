package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
)

// fakeIntentions denies when deny is set, counting its calls.
type fakeIntentions struct {
	deny  atomic.Bool
	calls atomic.Int64
}

func (f *fakeIntentions) Denied(_ context.Context, err error) *DenialError {
	f.calls.Add(1)
	if !f.deny.Load() {
		return nil
	}
	return &DenialError{Source: "sluice", Destination: "web", Reason: "test deny", Err: err}
}

// refusingSidecar is a TLS 1.3 server that asks for a client certificate
// of a CA sluice's is not from, as a sidecar whose intentions deny does:
// sluice's handshake completes and the alert comes on the first read.
// It counts its connections.
func refusingSidecar(t *testing.T, ca *testCA) (string, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	cert := ca.leaf(t, "127.0.0.1")
	other := newCA(t)
	addr := rawBackend(t, func(c net.Conn) {
		conns.Add(1)
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs: other.pool(), MinVersion: tls.VersionTLS13})
		defer tc.Close()
		tc.Handshake()
		io.Copy(io.Discard, tc)
	})
	return addr, &conns
}

// TestIntentionDenial: a TLS alert that the intentions confirm is a
// denial: 403 naming source and destination, one try (no retry on the
// other instance), no failure counted; an alert they do not confirm is
// the instance's failure: retried, counted, 502.
func TestIntentionDenial(t *testing.T) {
	ca := newCA(t)
	a, aConns := refusingSidecar(t, ca)
	b, bConns := refusingSidecar(t, ca)
	client := ca.leaf(t, "sluice")
	tc := &tls.Config{RootCAs: ca.pool(), Certificates: []tls.Certificate{client}, NextProtos: []string{}}
	in := &fakeIntentions{}
	in.deny.Store(true)
	p := pool(t, "round_robin", m("a", a, 1), m("b", b, 1))
	f := front(t, ServiceOptions{Name: "web", Pool: p, Attempts: 2, TLS: tc, Intentions: in})
	for i := 0; i < 6; i++ {
		resp, body := get(t, f.URL+"/x")
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("denied: want 403, have %d %s", resp.StatusCode, body)
		}
		var d struct{ Error, Service, Source, Destination, Reason string }
		if err := json.Unmarshal([]byte(body), &d); err != nil || d.Source != "sluice" || d.Destination != "web" || d.Service != "web" {
			t.Fatalf("denied: body %s (%v)", body, err)
		}
	}
	if have := aConns.Load() + bConns.Load(); have != 6 {
		t.Errorf("denied: want 6 connections (one try per request), have %d", have)
	}
	for _, id := range []string{"a", "b"} {
		if st := statsOf(p, id); st.Failures() != 0 {
			t.Errorf("denied: instance %s blamed %d times", id, st.Failures())
		}
	}

	in.deny.Store(false)
	before := aConns.Load() + bConns.Load()
	resp, body := get(t, f.URL+"/x")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("not denied: want 502, have %d %s", resp.StatusCode, body)
	}
	if have := aConns.Load() + bConns.Load() - before; have != 2 {
		t.Errorf("not denied: want 2 tries, have %d", have)
	}
	if statsOf(p, "a").Failures()+statsOf(p, "b").Failures() != 2 {
		t.Errorf("not denied: want both instances blamed")
	}

	// Without Intentions the alert is the instance's, and never asked about.
	calls := in.calls.Load()
	f2 := front(t, ServiceOptions{Name: "web", Pool: pool(t, "round_robin", m("a", a, 1)), TLS: tc})
	if resp, _ := get(t, f2.URL+"/x"); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("without intentions: want 502, have %d", resp.StatusCode)
	}
	if in.calls.Load() != calls {
		t.Error("intentions asked about another service's failure")
	}
}

// TestIntentionDenialOnlyForAlerts: only a TLS alert from the peer is
// put to the intentions; a refused connection is the instance's.
func TestIntentionDenialOnlyForAlerts(t *testing.T) {
	in := &fakeIntentions{}
	in.deny.Store(true)
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, true},
		{&net.OpError{Op: "dial", Err: fmt.Errorf("tls handshake: %w", &net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")})}, true},
		{fmt.Errorf("wrapped: %w", errors.New("remote error: tls: handshake failure")), true},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, false},
		{errors.New("tls: failed to verify certificate"), false},
		{nil, false},
	} {
		if have := denied(context.Background(), in, tc.err) != nil; have != tc.want {
			t.Errorf("%v: want denied %t, have %t", tc.err, tc.want, have)
		}
	}
	if denied(context.Background(), nil, &net.OpError{Op: "remote error", Err: errors.New("x")}) != nil {
		t.Error("nil Intentions denied")
	}
}

// TestProbeDenied: a probe the intentions refuse is neither a success nor
// a failure; without the denial the same probe fails.
func TestProbeDenied(t *testing.T) {
	ca := newCA(t)
	a, conns := refusingSidecar(t, ca)
	tc := &tls.Config{RootCAs: ca.pool(), Certificates: []tls.Certificate{ca.leaf(t, "sluice")}, NextProtos: []string{}}
	in := &fakeIntentions{}
	in.deny.Store(true)
	p := pool(t, "round_robin", m("a", a, 1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	pr := NewProber(p, ProbeOptions{Type: ProbeHTTP, Path: "/", Interval: 20 * time.Millisecond, Timeout: time.Second,
		Rise: 1, Fall: 1, TLS: tc, Intentions: in}, nil)
	go func() { pr.Run(ctx); close(done) }()
	waitFor(t, "5 denied probes", func() bool { return in.calls.Load() >= 5 && conns.Load() >= 5 })
	if st := probeState(p, "a"); st == balance.ProbeFailing || st == balance.ProbePassing {
		t.Errorf("denied probes: want no verdict, have %s", st)
	}
	in.deny.Store(false)
	waitFor(t, "a failing once not denied", func() bool { return probeState(p, "a") == balance.ProbeFailing })
	cancel()
	<-done
}

// TestTCPDenied: a tcp listener's connection to a sidecar that refuses
// sluice closes the client's connection; with the intentions' denial the
// instance is not blamed, without it it is.
func TestTCPDenied(t *testing.T) {
	ca := newCA(t)
	a, _ := refusingSidecar(t, ca)
	tc := &tls.Config{RootCAs: ca.pool(), Certificates: []tls.Certificate{ca.leaf(t, "sluice")}, NextProtos: []string{}}
	for _, deny := range []bool{true, false} {
		t.Run(fmt.Sprintf("deny=%t", deny), func(t *testing.T) {
			in := &fakeIntentions{}
			in.deny.Store(deny)
			p := pool(t, "round_robin", m("a", a, 1))
			tp := NewTCPProxy(TCPOptions{Service: ServiceOptions{Name: "web", Pool: p, Attempts: 2, TLS: tc, Intentions: in}})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			served := make(chan struct{})
			go func() { tp.Serve(ctx, ln); close(served) }()
			defer func() { cancel(); ln.Close(); <-served }()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, "hello")
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, _ := io.Copy(io.Discard, c); n != 0 {
				t.Fatalf("want the client closed without a byte, have %d bytes", n)
			}
			waitFor(t, "the verdict", func() bool { return in.calls.Load() >= 1 && statsOf(p, "a").Inflight() == 0 })
			if have := statsOf(p, "a").Failures(); (have > 0) != !deny {
				t.Errorf("want blamed %t, have %d failures", !deny, have)
			}
		})
	}
}
