package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/sluice-lb/sluice/proxy/admin"
)

// registerTagged adds a service instance at addr with tags and a passing
// TTL check "check-<id>"; registering an existing ID replaces it.
func (c *consulAgent) registerTagged(service, id, addr string, tags ...string) {
	c.t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	var p int
	fmt.Sscan(port, &p)
	err := c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: service, Address: host, Port: p, Tags: tags,
		Check: &api.AgentServiceCheck{CheckID: "check-" + id, TTL: "1h", Status: api.HealthPassing},
	})
	if err != nil {
		c.t.Fatalf("register %s: %v", id, err)
	}
}

// routes reads GET /v1/routes.
func (s *sluice) routes() admin.RoutesResponse {
	s.t.Helper()
	var out admin.RoutesResponse
	s.adminJSON("/v1/routes", &out)
	return out
}

// route returns the /v1/routes entry of listener "public" made by
// service's tag, and whether there is one.
func (s *sluice) route(service, tag string) (admin.RouteStatus, bool) {
	for _, l := range s.routes().Listeners {
		for _, r := range l.Routes {
			if l.Name == "public" && r.Service == service && r.Tag == tag {
				return r, true
			}
		}
	}
	return admin.RouteStatus{}, false
}

// until polls GET path every 5ms until want says yes, and returns how
// long that took; it fails the test after timeout.
func (s *sluice) until(t *testing.T, timeout time.Duration, what, path string, want func(code int, backend, body string) bool) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, timeout, what, func() bool {
		code, backend, body, err := s.get(path)
		return err == nil && want(code, backend, body)
	})
	return time.Since(start)
}

func notFound(code int, _, body string) bool {
	return code == http.StatusNotFound && strings.Contains(body, `"no route"`)
}

