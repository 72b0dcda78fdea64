package e2e

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestDiscoveredRoutePolicy: a discovered route's runtime takes the
// instance filters of its service block (the route tag joins its tags),
// its backup_tag, and a reload's change of that block or of
// service_defaults in place.
func TestDiscoveredRoutePolicy(t *testing.T) {
	consul := startConsul(t)
	p1, k1, a := startFlaky(t, "p1"), startFlaky(t, "k1"), startFlaky(t, "a")
	const route = "sluice-route=/"
	registerFull(consul, "shop", "shop-p1", p1.addr(), []string{route, "v2"}, nil)
	registerFull(consul, "shop", "shop-k1", k1.addr(), []string{route, "v2", "backup"}, nil)
	registerFull(consul, "shop", "shop-a", a.addr(), []string{route}, nil) // lacks v2
	registerFull(consul, "cart", "cart-1", a.addr(), []string{"sluice-route=/cart"}, nil)
	body := `
listener "public" {
  address = "FRONT"
  discover {
    tag_prefix = "sluice-route="
  }
}
service_defaults {
  strategy = "round_robin"
}
`
	shopBlock := `
service "shop" {
  tags       = ["v2"]
  backup_tag = "backup"
}
`
	s := startSluiceConfig(t, consul.Addr, body+shopBlock)
	pool := "shop[" + route + "]"
	waitFor(t, 10*time.Second, "shop's backup listed as a standby", func() bool {
		in, ok := s.instance(pool, "shop-k1")
		return ok && in.Backup && in.Standby
	})
	if _, ok := s.instance(pool, "shop-a"); ok {
		t.Fatalf("shop-a lacks the block's tag v2 and is listed: %+v", s.service(pool))
	}
	l := startLoad(s, 2)
	defer l.finish()
	if have := names(served(t, l, 100, p1, k1, a)); have != "p1" {
		t.Fatalf("primary up: want p1 only, have %s", have)
	}
	consul.setCheck("shop-p1", api.HealthCritical)
	waitFor(t, 5*time.Second, "local backup serving", func() bool { return s.service(pool).Serving == "local backup" })
	if have := names(served(t, l, 100, p1, k1, a)); have != "k1" {
		t.Fatalf("primary critical: want k1 only, have %s", have)
	}
	consul.setCheck("shop-p1", api.HealthPassing)
	waitFor(t, 5*time.Second, "local serving", func() bool { return s.service(pool).Serving == "local" })
	l.finish()
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d failed requests: %v", n, l.examples)
	}

	// A reload that changes service_defaults changes the block-less
	// discovered runtime in place; one that drops the block's tags lets
	// shop-a in.
	cartPool := "cart[sluice-route=/cart]"
	waitFor(t, 10*time.Second, "cart served", func() bool {
		_, backend, _, err := s.get("/cart")
		return err == nil && backend == "a"
	})
	s.reload(`
listener "public" {
  address = "FRONT"
  discover {
    tag_prefix = "sluice-route="
  }
}
service_defaults {
  strategy = "least_connections"
}
service "shop" {
  backup_tag = "backup"
}
`)
	if svc := s.service(cartPool); svc.Strategy != "least_connections" || len(svc.Instances) != 1 || svc.Instances[0].Requests == 0 {
		t.Errorf("cart after reload: want least_connections with its counters kept, have %+v", svc)
	}
	waitFor(t, 10*time.Second, "shop-a listed once the block drops tags", func() bool {
		_, ok := s.instance(pool, "shop-a")
		return ok
	})
}
