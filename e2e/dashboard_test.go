package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/hashicorp/consul/api"
	"github.com/sluice-lb/sluice/balance"
)

// TestDashboard: the page on the admin address lists the instances, shows
// a check set critical in Consul as critical and ineligible within 2 s
// without a reload, with the change in the event feed; it is keyboard
// usable and fits a phone's width. Screenshots go to results/.
func TestDashboard(t *testing.T) {
	consul := startConsul(t)
	for _, name := range []string{"a", "b", "c"} {
		consul.register("web", "web-"+name, startBackend(t, name).addr(), map[string]string{"weight": "1"})
	}
	s := startSluice(t, consul.Addr, "web", `
service "web" {
  strategy = "round_robin"
  passive {
    consecutive_failures = 5
  }
}
`)
	waitFor(t, 10*time.Second, "3 instances", func() bool { return len(s.service("web").Instances) == 3 })
	// Traffic while the page is open, so that its rates have something to show.
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				_, _, _, _ = s.get("/")
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-stopped })

	ctx := browser(t, 1280, 900)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+s.Admin+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	evalUntil(t, ctx, 10*time.Second, "3 instance rows", `document.querySelectorAll('tr[data-id]').length`,
		func(rows int) bool { return rows == 3 })
	ids := evaluate[[]string](t, ctx, `[...document.querySelectorAll('tr[data-id]')].map(r => r.dataset.id)`)
	if want := []string{"e2e/web-a", "e2e/web-b", "e2e/web-c"}; strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Fatalf("rows %q, want %q", ids, want)
	}
	// Traffic shows once two samples exist (a second apart).
	evalUntil(t, ctx, 5*time.Second, "a request rate for route /", `(() => {
		for (const tr of document.querySelectorAll('#traffic tbody tr'))
			if (tr.cells[1].textContent === '/') return tr.cells[3].textContent;
		return '';
	})()`, func(rps string) bool { return rps != "" && rps != "—" && rps != "0.00" })

	// A marker that a page reload would lose.
	evaluate[any](t, ctx, `window.sluiceNoReload = 'same page'`)
	type rowState struct {
		Consul, Eligible, Reason string
	}
	rowJS := func(id string) string {
		return fmt.Sprintf(`(() => {
			const r = document.querySelector('tr[data-id=%q]');
			return r ? {consul: r.querySelector('.c-consul').textContent, eligible: r.dataset.eligible,
				reason: r.querySelector('.c-eligible').textContent} : {};
		})()`, id)
	}
	row := evaluate[rowState](t, ctx, rowJS("e2e/web-b"))
	if row.Consul != "passing" || row.Eligible != "true" {
		t.Fatalf("web-b before the change: %+v", row)
	}

	start := time.Now()
	consul.setCheck("web-b", "critical")
	row = evalUntil(t, ctx, 2*time.Second, "web-b critical and ineligible on the page", rowJS("e2e/web-b"),
		func(row rowState) bool { return row.Consul == "critical" && row.Eligible == "false" })
	t.Logf("web-b shown critical and ineligible %v after the Consul write", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(row.Reason, "consul critical") {
		t.Errorf("web-b's eligible cell %q does not give the reason", row.Reason)
	}
	if marker := evaluate[string](t, ctx, `window.sluiceNoReload || ''`); marker != "same page" {
		t.Fatalf("the page was reloaded")
	}
	evalUntil(t, ctx, 2*time.Second, "the ineligible event in the feed",
		`(document.querySelector('#events li[data-kind="ineligible"][data-instance="e2e/web-b"]') || {}).textContent || ''`,
		func(event string) bool { return strings.Contains(event, "consul critical") })
	out := evaluate[string](t, ctx, `document.getElementById('out').textContent`)
	health := evaluate[string](t, ctx, `document.getElementById('health').textContent`)
	if out != "1" || health != "degraded" {
		t.Errorf("summary: out of rotation %q, health %q; want 1, degraded", out, health)
	}
	screenshot(t, ctx, "dashboard.png", true)

	// Keyboard: "/" focuses the filter; typing narrows the rows.
	if err := chromedp.Do(ctx, chromedp.KeyEvent("/")); err != nil {
		t.Fatal(err)
	}
	if focused := evaluate[string](t, ctx, `document.activeElement.id`); focused != "filter" {
		t.Fatalf("after '/', focus is on %q, want the filter", focused)
	}
	if err := chromedp.Do(ctx, chromedp.KeyEvent("web-c")); err != nil {
		t.Fatal(err)
	}
	evalUntil(t, ctx, 2*time.Second, "one row left by the filter",
		`[...document.querySelectorAll('tr[data-id]')].filter(r => !r.hidden).length`,
		func(visible int) bool { return visible == 1 })
	if err := chromedp.Do(ctx, chromedp.KeyEvent(kb.Escape)); err != nil {
		t.Fatal(err)
	}
	evalUntil(t, ctx, 2*time.Second, "every row back after Escape",
		`[...document.querySelectorAll('tr[data-id]')].filter(r => !r.hidden).length`,
		func(visible int) bool { return visible == 3 })

	// A phone's width: nothing wider than the screen but the scrollable tables.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2))); err != nil {
		t.Fatal(err)
	}
	evalUntil(t, ctx, 2*time.Second, "the page to fit 390 px", `document.documentElement.scrollWidth <= window.innerWidth`,
		func(fits bool) bool { return fits })
	screenshot(t, ctx, "dashboard-phone.png", true)

	// The system's dark setting turns the page dark, without a reload.
	body := `getComputedStyle(document.body).backgroundColor`
	if light := evaluate[string](t, ctx, body); light != "rgb(246, 247, 249)" {
		t.Errorf("light background %s", light)
	}
	if err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
		_, err := cdp.Call(ctx, tgt, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}},
		})
		return err
	})); err != nil {
		t.Fatal(err)
	}
	evalUntil(t, ctx, 2*time.Second, "the dark background", body, func(bg string) bool { return bg == "rgb(15, 18, 22)" })
	screenshot(t, ctx, "dashboard-dark.png", false)
}

