package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy"
	"github.com/sluice-lb/sluice/proxy/connect"
	"github.com/sluice-lb/sluice/proxy/metrics"
)

// authorizeTimeout bounds the question to the local agent whether a TLS
// alert from a sidecar was an intention's denial.
const authorizeTimeout = 2 * time.Second

// intentionRecloses are the delays after an intention change at which
// the pooled connections of the destinations it touched are closed
// again: the sidecars learn of the change from their agent's cache, which
// may lag the watch, and a connection made in between would otherwise
// outlive the change.
var intentionRecloses = []time.Duration{0, 500 * time.Millisecond, 2 * time.Second}

// connectRuntime is sluice's identity in the Consul service mesh: the
// leaf, roots and intention watches, the long-lived TLS configuration
// of every destination, and the denial check. One per process (in env),
// across every configuration generation; run and stop are called by the
// app goroutine, everything else is safe from any goroutine.
type connectRuntime struct {
	logger    hclog.Logger
	metrics   *metrics.Metrics
	transport *proxy.Upstream
	material  connect.Material

	mu    sync.Mutex
	dests map[string]*connectDest    // namespace + "\x00" + Consul service name -> destination, kept once made
	pools map[string]map[string]bool // Consul service name -> pool names dialling it

	// Set by run (app goroutine), read by Denied and status.
	used     atomic.Bool
	identity atomic.Pointer[string]
	client   atomic.Pointer[api.Client]
	// intents are the intentions whose source matches identity, highest
	// precedence first, as the intentions watch last saw them; nil
	// before its first answer. Set by the watch, read by Denied.
	intents atomic.Pointer[[]*api.Intention]
	// authzRefused is set once the agent refused an authorize question
	// for lack of ACL permission (logged once).
	authzRefused atomic.Bool
	running      *task
	key          connectKey
	state        atomic.Pointer[connectStatus]
}

// connectKey is what the watches depend on.
type connectKey struct {
	identity string
	consul   config.Consul
}

// connectStatus is the connect section of /v1/status.
type connectStatus struct {
	Identity         string    `json:"identity"`
	LeafURI          string    `json:"leaf_uri"`
	LeafSerial       string    `json:"leaf_serial"`
	LeafNotAfter     time.Time `json:"leaf_not_after"`
	TrustDomain      string    `json:"trust_domain"`
	ActiveRootID     string    `json:"active_root_id"`
	Roots            int       `json:"roots"`
	IntentionsIndex  uint64    `json:"intentions_index"`
	IntentionChanges uint64    `json:"intention_changes"`
	// The last error of each watch, until its next answer (say a token
	// without service:write on the identity: no leaf, /healthz 503).
	LeafError       string `json:"leaf_error,omitempty"`
	RootsError      string `json:"roots_error,omitempty"`
	IntentionsError string `json:"intentions_error,omitempty"`
}

func newConnectRuntime(logger hclog.Logger, m *metrics.Metrics, transport *proxy.Upstream) *connectRuntime {
	return &connectRuntime{logger: logger, metrics: m, transport: transport,
		dests: map[string]*connectDest{}, pools: map[string]map[string]bool{}}
}

// connectDest is one destination service: its TLS configuration (one
// per destination, for the life of the process) and its denial check.
type connectDest struct {
	rt        *connectRuntime
	name      string
	namespace string // "" for connect.DefaultNamespace
	tls       *clientTLS

	mu   sync.Mutex
	call *authCall // the authorize question in flight, nil when none
}

// authCall is one authorize question to the agent; out and err are set
// before done is closed.
type authCall struct {
	done chan struct{}
	out  *api.AgentAuthorize
	err  error
}

// authorize returns the authorize question in flight for d, asking it
// when none is: at most one per destination at a time, whatever the
// number of alerts. consul/api's ConnectAuthorize takes no context, so
// the question runs on its own goroutine until the agent answers; the
// callers bound their wait.
func (d *connectDest) authorize(client *api.Client, leaf *connect.Leaf) *authCall {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.call != nil {
		return d.call
	}
	c := &authCall{done: make(chan struct{})}
	d.call = c
	go func() {
		c.out, c.err = client.Agent().ConnectAuthorize(&api.AgentAuthorizeParams{Target: d.name, ClientCertURI: leaf.URI,
			ClientCertSerial: leaf.Serial})
		d.mu.Lock()
		d.call = nil
		d.mu.Unlock()
		close(c.done)
	}()
	return c
}

var _ proxy.Intentions = (*connectDest)(nil)

