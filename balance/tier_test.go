package balance

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// runTierPool starts a pool with strategy, sticky options (nil: none),
// passing_only and panic threshold, and failover datacenters dcs.
func runTierPool(t *testing.T, strategy string, sticky *StickyOptions, passingOnly bool, panicThreshold int, dcs ...string) *Pool {
	t.Helper()
	build, err := NewBuilder("web", strategy, sticky)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPool(PoolOptions{Service: "web", Strategy: strategy, Builder: build, PassingOnly: passingOnly, PanicThreshold: panicThreshold})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := p.SetFailover(context.Background(), dcs); err != nil {
		t.Fatal(err)
	}
	return p
}

func setRemote(t *testing.T, p *Pool, dc string, ms ...Member) *Snapshot {
	t.Helper()
	if err := p.SetRemoteMembers(context.Background(), dc, ms); err != nil {
		t.Fatal(err)
	}
	return refresh(t, p)
}

func backup(m Member) Member { m.Backup = true; return m }

// pickedSet returns how often each ID was picked in n picks.
func pickedSet(t *testing.T, p *Pool, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range n {
		res, err := p.Load().Picker.Pick(PickInfo{})
		if err != nil {
			t.Fatalf("pick: %v", err)
		}
		out[res.Endpoint.ID]++
		res.Done(nil)
	}
	return out
}

func keys(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return strings.Join(ks, ",")
}

// TestTierOrder: requests go to the first tier with an eligible member:
// local primaries, local backups, then each failover datacenter in order
// (its primaries, then its backups).
func TestTierOrder(t *testing.T) {
	for _, strategy := range Implemented() {
		t.Run(strategy, func(t *testing.T) {
			p := runTierPool(t, strategy, nil, false, 0, "dc2", "dc3")
			setRemote(t, p, "dc3", member("n/c1", 1, HealthPassing))
			setRemote(t, p, "dc2", member("n/b1", 1, HealthPassing), backup(member("n/b2", 1, HealthPassing)))
			local := []Member{member("n/a1", 1, HealthPassing), member("n/a2", 1, HealthPassing), backup(member("n/k1", 1, HealthPassing))}
			steps := []struct {
				name        string
				down        []string // local members made critical
				downDC2     []string
				wantServing string
				want        string
			}{
				{"all up", nil, nil, "local", "n/a1,n/a2"},
				{"one primary down", []string{"n/a1"}, nil, "local", "n/a2"},
				{"primaries down", []string{"n/a1", "n/a2"}, nil, "local backup", "n/k1"},
				{"local down", []string{"n/a1", "n/a2", "n/k1"}, nil, "dc2", "dc2/n/b1"},
				{"dc2 primary down", []string{"n/a1", "n/a2", "n/k1"}, []string{"n/b1"}, "dc2 backup", "dc2/n/b2"},
				{"dc2 down", []string{"n/a1", "n/a2", "n/k1"}, []string{"n/b1", "n/b2"}, "dc3", "dc3/n/c1"},
				{"one local primary back", []string{"n/a1", "n/k1"}, []string{"n/b1", "n/b2"}, "local", "n/a2"},
			}
			for _, step := range steps {
				ms := make([]Member, len(local))
				copy(ms, local)
				for i := range ms {
					for _, id := range step.down {
						if ms[i].ID == id {
							ms[i].Consul = HealthCritical
						}
					}
				}
				setMembers(t, p, 1, ms...)
				remote := []Member{member("n/b1", 1, HealthPassing), backup(member("n/b2", 1, HealthPassing))}
				for i := range remote {
					for _, id := range step.downDC2 {
						if remote[i].ID == id {
							remote[i].Consul = HealthCritical
						}
					}
				}
				snap := setRemote(t, p, "dc2", remote...)
				if snap.Serving != step.wantServing {
					t.Errorf("%s: want serving %q, have %q", step.name, step.wantServing, snap.Serving)
				}
				// Every pick is of the serving tier (ip_hash without a
				// client address always picks the same one).
				for id := range pickedSet(t, p, 40) {
					if !strings.Contains(","+step.want+",", ","+id+",") {
						t.Errorf("%s: want picks of %s, have %s", step.name, step.want, id)
					}
				}
				for _, m := range snap.Members {
					wantStandby := m.Eligible && !strings.Contains(","+step.want+",", ","+m.ID+",")
					if m.Standby != wantStandby {
						t.Errorf("%s: %s: want standby %v, have %v", step.name, m.ID, wantStandby, m.Standby)
					}
				}
			}
		})
	}
}

