package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestLeaderLoss: with sluice watching through a Consul client agent of a
// three-server cluster, SIGKILL of the leader under load costs no client
// request, sluice keeps its pools while there is no leader, and once a new
// leader is elected a check going critical takes its instance out of
// rotation within 2 s of the write. Default consul block (stale = true:
// agent cache, streaming backend).
func TestLeaderLoss(t *testing.T) { leaderLoss(t, "") }

// TestLeaderLossConsistent is TestLeaderLoss with stale = false (blocking
// queries answered by the leader, no agent cache).
func TestLeaderLossConsistent(t *testing.T) { leaderLoss(t, "stale = false") }

func leaderLoss(t *testing.T, consulExtra string) {
	testStart := time.Now()
	cluster, s, a, b := startLeaderLossSetup(t, consulExtra)
	agent := cluster.Client

	l := startLoad(s, 8)
	defer l.finishOnce()
	waitFor(t, 10*time.Second, "steady load", func() bool { return l.ok.Load() > 300 })

	oldLeader, err := agent.Client.Status().Leader()
	if err != nil {
		t.Fatal(err)
	}
	victim := cluster.server(oldLeader)
	if victim == nil {
		t.Fatalf("leader %q is none of the servers", oldLeader)
	}
	okAtKill, hitsA, hitsB := l.ok.Load(), a.hits.Load(), b.hits.Load()
	_ = victim.proc.stop(syscall.SIGKILL)
	killed := time.Now()
	t.Logf("killed leader %s (%s)", victim.name, oldLeader)

	// Without a leader sluice keeps its pools: both instances eligible,
	// both getting traffic, until the client agent names a live leader.
	newLeader, checks := waitNewLeader(t, cluster, oldLeader, 60*time.Second, func() {
		if !webBothEligible(s) {
			t.Errorf("without a leader (%v after the kill) sluice changed its pool: %+v",
				time.Since(killed).Round(time.Millisecond), s.service("web").Instances)
		}
	})
	elected := time.Now()
	if !webBothEligible(s) {
		t.Errorf("when the new leader was seen sluice's pool had changed: %+v", s.service("web").Instances)
	}
	t.Logf("new leader %s seen %v after the kill (%d pool checks without a leader); requests meanwhile: %d ok, %d failed, a +%d, b +%d",
		newLeader, elected.Sub(killed).Round(time.Millisecond), checks, l.ok.Load()-okAtKill, l.failed.Load(),
		a.hits.Load()-hitsA, b.hits.Load()-hitsB)
	if a.hits.Load() == hitsA || b.hits.Load() == hitsB {
		t.Errorf("a backend got no traffic without a leader: a +%d, b +%d", a.hits.Load()-hitsA, b.hits.Load()-hitsB)
	}

	criticalReaction(t, agent, s, l, elected, 2*time.Second)

	t.Logf("requests during the test: %d ok, %d failed (a %d, b %d hits); whole test %v",
		l.ok.Load(), l.failed.Load(), a.hits.Load(), b.hits.Load(), time.Since(testStart).Round(time.Millisecond))
	if l.failed.Load() != 0 {
		t.Errorf("%d client requests failed, e.g. %v", l.failed.Load(), l.examples)
	}
	logWatchLines(t, s)
}

// ---------------------------------------------------------------------------
// Helpers of the leader-loss tests.

// startLeaderLossSetup starts a three-server cluster with a client agent,
// registers web-a and web-b (TTL checks, passing) through the client agent,
// starts sluice on it (consulExtra in its consul block) routing "/" to
// "web" round robin, and waits until both instances are eligible.
func startLeaderLossSetup(t *testing.T, consulExtra string) (*consulCluster, *sluice, *backend, *backend) {
	t.Helper()
	start := time.Now()
	cluster := startConsulCluster(t)
	t.Logf("cluster up in %v", time.Since(start).Round(time.Millisecond))
	a, b := startBackend(t, "a"), startBackend(t, "b")
	cluster.Client.register("web", "web-a", a.addr(), nil)
	cluster.Client.register("web", "web-b", b.addr(), nil)
	s := startSluiceConsul(t, cluster.Client.Addr, consulExtra, `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  strategy = "round_robin"
}
`)
	waitFor(t, 10*time.Second, "web-a and web-b eligible", func() bool { return webBothEligible(s) })
	return cluster, s, a, b
}