// dest returns the destination of Consul service name, made once.
func (rt *connectRuntime) dest(name, namespace string) *connectDest {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	key := namespace + "\x00" + name
	if d := rt.dests[key]; d != nil {
		return d
	}
	d := &connectDest{rt: rt, name: name, namespace: namespace, tls: &clientTLS{cfg: rt.material.ClientConfig(name, namespace)}}
	d.tls.digest = sha256.Sum256([]byte("connect\x00" + key))
	rt.dests[key] = d
	return d
}

// attach records that pool dials destination name (so that an intention
// change towards name closes the pool's connections); detach undoes it.
func (rt *connectRuntime) attach(name, pool string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.pools[name] == nil {
		rt.pools[name] = map[string]bool{}
	}
	rt.pools[name][pool] = true
}

func (rt *connectRuntime) detach(name, pool string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	delete(rt.pools[name], pool)
	if len(rt.pools[name]) == 0 {
		delete(rt.pools, name)
	}
}

// waiting is why /healthz may not say ready as far as Connect goes: ""
// when no service uses it or the leaf and roots are loaded, else what is
// missing and the last error of its watch.
func (rt *connectRuntime) waiting() string {
	if !rt.used.Load() || rt.material.Ready() {
		return ""
	}
	st := rt.state.Load()
	var missing []string
	if rt.material.Leaf() == nil {
		m := "no leaf certificate yet"
		if st != nil && st.LeafError != "" {
			m += " (" + st.LeafError + ")"
		}
		missing = append(missing, m)
	}
	if rt.material.Roots() == nil {
		m := "no CA roots yet"
		if st != nil && st.RootsError != "" {
			m += " (" + st.RootsError + ")"
		}
		missing = append(missing, m)
	}
	return "connect: " + strings.Join(missing, "; ")
}

// status is the connect section of /v1/status; nil when no service uses
// Connect.
func (rt *connectRuntime) status() *connectStatus {
	if !rt.used.Load() {
		return nil
	}
	st := *rt.state.Load()
	return &st
}

// needsClient reports whether run with identity and consul would start
// new watches, for which prepare makes a Consul client.
func (rt *connectRuntime) needsClient(identity string, consul config.Consul) bool {
	return rt.running == nil || rt.key != (connectKey{identity, consul})
}

// run makes the watches follow cfg: started (with client, made by
// prepare when needsClient said so) when a service uses Connect and the
// identity or the consul block changed, stopped when none does. The
// material stays: a leaf of the old identity is presented until the new
// one's arrives.
func (rt *connectRuntime) run(cfg *config.Config, client *api.Client) {
	used := cfg.UsesConnect()
	key := connectKey{cfg.ConnectIdentity(), cfg.Consul}
	if !used {
		rt.stop()
		rt.used.Store(false)
		return
	}
	if rt.running != nil && rt.key == key {
		return
	}
	rt.stop()
	if client == nil {
		return // not reached: prepare makes it when needsClient
	}
	if rt.key.identity != key.identity {
		rt.intents.Store(nil) // another identity's intentions
	}
	rt.key = key
	rt.identity.Store(&key.identity)
	rt.client.Store(client)
	if rt.key.identity != rt.stateIdentity() {
		rt.state.Store(&connectStatus{Identity: key.identity})
	}
	rt.used.Store(true)
	rt.running = startTask(func(ctx context.Context) { rt.watchLoop(ctx, client, key.identity) })
}

func (rt *connectRuntime) stateIdentity() string {
	if st := rt.state.Load(); st != nil {
		return st.Identity
	}
	return ""
}

// stop ends the watches and waits for them.
func (rt *connectRuntime) stop() {
	rt.running.stop()
	rt.running = nil
}

// update changes the status under mu.
func (rt *connectRuntime) update(f func(*connectStatus)) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	st := connectStatus{}
	if p := rt.state.Load(); p != nil {
		st = *p
	}
	f(&st)
	rt.state.Store(&st)
}