// TestTierRetryReachesNextTier: a request that tried every member of the
// serving tier (they failed before the registry noticed) is given one of
// the next tier, so failover retries cover a switch.
func TestTierRetryReachesNextTier(t *testing.T) {
	for _, strategy := range Implemented() {
		t.Run(strategy, func(t *testing.T) {
			p := runTierPool(t, strategy, nil, false, 0, "dc2")
			setMembers(t, p, 1, member("n/a1", 1, HealthPassing), member("n/a2", 1, HealthPassing))
			setRemote(t, p, "dc2", member("n/b1", 1, HealthPassing))
			var info PickInfo
			seen := map[string]bool{}
			for range 2 {
				res, err := p.Load().Picker.Pick(info)
				if err != nil {
					t.Fatal(err)
				}
				if strings.HasPrefix(res.Endpoint.ID, "dc2/") {
					t.Fatalf("picked %s before trying the local tier", res.Endpoint.ID)
				}
				seen[res.Endpoint.ID] = true
				info.Tried.Add(res.Endpoint)
				res.Done(errBoom)
			}
			res, err := p.Load().Picker.Pick(info)
			if err != nil || res.Endpoint.ID != "dc2/n/b1" {
				t.Fatalf("third try: want dc2/n/b1, have %v %v", res.Endpoint, err)
			}
			res.Done(nil)
			info.Tried.Add(res.Endpoint)
			if _, err := p.Load().Picker.Pick(info); err != ErrNoEndpoint {
				t.Fatalf("all tried: want ErrNoEndpoint, have %v", err)
			}
		})
	}
}

// TestTierPickDoesNotAllocate: the tiered picker, first tier or after a
// fall-through, does not allocate.
func TestTierPickDoesNotAllocate(t *testing.T) {
	for _, strategy := range Implemented() {
		p := runTierPool(t, strategy, nil, false, 0, "dc2")
		setMembers(t, p, 1, member("n/a1", 1, HealthPassing), backup(member("n/k1", 2, HealthPassing)))
		setRemote(t, p, "dc2", member("n/b1", 1, HealthPassing))
		snap := p.Load()
		var tried PickInfo
		for _, ep := range snap.Eligible {
			if !strings.HasPrefix(ep.ID, "dc2/") {
				tried.Tried.Add(ep)
			}
		}
		for _, info := range []PickInfo{{}, tried} {
			allocs := testing.AllocsPerRun(500, func() {
				res, err := snap.Picker.Pick(info)
				if err == nil {
					res.Done(nil)
				}
			})
			if allocs != 0 {
				t.Errorf("%s: want 0 allocs/pick, have %v", strategy, allocs)
			}
		}
	}
}

