package main

import (
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/balance"
)

// TestReloadFailoverInPlace: adding a failover block, backup_tag,
// passing_only and panic_threshold by reload keeps the pool and its
// counters, adds the failover datacenter's instances with prefixed IDs,
// and removing the block drops them again.
func TestReloadFailoverInPlace(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	base := configText(baseConfig, "FRONT", front, "ADMIN", adm)
	ta := startApp(t, fc, base)
	ta.synced()
	pool := ta.services["web"].pool
	member := func(id string) (balance.MemberStatus, bool) {
		for _, m := range pool.Load().Members {
			if m.ID == id {
				return m, true
			}
		}
		return balance.MemberStatus{}, false
	}
	local, _ := member("n1/w1")
	if local.Stats == nil {
		t.Fatal("n1/w1 not in the pool")
	}

	extra := `  failover {
    datacenters = ["dc2"]
  }
  backup_tag      = "backup"
  passing_only    = true
  panic_threshold = 50
`
	ta.write(strings.Replace(base, "  strategy = \"round_robin\"\n", "  strategy = \"round_robin\"\n"+extra, 1))
	ta.reload()
	if st := ta.status().(Status); st.LastReload.Result != "success" {
		t.Fatalf("reload: %+v", st.LastReload)
	}
	if ta.services["web"].pool != pool {
		t.Fatal("the reload replaced the pool")
	}
	waitUntil(t, "dc2/n1/w1 in the pool", func() bool { _, ok := member("dc2/n1/w1"); return ok })
	remote, _ := member("dc2/n1/w1")
	if remote.Datacenter != "dc2" || remote.Tier != 2 || !remote.Standby {
		t.Fatalf("dc2/n1/w1: want datacenter dc2, tier 2, standby; have %+v", remote)
	}
	if m, _ := member("n1/w1"); m.Stats != local.Stats || m.Standby {
		t.Fatal("n1/w1 lost its counters or stopped serving across the reload")
	}
	if s := pool.Load().Serving; s != "local" {
		t.Fatalf("serving %q, want local", s)
	}

	ta.write(base)
	ta.reload()
	waitUntil(t, "dc2/n1/w1 gone", func() bool { _, ok := member("dc2/n1/w1"); return !ok })
	if m, _ := member("n1/w1"); m.Stats != local.Stats {
		t.Fatal("n1/w1 lost its counters across the second reload")
	}
}