// watchLoop runs the leaf, roots and intentions watches until ctx is done.
func (rt *connectRuntime) watchLoop(ctx context.Context, client *api.Client, identity string) {
	logger := rt.logger.With("identity", identity)
	agent := client.Agent()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		discovery.Follow(ctx, discovery.FollowOptions{What: "connect leaf watch", Logger: logger},
			func(q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error) {
				return agent.ConnectCALeaf(identity, q)
			},
			func(l *api.LeafCert, _ uint64) {
				leaf, err := connect.ParseLeaf(l.CertPEM, l.PrivateKeyPEM, l.SerialNumber)
				if err != nil {
					logger.Warn("unusable connect leaf, keeping the last", "error", err)
					return
				}
				rt.material.SetLeaf(leaf)
				rt.metrics.SetConnectLeaf(leaf.NotAfter)
				rt.update(func(st *connectStatus) {
					st.LeafURI, st.LeafSerial, st.LeafNotAfter = leaf.URI, leaf.Serial, leaf.NotAfter
					st.LeafError = ""
				})
				logger.Info("connect leaf loaded", "uri", leaf.URI, "serial", leaf.Serial, "not_after", leaf.NotAfter)
			}, func(err error) { rt.update(func(st *connectStatus) { st.LeafError = err.Error() }) })
	}()
	go func() {
		defer wg.Done()
		discovery.Follow(ctx, discovery.FollowOptions{What: "connect roots watch", Logger: logger},
			agent.ConnectCARoots,
			func(l *api.CARootList, _ uint64) {
				pems := make([]string, 0, len(l.Roots))
				for _, r := range l.Roots {
					if r != nil {
						pems = append(pems, r.RootCertPEM)
					}
				}
				roots, err := connect.ParseRoots(l.TrustDomain, l.ActiveRootID, pems)
				if err != nil {
					logger.Warn("unusable connect roots, keeping the last", "error", err)
					return
				}
				rt.material.SetRoots(roots)
				rt.metrics.SetConnectRoots(roots.Count)
				rt.update(func(st *connectStatus) {
					st.TrustDomain, st.ActiveRootID, st.Roots = roots.TrustDomain, roots.ActiveID, roots.Count
					st.RootsError = ""
				})
				logger.Info("connect roots loaded", "trust_domain", roots.TrustDomain, "roots", roots.Count, "active", roots.ActiveID)
			}, func(err error) { rt.update(func(st *connectStatus) { st.RootsError = err.Error() }) })
	}()
	go func() {
		defer wg.Done()
		rt.intentionsLoop(ctx, client, identity, logger)
	}()
	wg.Wait()
}

// intentionsLoop watches the intentions whose source matches identity
// and, when those of a destination change (or a wildcard one's), closes
// the pooled connections to it, now and after each intentionRecloses
// delay: a connection a sidecar accepted outlives a new deny.
func (rt *connectRuntime) intentionsLoop(ctx context.Context, client *api.Client, identity string, logger hclog.Logger) {
	conn := client.Connect()
	var prev map[string]string // destination -> digest of its intentions
	type reclose struct {
		t  *time.Timer
		at time.Time // when it fires
	}
	var timers []reclose
	defer func() {
		for _, r := range timers {
			r.t.Stop()
		}
	}()
	discovery.Follow(ctx, discovery.FollowOptions{What: "connect intentions watch", Logger: logger},
		func(q *api.QueryOptions) (map[string][]*api.Intention, *api.QueryMeta, error) {
			return conn.IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchSource, Names: []string{identity}}, q)
		},
		func(m map[string][]*api.Intention, index uint64) {
			sorted := slices.Clone(m[identity])
			sorted = slices.DeleteFunc(sorted, func(i *api.Intention) bool { return i == nil })
			slices.SortStableFunc(sorted, func(a, b *api.Intention) int { return b.Precedence - a.Precedence })
			rt.intents.Store(&sorted)
			next := intentionDigests(m[identity])
			changed := changedDestinations(prev, next)
			first := prev == nil
			prev = next
			rt.update(func(st *connectStatus) {
				st.IntentionsIndex, st.IntentionsError = index, ""
				if !first && len(changed) > 0 {
					st.IntentionChanges++
				}
			})
			if first || len(changed) == 0 {
				return
			}
			logger.Info("connect intentions changed; closing pooled connections", "destinations", strings.Join(changed, ","))
			// An earlier change's pending recloses still run: its
			// destinations need them as much as these do.
			now := time.Now()
			timers = slices.DeleteFunc(timers, func(r reclose) bool { return now.After(r.at) })
			for _, d := range intentionRecloses {
				if d == 0 {
					rt.closeDestinations(changed)
					continue
				}
				timers = append(timers, reclose{time.AfterFunc(d, func() { rt.closeDestinations(changed) }), now.Add(d)})
			}
		}, func(err error) { rt.update(func(st *connectStatus) { st.IntentionsError = err.Error() }) })
}