// TestDashboardManyInstances: a service of 200 instances shows all 200
// rows within 10 s of opening the page.
func TestDashboardManyInstances(t *testing.T) {
	const n = 200
	consul := startConsul(t)
	addr := startBackend(t, "many").addr()
	for i := range n {
		consul.register("many", fmt.Sprintf("many-%03d", i), addr, nil)
	}
	s := startSluice(t, consul.Addr, "many", "")
	waitFor(t, 20*time.Second, fmt.Sprintf("%d instances in /v1/services", n), func() bool {
		return len(s.service("many").Instances) == n
	})
	ctx := browser(t, 1280, 900)
	start := time.Now()
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+s.Admin+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	evalUntil(t, ctx, 10*time.Second, fmt.Sprintf("%d instance rows", n), `document.querySelectorAll('tr[data-id]').length`,
		func(rows int) bool { return rows == n })
	t.Logf("%d rows on the page %v after the navigation began", n, time.Since(start).Round(time.Millisecond))
	screenshot(t, ctx, "dashboard-200.png", false)
}

// TestDashboardHostileNames: instance IDs and addresses from Consul are
// shown as text, in the rows and in the event feed, never parsed as HTML.
func TestDashboardHostileNames(t *testing.T) {
	const id = `<img src=x onerror="window.pwned=1">`
	const addr = `"><svg onload="window.pwned=2">`
	consul := startConsul(t)
	consul.register("web", id, startBackend(t, "a").addr(), nil)
	if err := consul.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "bad-address", Name: "web", Address: addr, Port: 80,
		Check: &api.AgentServiceCheck{CheckID: "check-bad-address", TTL: "1h", Status: api.HealthPassing},
	}); err != nil {
		t.Fatal(err)
	}
	s := startSluice(t, consul.Addr, "web", "")
	waitFor(t, 10*time.Second, "2 instances", func() bool { return len(s.service("web").Instances) == 2 })

	ctx := browser(t, 1280, 900)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+s.Admin+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	evalUntil(t, ctx, 10*time.Second, "2 instance rows and their added events", `document.querySelectorAll('tr[data-id]').length +
		document.querySelectorAll('#events li[data-kind="added"]').length`, func(n int) bool { return n == 4 })
	type shown struct {
		IDs, Addresses, Feed []string
		Markup               int
		Pwned                any
	}
	have := evaluate[shown](t, ctx, `({
		ids: [...document.querySelectorAll('tr[data-id] > th')].map(c => c.firstChild.data),
		addresses: [...document.querySelectorAll('tr[data-id] .c-addr')].map(c => c.textContent),
		feed: [...document.querySelectorAll('#events li[data-kind="added"]')].map(li => li.textContent),
		markup: document.querySelectorAll('img, svg, script:not([src])').length,
		pwned: window.pwned === undefined ? null : window.pwned,
	})`)
	if have.Markup != 0 || have.Pwned != nil {
		t.Fatalf("names from Consul became markup: %d elements, window.pwned %v", have.Markup, have.Pwned)
	}
	wantIDs := []string{"e2e/" + id, "e2e/bad-address"}
	sort.Strings(wantIDs)
	if strings.Join(have.IDs, "\n") != strings.Join(wantIDs, "\n") {
		t.Errorf("ID cells %q, want %q", have.IDs, wantIDs)
	}
	if !slices.Contains(have.Addresses, addr+":80") {
		t.Errorf("address cells %q do not show %q as text", have.Addresses, addr+":80")
	}
	if feed := strings.Join(have.Feed, "\n"); !strings.Contains(feed, id) || !strings.Contains(feed, addr) {
		t.Errorf("event feed %q does not show the names as text", feed)
	}
}

