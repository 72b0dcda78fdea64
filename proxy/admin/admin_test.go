package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
)

func TestServicesAndHealthz(t *testing.T) {
	build, _ := balance.Lookup("weighted_round_robin")
	web := balance.NewPool(balance.PoolOptions{Service: "web", Strategy: "weighted_round_robin", Builder: build})
	api := balance.NewPool(balance.PoolOptions{Service: "api", Strategy: "weighted_round_robin", Builder: build})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go web.Run(ctx)
	go api.Run(ctx)
	h := NewHandler(Options{Pools: func() []*balance.Pool { return []*balance.Pool{web, api} }})

	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec
	}
	if rec := get("/healthz"); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("healthz before any Consul answer: want 503, have %d", rec.Code)
	}

	web.SetMembers(ctx, 42, []balance.Member{
		{ID: "web-1", Addr: "127.0.0.1:9001", Weight: 3, Consul: balance.HealthPassing},
		{ID: "web-2", Addr: "127.0.0.1:9002", Weight: 1, Consul: balance.HealthCritical},
		{ID: "web-3", Addr: "127.0.0.1:0", Weight: 1, Consul: balance.HealthPassing, Invalid: "invalid port"},
	})
	deadline := time.Now().Add(5 * time.Second)
	for !web.Load().Synced && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if rec := get("/healthz"); rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "consul_errors") {
		t.Fatalf("healthz with api not synced: want 503 without errors, have %d %s", rec.Code, rec.Body)
	}
	// An unsynced pool's Consul error is shown.
	api.SetError(ctx, errors.New(`consul ACL: results filtered`))
	for api.Load().ConsulError == "" && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	rec := get("/healthz")
	var body struct {
		Services     []string          `json:"services"`
		ConsulErrors map[string]string `json:"consul_errors"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusServiceUnavailable ||
		len(body.Services) != 1 || body.Services[0] != "api" || body.ConsulErrors["api"] != "consul ACL: results filtered" || len(body.ConsulErrors) != 1 {
		t.Fatalf("healthz with api failing: want 503 naming api and its error, have %d %s", rec.Code, rec.Body)
	}
	api.SetMembers(ctx, 1, nil)
	for !api.Load().Synced && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if rec := get("/healthz"); rec.Code != http.StatusOK {
		t.Fatalf("healthz with all synced: want 200, have %d", rec.Code)
	}

	res, _ := web.Load().Picker.Pick(balance.PickInfo{})
	defer res.Done(nil)
	rec = get("/v1/services")
	var have ServicesResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &have); err != nil || rec.Code != 200 {
		t.Fatalf("services: %d %v %s", rec.Code, err, rec.Body)
	}
	if len(have.Services) != 2 || have.Services[0].Name != "web" || have.Services[1].Name != "api" {
		t.Fatalf("services: %+v", have.Services)
	}
	svc := have.Services[0]
	want := []Instance{
		{ID: "web-1", Address: "127.0.0.1:9001", Weight: 3, Consul: "passing", Probe: "unknown", Eligible: true, Reason: "eligible",
			EffectiveWeight: 3, Inflight: 1, Requests: 1},
		{ID: "web-2", Address: "127.0.0.1:9002", Weight: 1, Consul: "critical", Probe: "unknown", Reason: "consul critical"},
		{ID: "web-3", Address: "127.0.0.1:0", Weight: 1, Consul: "passing", Invalid: "invalid port", Probe: "unknown", Reason: "invalid: invalid port"},
	}
	if svc.Strategy != "weighted_round_robin" || svc.ConsulIndex != 42 || len(svc.Instances) != 3 {
		t.Fatalf("web: %+v", svc)
	}
	for i := range want {
		if svc.Instances[i] != want[i] {
			t.Errorf("instance %d: want %+v, have %+v", i, want[i], svc.Instances[i])
		}
	}
	// The reason is in the JSON only for an invalid instance.
	if body := rec.Body.String(); strings.Count(body, `"invalid": "invalid port"`) != 1 || strings.Count(body, `"invalid"`) != 1 {
		t.Errorf("want one invalid field, for web-3: %s", body)
	}
	if rec := get("/nope"); rec.Code != http.StatusNotFound {
		t.Errorf("unknown path: want 404, have %d", rec.Code)
	}
}

func TestRoutes(t *testing.T) {
	get := func(h http.Handler) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/routes", nil))
		return rec
	}
	if rec := get(NewHandler(Options{Pools: func() []*balance.Pool { return nil }})); rec.Code != http.StatusNotFound {
		t.Fatalf("without Routes: want 404, have %d", rec.Code)
	}
	want := RoutesResponse{Listeners: []RouteListener{{Name: "public", Protocol: "http", Address: "127.0.0.1:8080", TagPrefix: "sluice-route=",
		Routes: []RouteStatus{{Route: "/shop", Service: "shop", Pool: "shop[sluice-route=/shop]", Origin: OriginDiscovered, Tag: "sluice-route=/shop", State: RouteActive}}}}}
	rec := get(NewHandler(Options{Pools: func() []*balance.Pool { return nil }, Routes: func() RoutesResponse { return want }}))
	var have RoutesResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &have); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("have %d %s", rec.Code, rec.Body)
	}
	if have.Listeners[0].Routes[0] != want.Listeners[0].Routes[0] || have.Listeners[0].TagPrefix != "sluice-route=" {
		t.Fatalf("have %+v", have)
	}
}

// Waiting's reason makes /healthz 503 whatever the pools say, until
// Ready says ready.
func TestHealthzWaiting(t *testing.T) {
	var why atomic.Pointer[string]
	var ready atomic.Bool
	empty := ""
	why.Store(&empty)
	h := NewHandler(Options{Pools: func() []*balance.Pool { return nil }, Ready: ready.Load,
		Waiting: func() string { return *why.Load() }})
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get(); code != http.StatusOK {
		t.Fatalf("nothing waited for: %d %s", code, body)
	}
	reason := "connect: no leaf certificate yet"
	why.Store(&reason)
	if code, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, `"reason": "connect: no leaf certificate yet"`) {
		t.Fatalf("waiting, though every pool synced: %d %s", code, body)
	}
	ready.Store(true) // the process was ready once: a later wait (a reload adding Connect) does not take it back
	if code, body := get(); code != http.StatusOK {
		t.Fatalf("ready, with a reason to wait: %d %s", code, body)
	}
}