func webBothEligible(s *sluice) bool {
	ia, okA := s.instance("web", "web-a")
	ib, okB := s.instance("web", "web-b")
	return okA && okB && ia.Eligible && ib.Eligible
}

// waitNewLeader polls the client agent until it names a live server other
// than old as leader; meanwhile it calls check about every 100ms. It
// returns the leader and the number of checks made.
func waitNewLeader(t *testing.T, c *consulCluster, old string, timeout time.Duration, check func()) (string, int) {
	t.Helper()
	var leader string
	polls, checks := 0, 0
	lastCheck := time.Now()
	waitFor(t, timeout, "a new leader", func() bool {
		polls++
		l, err := c.Client.Client.Status().Leader()
		if err == nil && l != "" && l != old {
			if srv := c.server(l); srv != nil && srv.alive() {
				leader = l
				return true
			}
		}
		if time.Since(lastCheck) >= 100*time.Millisecond {
			checks++
			check()
			lastCheck = time.Now()
		}
		return false
	})
	return leader, checks
}

// criticalReaction sets web-b's check critical through the client agent
// (retrying until the write succeeds), asserts web-b leaves rotation in
// sluice within 2 s of the write and gets no more traffic, and logs the
// figures (from since, usually when the new leader was seen).
func criticalReaction(t *testing.T, agent *consulAgent, s *sluice, l *load, since time.Time, bound time.Duration) time.Duration {
	t.Helper()
	var written time.Time
	tries := 0
	waitFor(t, 20*time.Second, "UpdateTTL critical to succeed", func() bool {
		tries++
		if err := agent.Client.Agent().UpdateTTL("check-web-b", "e2e", api.HealthCritical); err != nil {
			t.Logf("UpdateTTL: %v", err)
			return false
		}
		written = time.Now()
		return true
	})
	var inCatalog, inSluice time.Duration
	var bRequests uint64 // web-b's request count when it left rotation
	waitFor(t, 20*time.Second, "web-b ineligible in sluice", func() bool {
		if inCatalog == 0 {
			// Where Consul is: a consistent read through the client agent.
			checks, _, err := agent.Client.Health().Checks("web", &api.QueryOptions{RequireConsistent: true})
			if err == nil {
				for _, c := range checks {
					if c.CheckID == "check-web-b" && c.Status == api.HealthCritical {
						inCatalog = time.Since(written)
					}
				}
			}
		}
		in, ok := s.instance("web", "web-b")
		if ok && in.Eligible {
			return false
		}
		inSluice = time.Since(written)
		bRequests = in.Requests
		return true
	})
	t.Logf("UpdateTTL critical succeeded after %d tries, %v after the new leader was seen; in the catalog %v later (0: not seen before sluice), ineligible in sluice %v later",
		tries, written.Sub(since).Round(time.Millisecond), inCatalog.Round(time.Millisecond), inSluice.Round(time.Millisecond))
	if inSluice > bound {
		t.Errorf("web-b left rotation %v after the write; want within %v", inSluice.Round(time.Millisecond), bound)
	}

	// It gets no more traffic: its request count stays put while the load
	// goes on.
	okNow := l.ok.Load()
	waitFor(t, 10*time.Second, "more load after web-b left", func() bool { return l.ok.Load() > okNow+500 })
	l.finishOnce()
	in, _ := s.instance("web", "web-b")
	if in.Requests != bRequests {
		t.Errorf("web-b picked %d more times after it became ineligible", in.Requests-bRequests)
	}
	return inSluice
}

// finishOnce stops the load unless it is stopped already.
func (l *load) finishOnce() {
	select {
	case <-l.stop:
	default:
		l.finish()
	}
}