// TestTierSticky: affinity holds within the serving tier; a cookie of a
// failover instance is not honoured once the local tier serves again.
func TestTierSticky(t *testing.T) {
	sticky := &StickyOptions{Mode: StickyCookie, CookieName: "s", TTL: 3600e9, Secret: []byte("k")}
	p := runTierPool(t, "round_robin", sticky, false, 0, "dc2")
	setMembers(t, p, 1, member("n/a1", 1, HealthCritical))
	setRemote(t, p, "dc2", member("n/b1", 1, HealthPassing), member("n/b2", 1, HealthPassing))
	res, err := p.Load().Picker.Pick(PickInfo{})
	if err != nil || res.SetCookie == nil {
		t.Fatalf("want a pick with a cookie, have %v %v", res, err)
	}
	res.Done(nil)
	remoteID := res.Endpoint.ID
	cookie := strings.TrimPrefix(strings.SplitN(res.SetCookie[0], ";", 2)[0], "s=")
	for range 10 {
		r, err := p.Load().Picker.Pick(PickInfo{Key: cookie})
		if err != nil || r.Endpoint.ID != remoteID {
			t.Fatalf("sticky in dc2: want %s, have %v %v", remoteID, r.Endpoint, err)
		}
		r.Done(nil)
	}
	setMembers(t, p, 2, member("n/a1", 1, HealthPassing))
	r, err := p.Load().Picker.Pick(PickInfo{Key: cookie})
	if err != nil || r.Endpoint.ID != "n/a1" || r.SetCookie == nil {
		t.Fatalf("local back: want n/a1 with a new cookie, have %v %v", r.Endpoint, err)
	}
	r.Done(nil)
}

