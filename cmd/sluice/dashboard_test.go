package main

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/admin"
)

// TestDashboardWiring: the start and each reload are events, the
// dashboard knows the listeners and routes with their metrics labels and
// the sticky mode, and the admin server's shutdown ends open dashboard
// streams instead of waiting for them.
func TestDashboardWiring(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	src := configText(baseConfig, "FRONT", front, "ADMIN", adm)
	ta := startApp(t, fc, src)
	ta.synced()
	ta.write(strings.Replace(src, `"round_robin"`, `"nope"`, 1))
	ta.reload()
	ta.write(src)
	ta.reload()

	var reloads []string
	events, _ := ta.events.Events()
	for _, e := range events {
		if e.Kind == balance.EventReload {
			reloads = append(reloads, e.Detail)
		}
	}
	if len(reloads) != 3 || reloads[0] != "started: generation 1" || !strings.HasPrefix(reloads[1], "failed, the running configuration stays: "+ta.file+":12,") ||
		reloads[2] != "succeeded: generation 2" {
		t.Errorf("reload events: %q", reloads)
	}
	ls := *ta.routes.Load()
	if len(ls) != 1 || ls[0].Name != "public" || ls[0].Protocol != "http" || len(ls[0].Routes) != 1 ||
		ls[0].Routes[0] != (admin.Route{Route: "/", Service: "web"}) {
		t.Errorf("dashboard listeners: %+v", ls)
	}
	if s := ta.services["web"].pool.Load().Sticky; s != "cookie" {
		t.Errorf("sticky mode %q", s)
	}

	resp, err := http.Get("http://" + adm + "/v1/dashboard/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(nil, 1<<20)
	for lines.Scan() && !strings.HasPrefix(lines.Text(), "data: ") {
	}
	done := make(chan struct{})
	go func() { ta.admin.shutdown(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second): // a hang, not a speed limit
		t.Fatal("the admin server's shutdown waits for an open dashboard stream")
	}
}