// logWatchLines logs sluice's warnings and errors (watch failures).
func logWatchLines(t *testing.T, s *sluice) {
	t.Helper()
	for _, line := range strings.Split(s.proc.out.String(), "\n") {
		if strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]") {
			t.Logf("sluice: %s", line)
		}
	}
}

// TestLeaderLossQuorum: a longer outage. The leader and a follower are
// killed, so the cluster has no quorum and no leader for 12 s; sluice
// keeps its pools and loses no request. Then the follower comes back, a
// leader is elected, and a check going critical reaches sluice within 2 s
// of the write: with stale = true the watch rides on the agent's streaming
// view, which a follower keeps serving, so it never backs off.
func TestLeaderLossQuorum(t *testing.T) { quorumLoss(t, "", 2*time.Second) }

// TestLeaderLossQuorumConsistent is TestLeaderLossQuorum with stale = false.
// Every query fails while there is no leader (at once, or after Consul's
// rpc_hold_timeout of 7 s), so the watch backs off, up to its 10 s maximum,
// and a change made just after the new leader is elected reaches sluice
// only when the current backoff ends: the bound is 10 s + 2 s, not 2 s.
func TestLeaderLossQuorumConsistent(t *testing.T) {
	quorumLoss(t, "stale = false", 12*time.Second)
}

func quorumLoss(t *testing.T, consulExtra string, bound time.Duration) {
	const outage = 12 * time.Second // longer than the watch's 10s maximum backoff
	testStart := time.Now()
	cluster, s, a, b := startLeaderLossSetup(t, consulExtra)
	agent := cluster.Client
	l := startLoad(s, 8)
	defer l.finishOnce()
	waitFor(t, 10*time.Second, "steady load", func() bool { return l.ok.Load() > 300 })

	oldLeader, err := agent.Client.Status().Leader()
	if err != nil {
		t.Fatal(err)
	}
	leader := cluster.server(oldLeader)
	if leader == nil {
		t.Fatalf("leader %q is none of the servers", oldLeader)
	}
	var follower *consulServer
	for _, srv := range cluster.servers {
		if srv != leader {
			follower = srv
			break
		}
	}
	okAtKill := l.ok.Load()
	_ = leader.proc.stop(syscall.SIGKILL)
	_ = follower.proc.stop(syscall.SIGKILL)
	killed := time.Now()
	t.Logf("killed leader %s and follower %s", leader.name, follower.name)

	// The outage: no quorum for outage; sluice keeps both instances.
	checks := 0
	for time.Since(killed) < outage {
		checks++
		if !webBothEligible(s) {
			t.Fatalf("without quorum (%v after the kill) sluice changed its pool: %+v",
				time.Since(killed).Round(time.Millisecond), s.service("web").Instances)
		}
		time.Sleep(100 * time.Millisecond) // pacing of the checks, not synchronisation
	}
	follower.restart()
	restarted := time.Now()
	newLeader, _ := waitNewLeader(t, cluster, oldLeader, 60*time.Second, func() {
		if !webBothEligible(s) {
			t.Errorf("before the new leader sluice changed its pool: %+v", s.service("web").Instances)
		}
	})
	elected := time.Now()
	t.Logf("%s restarted %v after the kill; new leader %s seen %v after the restart (%d pool checks without quorum); requests meanwhile: %d ok, %d failed",
		follower.name, restarted.Sub(killed).Round(time.Millisecond), newLeader, elected.Sub(restarted).Round(time.Millisecond),
		checks, l.ok.Load()-okAtKill, l.failed.Load())

	criticalReaction(t, agent, s, l, elected, bound)

	t.Logf("requests during the test: %d ok, %d failed (a %d, b %d hits); whole test %v",
		l.ok.Load(), l.failed.Load(), a.hits.Load(), b.hits.Load(), time.Since(testStart).Round(time.Millisecond))
	if l.failed.Load() != 0 {
		t.Errorf("%d client requests failed, e.g. %v", l.failed.Load(), l.examples)
	}
	logWatchLines(t, s)
}
