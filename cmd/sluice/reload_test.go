package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// scrape returns the /metrics text of the admin API at adm.
func scrape(t *testing.T, adm string) string {
	t.Helper()
	_, body := get(t, "http://"+adm+"/metrics")
	return body
}

// TestMovedListenerKeepsMetrics: a listener moved to a new address keeps
// its name; the old socket's drain, when it ends, must not delete the
// series that the listener at the new address counts in.
func TestMovedListenerKeepsMetrics(t *testing.T) {
	fc := newFakeConsul()
	release := make(chan struct{})
	fc.add("web", "w1", backendFunc(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "w1")
	}))
	front, adm, moved := freeAddr(t), freeAddr(t), freeAddr(t)
	ta := startApp(t, fc, configText(baseConfig, "FRONT", front, "ADMIN", adm))
	ta.synced()
	// A request in flight on the old socket keeps it draining.
	slowDone := make(chan struct{})
	go func() {
		defer close(slowDone)
		if resp, err := http.Get("http://" + front + "/slow"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	waitUntil(t, "the slow request in flight", func() bool {
		return ta.services["web"].pool.Load().Members[0].Stats.Inflight() == 1
	})

	ta.write(configText(baseConfig, "FRONT", moved, "ADMIN", adm))
	ta.reload()
	if st := ta.status().(Status); st.LastReload.Result != "success" {
		t.Fatalf("reload: %+v", st.LastReload)
	}
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + moved + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// The answer is counted when its body is closed, a moment after the
	// client has read it.
	waitUntil(t, "the request series before the drain ends", func() bool {
		return strings.Contains(scrape(t, adm), `sluice_requests_total{code="200",listener="public"`)
	})
	close(release)
	<-slowDone
	ta.draining.Wait()
	// One more request at the new address, on the same connection.
	resp, err = client.Get("http://" + moved + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var m string
	waitUntil(t, "the second request counted", func() bool {
		m = scrape(t, adm)
		return strings.Contains(m, `sluice_requests_total{code="200",listener="public"`)
	})
	if !strings.Contains(m, `sluice_requests_total{code="200",listener="public"`) {
		t.Errorf("the moved listener's requests are not exported:\n%s", grepLines(m, "sluice_requests_total"))
	}
	if !strings.Contains(m, `sluice_open_connections{listener="public",protocol="http"} 1`) {
		t.Errorf("the moved listener's open connection is not exported:\n%s", grepLines(m, "sluice_open_connections"))
	}
}

// TestRenamedHTTPListenerOpenConnections: a renamed http listener keeps
// its socket and handler; its new connections count under the new name in
// sluice_open_connections, and the old name's series go.
func TestRenamedHTTPListenerOpenConnections(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	ta := startApp(t, fc, configText(baseConfig, "FRONT", front, "ADMIN", adm))
	ta.synced()
	ta.write(strings.Replace(configText(baseConfig, "FRONT", front, "ADMIN", adm), `listener "public"`, `listener "front"`, 1))
	ta.reload()
	if st := ta.status().(Status); st.LastReload.Result != "success" {
		t.Fatalf("reload: %+v", st.LastReload)
	}
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + front + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	m := scrape(t, adm)
	if !strings.Contains(m, `sluice_open_connections{listener="front",protocol="http"} 1`) {
		t.Errorf("the renamed listener's open connection is not exported:\n%s", grepLines(m, "sluice_open_connections"))
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAdminMovedBackAtOnce: moving admin.address A -> B -> A in two
// reloads in a row works: the old admin socket is closed before apply
// returns, so its address is free for the next reload.
func TestAdminMovedBackAtOnce(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm, adm2 := freeAddr(t), freeAddr(t), freeAddr(t)
	ta := startApp(t, fc, configText(baseConfig, "FRONT", front, "ADMIN", adm))
	ta.synced()
	fails := 0
	for i := 0; i < 50; i++ {
		to := adm2
		if i%2 == 1 {
			to = adm
		}
		ta.write(configText(baseConfig, "FRONT", front, "ADMIN", to))
		ta.reload()
		if st := ta.status().(Status); st.LastReload.Result != "success" {
			fails++
			t.Logf("reload %d to admin %s: %v", i, to, st.LastReload.Diagnostics)
			ta.draining.Wait()
		}
	}
	if fails > 0 {
		t.Errorf("%d of 50 admin moves failed", fails)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestReloadsLeakNothing: 40 reloads alternating between two files
// that change every part (strategy, tag, health_check, access log file,
// an added listener, tcp listener, an added service, the consul block,
// listener rename) under HTTP load; afterwards goroutines and descriptors
// return to what they were.
func TestReloadsLeakNothing(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	fc.add("api", "a1", backend(t, "a1"))
	dir := t.TempDir()
	front, adm, extra, tcp := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	cfgA := configText(`
admin {
  address = "ADMIN"
}
listener "public" {
  address    = "FRONT"
  access_log = "LOG1"
  route "/" {
    service = "web"
  }
}
listener "db" {
  address  = "TCP"
  protocol = "tcp"
  service  = "web"
}
service "web" {
  strategy = "round_robin"
  health_check {
    path     = "/"
    interval = "100ms"
    timeout  = "50ms"
  }
}
`, "FRONT", front, "ADMIN", adm, "TCP", tcp, "LOG1", filepath.Join(dir, "a.log"))
	cfgB := configText(`
consul {
  address = "127.0.0.2:8500"
}
admin {
  address = "ADMIN"
}
listener "renamed" {
  address    = "FRONT"
  access_log = "LOG2"
  route "/" {
    service = "web"
  }
  route "/api" {
    service = "api"
  }
}
listener "more" {
  address    = "EXTRA"
  access_log = "LOG1"
  route "/" {
    service = "api"
  }
}
service "web" {
  strategy = "least_connections"
  tag      = "v2"
  passive {
    consecutive_failures = 3
  }
}
service "api" {
  health_check {
    type     = "tcp"
    interval = "100ms"
    timeout  = "50ms"
  }
}
`, "FRONT", front, "ADMIN", adm, "EXTRA", extra, "LOG1", filepath.Join(dir, "a.log"), "LOG2", filepath.Join(dir, "b.log"))
	ta := startApp(t, fc, cfgA)
	t.Logf("after start: %d goroutines", runtime.NumGoroutine())
	ta.synced()

	var stop atomic.Bool
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{}, Timeout: 2 * time.Second}
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if resp, err := client.Get("http://" + front + "/"); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if c, err := net.DialTimeout("tcp", tcp, time.Second); err == nil {
					c.Close()
				}
			}
		}()
	}
	settle := func() (int, int) {
		ta.draining.Wait()
		client.CloseIdleConnections()
		ta.transport.CloseIdleConnections()
		// Replaced access-log files are closed by the runtime once
		// unreachable (see reopenFile); connection goroutines end a
		// moment after their close. The caller polls.
		runtime.GC()
		time.Sleep(100 * time.Millisecond)
		return runtime.NumGoroutine(), countFDs(t)
	}
	reload := func(src string) {
		ta.write(src)
		ta.reload()
		if st := ta.status().(Status); st.LastReload.Result != "success" {
			t.Fatalf("reload: %+v", st.LastReload)
		}
	}
	reload(cfgB)
	reload(cfgA)
	stop.Store(true)
	wg.Wait()
	g0, fd0 := settle()
	stop.Store(false)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if resp, err := client.Get("http://" + front + "/"); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		reload(cfgB)
		reload(cfgA)
	}
	stop.Store(true)
	wg.Wait()
	var g1, fd1 int
	deadline := time.Now().Add(5 * time.Second)
	for {
		g1, fd1 = settle()
		if (g1 <= g0+2 && fd1 <= fd0+2) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("goroutines %d -> %d, fds %d -> %d", g0, g1, fd0, fd1)
	if g1 > g0+2 {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Errorf("goroutines: %d before 40 reloads, %d after\n%s", g0, g1, buf[:n])
	}
	if fd1 > fd0+2 {
		t.Errorf("descriptors: %d before 40 reloads, %d after", fd0, fd1)
	}
}

// TestRemovedServiceSeriesDeleted: the series of a service that a reload
// removes are deleted, also when a route of the same host and path now
// sends to another service.
func TestRemovedServiceSeriesDeleted(t *testing.T) {
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	fc.add("api", "a1", backend(t, "a1"))
	front, adm := freeAddr(t), freeAddr(t)
	src := configText(baseConfig, "FRONT", front, "ADMIN", adm)
	withAPI := strings.Replace(src, `route "/" {
    service = "web"
  }`, `route "/" {
    service = "web"
  }
  route "/api" {
    service = "api"
  }`, 1) + "service \"api\" {\n}\n"
	ta := startApp(t, fc, withAPI)
	ta.synced()
	if code, body := get(t, "http://"+front+"/api"); code != 200 || body != "a1" {
		t.Fatalf("%d %q", code, body)
	}
	// The answer is counted when its body is closed, a moment after the
	// client has read it.
	waitUntil(t, "the api request counted", func() bool {
		return strings.Contains(scrape(t, adm), `service="api"`)
	})
	ta.write(strings.Replace(strings.TrimSuffix(withAPI, "service \"api\" {\n}\n"), `service = "api"`, `service = "web"`, 1))
	ta.reload()
	if st := ta.status().(Status); st.LastReload.Result != "success" {
		t.Fatalf("reload: %+v", st.LastReload)
	}
	if m := grepLines(scrape(t, adm), "sluice_requests_total"); strings.Contains(m, `service="api"`) {
		t.Errorf("the removed service's series stay:\n%s", m)
	}
}