// TestDashboardRestart: a page open across a restart of sluice shows the
// new process's events once it has reconnected, even when the new
// process has recorded as many events as the old one had (their Seq
// starts again from 1).
func TestDashboardRestart(t *testing.T) {
	consul := startConsul(t)
	consul.register("web", "web-a", startBackend(t, "a").addr(), nil)
	s := startSluice(t, consul.Addr, "web", "")
	waitFor(t, 10*time.Second, "1 instance", func() bool { return len(s.service("web").Instances) == 1 })
	newest := func() string { // the time of the process's newest event, as the stream sends it
		t.Helper()
		resp, err := s.client.Get("http://" + s.Admin + "/v1/events")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct{ Events []balance.Event }
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		if len(body.Events) != 2 {
			t.Fatalf("events %+v, want a start and an added", body.Events)
		}
		b, _ := json.Marshal(body.Events[1].Time)
		return strings.Trim(string(b), `"`)
	}
	feedNewest := `(document.querySelector('#events li time') || {}).dateTime || ''`

	ctx := browser(t, 1280, 900)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+s.Admin+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	first := newest()
	evalUntil(t, ctx, 10*time.Second, "the first process's newest event", feedNewest, func(v string) bool { return v == first })

	if err := s.proc.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop sluice: %v", err)
	}
	s.proc = startProcess(t, binary(t, "SLUICE_BIN", "sluice"), "run", "-config", s.Path)
	waitFor(t, 20*time.Second, "sluice /healthz 200 again", func() bool { return s.healthz() == http.StatusOK })
	waitFor(t, 10*time.Second, "1 instance again", func() bool { return len(s.service("web").Instances) == 1 })
	second := newest()
	if second == first {
		t.Fatalf("both processes' newest event at %s", first)
	}
	evalUntil(t, ctx, 10*time.Second, "the second process's newest event", feedNewest, func(v string) bool { return v == second })
}

