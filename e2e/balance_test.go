package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestEveryStrategyServes routes /<strategy> to a service of that strategy
// over the same three instances and checks each serves every request.
func TestEveryStrategyServes(t *testing.T) {
	consul := startConsul(t)
	strategies := []string{"round_robin", "weighted_round_robin", "least_connections", "p2c", "random", "ip_hash", "ewma"}
	backends := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	var routes, services strings.Builder
	for _, st := range strategies {
		svc := "svc-" + strings.ReplaceAll(st, "_", "-")
		for _, be := range backends {
			consul.register(svc, svc+"-"+be.name, be.addr(), map[string]string{"weight": "2"})
		}
		fmt.Fprintf(&routes, "  route \"/%s\" {\n    service = %q\n  }\n", st, svc)
		fmt.Fprintf(&services, "service %q {\n  strategy = %q\n}\n", svc, st)
	}
	s := startSluiceConfig(t, consul.Addr, "listener \"public\" {\n  address = \"FRONT\"\n"+routes.String()+"}\n"+services.String())
	for _, st := range strategies {
		svc := "svc-" + strings.ReplaceAll(st, "_", "-")
		waitFor(t, 10*time.Second, svc+" instances", func() bool { return len(s.service(svc).Instances) == 3 })
		if have := s.service(svc).Strategy; have != st {
			t.Errorf("%s: strategy %q in /v1/services", svc, have)
		}
		seen := map[string]int{}
		for i := 0; i < 60; i++ {
			status, name, body, err := s.get("/" + st)
			if err != nil || status != http.StatusOK {
				t.Fatalf("%s: request %d: %d %v %s", st, i, status, err, body)
			}
			seen[name]++
		}
		// One client from one address: ip_hash keeps it on one instance;
		// every other strategy spreads the requests.
		if st == "ip_hash" && len(seen) != 1 || st != "ip_hash" && len(seen) < 2 {
			t.Errorf("%s: instances used %v", st, seen)
		}
	}
}

// cookieClient sends requests with a cookie jar of one cookie, by hand so
// the test sees every Set-Cookie.
type cookieClient struct {
	t      *testing.T
	s      *sluice
	cookie string // name=value
}

func (c *cookieClient) get() (backend, setCookie string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.s.Front+"/", nil)
	if c.cookie != "" {
		req.Header.Set("Cookie", c.cookie)
	}
	resp, err := c.s.client.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("status %d", resp.StatusCode)
	}
	setCookie = resp.Header.Get("Set-Cookie")
	if setCookie != "" {
		c.cookie, _, _ = strings.Cut(setCookie, ";")
	}
	return resp.Header.Get("X-Backend"), setCookie
}

// stickyWeb is the service block of the sticky tests: two sluice processes
// with it share the cookie secret.
const stickyWeb = `
service "web" {
  strategy = "round_robin"
  sticky {
    mode   = "cookie"
    cookie = "sluice_web"
    secret = "e2e-shared-secret"
  }
}
`

func TestStickyCookieFollowsConsul(t *testing.T) {
	consul := startConsul(t)
	backends := map[string]*backend{}
	for _, name := range []string{"a", "b", "c"} {
		backends[name] = startBackend(t, name)
		consul.register("web", "web-"+name, backends[name].addr(), nil)
	}
	s := startSluice(t, consul.Addr, "web", stickyWeb)
	waitFor(t, 10*time.Second, "three instances", func() bool { return len(s.service("web").Instances) == 3 })
	c := &cookieClient{t: t, s: s}
	pinned, set := c.get()
	if !strings.HasPrefix(set, "sluice_web=") || strings.Contains(set, "web-"+pinned) {
		t.Fatalf("first answer: want an opaque sluice_web cookie, have %q", set)
	}
	for i := 0; i < 100; i++ {
		if name, set := c.get(); name != pinned || set != "" {
			t.Fatalf("request %d: want %s without a new cookie, have %s %q", i, pinned, name, set)
		}
	}

	consul.setCheck("web-"+pinned, api.HealthCritical)
	waitFor(t, 5*time.Second, "pinned instance ineligible", func() bool {
		in, _ := s.instance("web", "web-"+pinned)
		return !in.Eligible
	})
	moved, set := c.get()
	if moved == pinned || set == "" {
		t.Fatalf("after critical: want another instance and a new cookie, have %s %q", moved, set)
	}
	consul.setCheck("web-"+pinned, api.HealthPassing)
	waitFor(t, 5*time.Second, "old instance back", func() bool {
		in, _ := s.instance("web", "web-"+pinned)
		return in.Eligible
	})
	for i := 0; i < 20; i++ {
		if name, _ := c.get(); name != moved {
			t.Fatalf("moved client went back to %s after its old instance returned", name)
		}
	}

	// A second sluice with the same secret honours the cookie.
	s2 := startSluice(t, consul.Addr, "web", stickyWeb)
	waitFor(t, 10*time.Second, "three instances in the second sluice", func() bool { return len(s2.service("web").Instances) == 3 })
	c2 := &cookieClient{t: t, s: s2, cookie: c.cookie}
	for i := 0; i < 10; i++ {
		if name, set := c2.get(); name != moved || set != "" {
			t.Fatalf("second sluice: want %s without a new cookie, have %s %q", moved, name, set)
		}
	}
}

// TestIPHashKeepsClients sends 100 requests from each of 20 loopback source
// addresses: every client stays on one instance, and the clients spread.
func TestIPHashKeepsClients(t *testing.T) {
	consul := startConsul(t)
	for _, name := range []string{"a", "b", "c"} {
		be := startBackend(t, name)
		consul.register("web", "web-"+name, be.addr(), nil)
	}
	s := startSluice(t, consul.Addr, "web", `
service "web" {
  strategy = "ip_hash"
}
`)
	waitFor(t, 10*time.Second, "three instances", func() bool { return len(s.service("web").Instances) == 3 })
	used := map[string]int{}
	for i := 0; i < 20; i++ {
		src := fmt.Sprintf("127.0.%d.%d", 1+i/200, 2+i%200)
		dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			// A new connection per request, so each request really comes
			// from src afresh.
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, addr)
			},
		}}
		first := ""
		for j := 0; j < 100; j++ {
			resp, err := client.Get("http://" + s.Front + "/")
			if err != nil {
				t.Fatalf("client %s: %v", src, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			name := resp.Header.Get("X-Backend")
			if resp.StatusCode != http.StatusOK || name == "" {
				t.Fatalf("client %s: status %d", src, resp.StatusCode)
			}
			if first == "" {
				first = name
			} else if name != first {
				t.Fatalf("client %s moved from %s to %s on request %d", src, first, name, j)
			}
		}
		used[first]++
	}
	if len(used) < 2 {
		t.Errorf("20 clients all on one instance: %v", used)
	}
}