func TestDiscoveredRoutes(t *testing.T) {
	consul := startConsul(t)
	web := startBackend(t, "web")
	consul.register("web", "web-1", web.addr(), nil)
	body := `
listener "public" {
  address = "FRONT"
  discover {
    tag_prefix = "sluice-route="
  }
  route "/web" {
    service = "web"
  }
}
service_defaults {
  strategy = "round_robin"
}
`
	s := startSluiceConfig(t, consul.Addr, body)

	// A new tagged service gets traffic with no reload, on its tagged
	// instances only.
	shop, shopUntagged := startBackend(t, "shop"), startBackend(t, "shop-untagged")
	consul.registerTagged("shop", "shop-2", shopUntagged.addr(), "v2")
	consul.registerTagged("shop", "shop-1", shop.addr(), "sluice-route=/shop", "v1")
	took := s.until(t, 10*time.Second, "traffic to the new service", "/shop/cart", func(code int, backend, _ string) bool {
		return code == http.StatusOK && backend == "shop"
	})
	t.Logf("a newly registered tagged service got traffic %v after its registration", took)
	for range 10 {
		if code, backend, _, err := s.get("/shop/cart"); err != nil || code != http.StatusOK || backend != "shop" {
			t.Fatalf("want shop only, have %d %q %v", code, backend, err)
		}
	}
	if r, _ := s.route("shop", "sluice-route=/shop"); r.State != admin.RouteActive || r.Pool != "shop[sluice-route=/shop]" || r.Route != "/shop" {
		t.Fatalf("/v1/routes: %+v", r)
	}
	if svc := s.service("shop[sluice-route=/shop]"); svc.Strategy != "round_robin" || len(svc.Instances) != 1 {
		t.Fatalf("/v1/services: %+v", svc)
	}

	// The tag goes (the instance stays): the route goes, 404.
	consul.registerTagged("shop", "shop-1", shop.addr(), "v1")
	took = s.until(t, 10*time.Second, "404 after the tag went", "/shop/cart", notFound)
	t.Logf("404 %v after the tag went", took)

	// The last instance goes: 404.
	solo := startBackend(t, "solo")
	consul.registerTagged("solo", "solo-1", solo.addr(), "sluice-route=/solo")
	s.until(t, 10*time.Second, "traffic to solo", "/solo", func(code int, backend, _ string) bool { return backend == "solo" })
	consul.deregister("solo-1")
	took = s.until(t, 10*time.Second, "404 after the last instance went", "/solo", notFound)
	t.Logf("404 %v after the last instance went", took)

	// The file's route wins on an identical host and prefix; two services
	// on the same host and prefix: the name that sorts first wins; a
	// malformed tag is shown.
	hijack, alpha, beta := startBackend(t, "hijack"), startBackend(t, "alpha"), startBackend(t, "beta")
	consul.registerTagged("hijack", "hijack-1", hijack.addr(), "sluice-route=/web")
	consul.registerTagged("beta", "beta-1", beta.addr(), "sluice-route=/dup")
	consul.registerTagged("alpha", "alpha-1", alpha.addr(), "sluice-route=/dup")
	consul.registerTagged("broken", "broken-1", alpha.addr(), "sluice-route=no-path")
	s.until(t, 10*time.Second, "traffic to alpha", "/dup", func(code int, backend, _ string) bool { return backend == "alpha" })
	waitFor(t, 10*time.Second, "broken in /v1/routes", func() bool { _, ok := s.route("broken", "sluice-route=no-path"); return ok })
	for _, tc := range []struct{ service, tag, state, reason string }{
		{"hijack", "sluice-route=/web", admin.RouteShadowed, `the configuration file routes "/web" to service "web"`},
		{"beta", "sluice-route=/dup", admin.RouteShadowed, `service "alpha" (tag "sluice-route=/dup") claims the same host and path prefix`},
		{"alpha", "sluice-route=/dup", admin.RouteActive, ""},
		{"broken", "sluice-route=no-path", admin.RouteInvalid, "no path prefix"},
	} {
		if r, ok := s.route(tc.service, tc.tag); !ok || r.State != tc.state || !strings.Contains(r.Reason, tc.reason) {
			t.Errorf("%s: have %+v, want state %s with reason %q", tc.service, r, tc.state, tc.reason)
		}
	}
	// beta, registered first, may have served /dup alone until alpha's
	// registration reached sluice: count from here.
	betaBefore := beta.hits.Load()
	for range 5 {
		if code, backend, _, err := s.get("/web"); err != nil || code != http.StatusOK || backend != "web" {
			t.Fatalf("/web: want web, have %d %q %v", code, backend, err)
		}
		if code, backend, _, err := s.get("/dup"); err != nil || code != http.StatusOK || backend != "alpha" {
			t.Fatalf("/dup: want alpha, have %d %q %v", code, backend, err)
		}
	}
	if hijack.hits.Load() != 0 || beta.hits.Load() != betaBefore {
		t.Errorf("shadowed services got traffic: hijack %d, beta %d", hijack.hits.Load(), beta.hits.Load()-betaBefore)
	}
	// The file's routes are listed with their origin.
	if l := s.routes().Listeners[0]; l.TagPrefix != "sluice-route=" || l.Routes[0] != (admin.RouteStatus{Route: "/web", Service: "web", Pool: "web",
		Origin: admin.OriginHCL, State: admin.RouteActive}) {
		t.Errorf("/v1/routes listener: %+v", l)
	}

	// A reload keeps the discovered routes; a service block now names
	// alpha's policy, which its pool takes in place.
	s.reload(body + `
service "alpha" {
  strategy = "least_connections"
}
`)
	if svc := s.service("alpha[sluice-route=/dup]"); svc.Strategy != "least_connections" || svc.Instances[0].Requests == 0 {
		t.Errorf("alpha after reload: %+v", svc)
	}
	if code, backend, _, err := s.get("/dup"); err != nil || code != http.StatusOK || backend != "alpha" {
		t.Fatalf("/dup after reload: want alpha, have %d %q %v", code, backend, err)
	}
}