// TestDashboardStreamsFull: a page refused because every dashboard stream
// is taken (503) keeps trying and goes live once one is free.
func TestDashboardStreamsFull(t *testing.T) {
	consul := startConsul(t)
	consul.register("web", "web-a", startBackend(t, "a").addr(), nil)
	s := startSluice(t, consul.Addr, "web", "")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var bodies []io.Closer
	defer func() {
		for _, b := range bodies {
			b.Close()
		}
	}()
	// Take every stream: open them until one is refused.
	for {
		resp, err := client.Get("http://" + s.Admin + "/v1/dashboard/stream")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			resp.Body.Close()
			break
		}
		bodies = append(bodies, resp.Body)
		if resp.StatusCode != http.StatusOK || len(bodies) > 1000 {
			t.Fatalf("stream %d: %d", len(bodies), resp.StatusCode)
		}
	}

	ctx := browser(t, 1280, 900)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+s.Admin+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	evalUntil(t, ctx, 10*time.Second, "the page to say it is not connected", `document.getElementById('conn').textContent`,
		func(v string) bool { return v != "connecting…" && v != "live" })
	for _, b := range bodies {
		b.Close()
	}
	bodies = nil
	evalUntil(t, ctx, 15*time.Second, "the page live with its instance", `document.getElementById('conn').textContent + ' ' +
		document.querySelectorAll('tr[data-id]').length`, func(v string) bool { return v == "live 1" })
}

var chromiumOnce struct {
	sync.Once
	path string
	err  error
}

// chromium returns the path of a Chromium (or Chrome) binary: $CHROMIUM_BIN,
// else the first on PATH. When none is found and the test runs as root on
// Debian, it installs the chromium package with apt-get once. A browser
// that cannot be had fails the test: it is never skipped.
func chromium(t *testing.T) string {
	t.Helper()
	chromiumOnce.Do(func() {
		if p := os.Getenv("CHROMIUM_BIN"); p != "" {
			chromiumOnce.path = p
			return
		}
		find := func() string {
			for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
				if p, err := exec.LookPath(name); err == nil {
					return p
				}
			}
			return ""
		}
		if chromiumOnce.path = find(); chromiumOnce.path != "" {
			return
		}
		if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
			chromiumOnce.err = fmt.Errorf("not on PATH, and apt-get is not available as root to install it")
			return
		}
		install := func(args ...string) error {
			cmd := exec.Command("apt-get", args...)
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return nil
		}
		t.Logf("chromium not found: installing Debian's chromium package")
		if err := install("install", "-y", "--no-install-recommends", "chromium"); err != nil {
			if err := install("update"); err != nil {
				chromiumOnce.err = err
				return
			}
			if err := install("install", "-y", "--no-install-recommends", "chromium"); err != nil {
				chromiumOnce.err = err
				return
			}
		}
		if chromiumOnce.path = find(); chromiumOnce.path == "" {
			chromiumOnce.err = fmt.Errorf("apt-get installed chromium, but it is not on PATH")
		}
	})
	if chromiumOnce.err != nil {
		t.Fatalf("the dashboard tests need headless Chromium: %v; install Debian's chromium package (apt-get install chromium), run `make test` as root, or set CHROMIUM_BIN", chromiumOnce.err)
	}
	return chromiumOnce.path
}

// browser starts headless Chromium with a window of width x height and
// returns its tab's context; the browser ends with the test.
func browser(t *testing.T, width, height int) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.WindowSize(width, height), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// evaluate runs js in the page and decodes its value.
func evaluate[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(tctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// evalUntil evaluates js every 20 ms until cond holds for its value, which
// it returns, failing the test when timeout passes first.
func evalUntil[T any](t *testing.T, ctx context.Context, timeout time.Duration, what, js string, cond func(T) bool) T {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := evaluate[T](t, ctx, js)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (last value %v)", timeout, what, v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// screenshot writes a PNG of the tab, the whole page or the viewport, to
// results/name (results/ is ignored by git).
func screenshot(t *testing.T, ctx context.Context, name string, fullPage bool) {
	t.Helper()
	shot := chromedp.CaptureScreenshot()
	if fullPage {
		shot = chromedp.FullScreenshot(100)
	}
	png, err := chromedp.Run(ctx, shot)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := filepath.Join("..", "results")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(path)
	t.Logf("screenshot: %s", abs)
}
