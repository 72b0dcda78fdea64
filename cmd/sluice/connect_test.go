package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/sluice-lb/sluice/proxy/connect"
)

// TestIntentionChanges: the destinations whose intentions changed, a
// wildcard one included, and nothing for an unchanged answer.
func TestIntentionChanges(t *testing.T) {
	ixn := func(id, dest, action string, modify uint64) *api.Intention {
		return &api.Intention{ID: id, SourceName: "sluice", DestinationName: dest, Action: api.IntentionAction(action), ModifyIndex: modify}
	}
	base := []*api.Intention{ixn("1", "web", "allow", 1), ixn("2", "api", "deny", 2), nil}
	for _, tc := range []struct {
		name string
		next []*api.Intention
		want []string
	}{
		{"unchanged", []*api.Intention{ixn("2", "api", "deny", 2), ixn("1", "web", "allow", 1)}, nil},
		{"action", []*api.Intention{ixn("1", "web", "deny", 3), ixn("2", "api", "deny", 2)}, []string{"web"}},
		{"removed", []*api.Intention{ixn("1", "web", "allow", 1)}, []string{"api"}},
		{"wildcard added", append(slices.Clone(base), ixn("3", "*", "deny", 4)), []string{"*"}},
		{"new destination", append(slices.Clone(base), ixn("4", "db", "allow", 5)), []string{"db"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			have := changedDestinations(intentionDigests(base), intentionDigests(tc.next))
			if !slices.Equal(have, tc.want) {
				t.Errorf("want %v, have %v", tc.want, have)
			}
		})
	}
}

// denialRuntime is a Connect runtime of identity sluice with a leaf, using
// client, its destination web and the alert a refusing sidecar sends.
func denialRuntime(client *api.Client) (*connectRuntime, *connectDest, error) {
	rt := newConnectRuntime(hclog.NewNullLogger(), nil, nil)
	id := "sluice"
	rt.identity.Store(&id)
	rt.client.Store(client)
	rt.material.SetLeaf(&connect.Leaf{URI: "spiffe://td.consul/ns/default/dc/dc1/svc/sluice"})
	return rt, rt.dest("web", ""), &net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}
}

// TestDeniedFromWatch: an alert is a denial, without asking the agent,
// when the highest-precedence intention the watch saw for the
// destination (exact or wildcard) is an L4 deny; an allow above it, an
// L7 intention or none leaves it to the agent (unreachable here: the
// alert stays the instance's failure); so does no alert.
func TestDeniedFromWatch(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	rt, d, alert := denialRuntime(client)
	ixn := func(dest, action string, prec int) *api.Intention {
		return &api.Intention{SourceName: "sluice", DestinationName: dest, Action: api.IntentionAction(action), Precedence: prec}
	}
	l7 := ixn("web", "", 9)
	l7.Permissions = []*api.IntentionPermission{{Action: api.IntentionActionAllow}}
	for _, tc := range []struct {
		name   string
		ixns   []*api.Intention
		err    error
		denied bool
	}{
		{"exact deny", []*api.Intention{ixn("api", "allow", 9), ixn("web", "deny", 9)}, alert, true},
		{"wildcard deny", []*api.Intention{ixn("*", "deny", 8)}, alert, true},
		{"exact allow above wildcard deny", []*api.Intention{ixn("*", "deny", 8), ixn("web", "allow", 9)}, alert, false},
		{"L7 intention", []*api.Intention{l7}, alert, false},
		{"other destination", []*api.Intention{ixn("api", "deny", 9)}, alert, false},
		{"no alert", []*api.Intention{ixn("web", "deny", 9)}, errors.New("connection reset"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sorted := slices.Clone(tc.ixns)
			slices.SortStableFunc(sorted, func(a, b *api.Intention) int { return b.Precedence - a.Precedence })
			rt.intents.Store(&sorted)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			de := d.Denied(ctx, tc.err)
			if (de != nil) != tc.denied {
				t.Fatalf("want denied %t, have %v", tc.denied, de)
			}
			if de != nil && (de.Source != "sluice" || de.Destination != "web" || !errors.Is(de, tc.err)) {
				t.Fatalf("denial: %+v", de)
			}
		})
	}
}

// TestDeniedAuthorizeShared: alerts that no watched intention explains
// share one authorize question per destination while it is in flight (a
// hung agent holds one goroutine, not one per alert), each waiting no
// longer than its context; the agent's deny is a denial.
func TestDeniedAuthorizeShared(t *testing.T) {
	var asked atomic.Int32
	release := make(chan struct{})
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/agent/connect/authorize" {
			http.NotFound(w, r)
			return
		}
		asked.Add(1)
		<-release
		w.Write([]byte(`{"Authorized":false,"Reason":"default deny"}`))
	}))
	defer agent.Close()
	defer close(release)
	client, err := api.NewClient(&api.Config{Address: agent.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	_, d, alert := denialRuntime(client)

	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if de := d.Denied(ctx, alert); de != nil {
				t.Errorf("unanswered: want no denial, have %v", de)
			}
		}()
	}
	wg.Wait()
	if n := asked.Load(); n != 1 {
		t.Fatalf("want 1 authorize question in flight, have %d", n)
	}
	release <- struct{}{} // the first question ends
	deadline := time.Now().Add(5 * time.Second)
	for {
		d.mu.Lock()
		idle := d.call == nil
		d.mu.Unlock()
		if idle || time.Now().After(deadline) {
			break
		}
		runtime.Gosched()
	}
	go func() { release <- struct{}{} }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	de := d.Denied(ctx, alert)
	if de == nil || de.Reason != "default deny" || de.Destination != "web" {
		t.Fatalf("want the agent's denial, have %v", de)
	}
}