// intentionDigests groups intentions by destination ("*" for wildcard
// ones) and digests each group.
func intentionDigests(in []*api.Intention) map[string]string {
	groups := map[string][]string{}
	for _, i := range in {
		if i == nil {
			continue
		}
		perms := len(i.Permissions)
		groups[i.DestinationName] = append(groups[i.DestinationName],
			fmt.Sprintf("%s %s/%s %s %d %d %d", i.ID, i.SourceNS, i.SourceName, i.Action, i.Precedence, i.ModifyIndex, perms))
	}
	out := map[string]string{}
	for dest, g := range groups {
		slices.Sort(g)
		out[dest] = strings.Join(g, "\n")
	}
	return out
}

// changedDestinations lists the destinations whose digest differs
// between prev and next, sorted; "*" stands for every destination.
func changedDestinations(prev, next map[string]string) []string {
	var out []string
	for d, v := range next {
		if prev[d] != v {
			out = append(out, d)
		}
	}
	for d := range prev {
		if _, ok := next[d]; !ok {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}

// closeDestinations closes the pooled connections of every pool dialling
// one of dests ("*": all).
func (rt *connectRuntime) closeDestinations(dests []string) {
	rt.mu.Lock()
	var pools []string
	for name, ps := range rt.pools {
		if slices.Contains(dests, name) || slices.Contains(dests, "*") {
			for p := range ps {
				pools = append(pools, p)
			}
		}
	}
	rt.mu.Unlock()
	for _, p := range pools {
		rt.transport.Forget(rt.transport.Tracked(p))
	}
}

// Denied decides, when err carries a TLS alert, whether the intentions
// deny sluice's identity this destination: from the intentions watch
// when its highest-precedence intention for the destination is an L4
// deny (no agent call: a flood of denied requests costs nothing, and the
// token needs no service:write on the destination), else by asking the
// local agent's authorize endpoint (which needs service:write on the
// destination; without it, or when the agent cannot answer, the alert is
// the instance's failure). A denial is counted and returned.
func (d *connectDest) Denied(ctx context.Context, err error) *proxy.DenialError {
	rt := d.rt
	client, leaf, identity := rt.client.Load(), rt.material.Leaf(), rt.identity.Load()
	if client == nil || leaf == nil || identity == nil || !proxy.IsTLSAlert(err) {
		return nil
	}
	if ixn := matchIntention(rt.intents.Load(), d.name, d.namespace); ixn != nil && ixn.Action == api.IntentionActionDeny &&
		len(ixn.Permissions) == 0 {
		rt.metrics.ConnectDenied(d.name)
		return &proxy.DenialError{Source: *identity, Destination: d.name,
			Reason: "intention " + ixn.SourceName + " => " + ixn.DestinationName + " denies", Err: err}
	}
	// One question per destination at a time (see authorize), the wait
	// for it bounded.
	call := d.authorize(client, leaf)
	timer := time.NewTimer(authorizeTimeout)
	defer timer.Stop()
	var out *api.AgentAuthorize
	var aerr error
	select {
	case <-call.done:
		out, aerr = call.out, call.err
		if aerr == nil && out == nil {
			aerr = errors.New("empty answer")
		}
	case <-timer.C:
		aerr = errors.New("no answer within " + authorizeTimeout.String())
	case <-ctx.Done():
		aerr = ctx.Err()
	}
	if aerr != nil {
		if strings.Contains(aerr.Error(), "403") && !rt.authzRefused.Swap(true) {
			rt.logger.Warn("connect authorize refused (the token needs service:write on the destination to tell a denial "+
				"without an explicit deny intention from an instance failure); such alerts count as instance failures",
				"service", d.name, "error", aerr)
		}
		rt.logger.Debug("connect authorize failed; counting the alert as the instance's", "service", d.name, "error", aerr)
		return nil
	}
	if out.Authorized {
		return nil
	}
	rt.metrics.ConnectDenied(d.name)
	return &proxy.DenialError{Source: *identity, Destination: d.name, Reason: out.Reason, Err: err}
}

// matchIntention returns the highest-precedence intention of sorted
// (highest first) whose destination is service in namespace ("" for the
// default) or a wildcard; nil when none is.
func matchIntention(sorted *[]*api.Intention, service, namespace string) *api.Intention {
	if sorted == nil {
		return nil
	}
	if namespace == "" {
		namespace = connect.DefaultNamespace
	}
	for _, i := range *sorted {
		ns := i.DestinationNS
		if ns == "" {
			ns = connect.DefaultNamespace
		}
		if (i.DestinationName == service || i.DestinationName == intentionWildcard) &&
			(ns == namespace || ns == intentionWildcard) {
			return i
		}
	}
	return nil
}

// intentionWildcard is the name or namespace of an intention that
// matches any.
const intentionWildcard = "*"