// TestRemoteMembers: remote members get prefixed IDs and their datacenter;
// a datacenter dropped by SetFailover leaves; an unlisted one is ignored;
// remote errors show with their datacenter and do not make the pool synced.
func TestRemoteMembers(t *testing.T) {
	p := runTierPool(t, "round_robin", nil, false, 0, "dc2")
	snap := setRemote(t, p, "dc2", member("n/b1", 1, HealthPassing))
	if snap.Synced {
		t.Fatal("a remote answer must not sync the pool")
	}
	if len(snap.Members) != 1 || snap.Members[0].ID != "dc2/n/b1" || snap.Members[0].Datacenter != "dc2" || snap.Members[0].Tier != 2 {
		t.Fatalf("want dc2/n/b1 of dc2 in tier 2, have %+v", snap.Members)
	}
	snap = setRemote(t, p, "dc9", member("n/x", 1, HealthPassing))
	if len(snap.Members) != 1 {
		t.Fatalf("an unlisted datacenter must be ignored, have %+v", snap.Members)
	}
	if err := p.SetRemoteError(context.Background(), "dc2", errBoom); err != nil {
		t.Fatal(err)
	}
	snap = setMembers(t, p, 3, member("n/a1", 1, HealthPassing))
	if snap.ConsulError != "datacenter dc2: boom" || len(snap.Members) != 2 {
		t.Fatalf("want dc2's error kept after a local answer with its members, have %q %d", snap.ConsulError, len(snap.Members))
	}
	if err := p.SetError(context.Background(), errBoom); err != nil {
		t.Fatal(err)
	}
	if snap = refresh(t, p); snap.ConsulError != "boom; datacenter dc2: boom" {
		t.Fatalf("want both errors, have %q", snap.ConsulError)
	}
	snap = setRemote(t, p, "dc2", member("n/b1", 1, HealthPassing))
	if snap.ConsulError != "boom" {
		t.Fatalf("want the local error only, have %q", snap.ConsulError)
	}
	if err := p.SetFailover(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if snap = refresh(t, p); len(snap.Members) != 1 || snap.Members[0].ID != "n/a1" {
		t.Fatalf("dropped datacenter: want n/a1 only, have %+v", snap.Members)
	}
}

// TestPassingOnly: warning members are listed but not eligible, with
// their reason; a policy change applies in place.
func TestPassingOnly(t *testing.T) {
	p := runTierPool(t, "round_robin", nil, true, 0)
	snap := setMembers(t, p, 1, member("a", 1, HealthPassing), member("b", 1, HealthWarning))
	if have := keys(pickedSet(t, p, 10)); have != "a" {
		t.Fatalf("want picks of a, have %s", have)
	}
	if r := snap.Members[1].Reason(); r != "consul warning (passing_only)" {
		t.Fatalf("want reason consul warning (passing_only), have %q", r)
	}
	build, _ := Lookup("round_robin")
	snap = setPolicy(t, p, Policy{Strategy: "round_robin", Builder: build})
	if !snap.Members[1].Eligible || keys(pickedSet(t, p, 10)) != "a,b" {
		t.Fatalf("passing_only off: want b eligible, have %+v", snap.Members[1])
	}
}

// TestPanicMode: below the threshold of members healthy by sluice's own
// verdicts among those the registry admits, probe failures and
// ejections are ignored; registry exclusions still hold.
func TestPanicMode(t *testing.T) {
	cases := []struct {
		name      string
		threshold int
		failing   []string // probe failing
		wantPanic bool
		want      string // picks
	}{
		{"off", 0, []string{"a", "b", "c"}, false, "d"},
		{"above", 50, []string{"a"}, false, "b,c,d"},
		{"at", 50, []string{"a", "b"}, false, "c,d"},
		{"below", 50, []string{"a", "b", "c"}, true, "a,b,c,d"},
		{"none healthy", 50, []string{"a", "b", "c", "d"}, true, "a,b,c,d"},
		{"100 percent", 100, []string{"a"}, true, "a,b,c,d"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := runTierPool(t, "round_robin", nil, false, tc.threshold)
			// e is critical in Consul and f in maintenance: never eligible,
			// not counted.
			setMembers(t, p, 1, member("a", 1, HealthPassing), member("b", 1, HealthPassing),
				member("c", 1, HealthWarning), member("d", 1, HealthPassing),
				member("e", 1, HealthCritical), member("f", 1, HealthMaintenance))
			for _, id := range tc.failing {
				if err := p.SetProbe(context.Background(), id, ProbeFailing); err != nil {
					t.Fatal(err)
				}
			}
			snap := refresh(t, p)
			if snap.Panic != tc.wantPanic {
				t.Fatalf("want panic %v, have %v", tc.wantPanic, snap.Panic)
			}
			if have := keys(pickedSet(t, p, 60)); have != tc.want {
				t.Fatalf("want picks of %s, have %s", tc.want, have)
			}
			for _, m := range snap.Members {
				wantReason := "eligible"
				switch {
				case m.ID == "e":
					wantReason = "consul critical"
				case m.ID == "f":
					wantReason = "consul maintenance"
				case tc.wantPanic && m.Probe == ProbeFailing:
					wantReason = "eligible (panic mode)"
				case m.Probe == ProbeFailing:
					wantReason = "probe failing"
				}
				if m.Reason() != wantReason {
					t.Errorf("%s: want reason %q, have %q", m.ID, wantReason, m.Reason())
				}
			}
			// Recovery ends panic mode.
			for _, id := range tc.failing {
				_ = p.SetProbe(context.Background(), id, ProbePassing)
			}
			if snap := refresh(t, p); snap.Panic {
				t.Fatal("want panic mode over once probes pass")
			}
		})
	}
}

// TestPanicAmongTiers: panic mode counts every tier; with a failover
// datacenter healthy the local members failing probes stay out and the
// traffic fails over; with the threshold crossed the local members serve.
func TestPanicAmongTiers(t *testing.T) {
	p := runTierPool(t, "round_robin", nil, false, 50, "dc2")
	setMembers(t, p, 1, member("a", 1, HealthPassing))
	setRemote(t, p, "dc2", member("n/b1", 1, HealthPassing), member("n/b2", 1, HealthPassing))
	_ = p.SetProbe(context.Background(), "a", ProbeFailing)
	snap := refresh(t, p)
	if snap.Panic || snap.Serving != "dc2" {
		t.Fatalf("want dc2 serving without panic, have serving %q panic %v", snap.Serving, snap.Panic)
	}
	_ = p.SetProbe(context.Background(), "dc2/n/b1", ProbeFailing)
	snap = refresh(t, p)
	if !snap.Panic || snap.Serving != "local" {
		t.Fatalf("want local serving in panic mode, have serving %q panic %v", snap.Serving, snap.Panic)
	}
}
