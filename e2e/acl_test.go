package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/sluice-lb/sluice/proxy/admin"
)

// startConsulACL runs a dev agent with ACLs on and default_policy "deny",
// bootstraps them, and returns it with Client holding the management token.
func startConsulACL(t testing.TB) *consulAgent {
	t.Helper()
	c := &consulAgent{t: t, ports: [4]int{freePort(t), freePort(t), freePort(t), freePort(t)}}
	c.Addr = fmt.Sprintf("127.0.0.1:%d", c.ports[0])
	c.hcl = []string{`acl { enabled = true default_policy = "deny" enable_token_persistence = true }`}
	anon, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	c.Client = anon
	c.afterLeader = func() {
		var boot *api.ACLToken
		// The ACL system may need a moment after the leader is elected.
		waitFor(t, 20*time.Second, "ACL bootstrap", func() bool {
			boot, _, err = anon.ACL().Bootstrap()
			return err == nil && boot.SecretID != ""
		})
		c.Client, err = api.NewClient(&api.Config{Address: c.Addr, Token: boot.SecretID})
		if err != nil {
			t.Fatal(err)
		}
	}
	c.start()
	return c
}

// uuid returns a random UUID-shaped token.
func uuid() string {
	var b [16]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// aclHealthz is the body of a 503 /healthz.
type aclHealthz struct {
	Status       string            `json:"status"`
	Services     []string          `json:"services"`
	ConsulErrors map[string]string `json:"consul_errors"`
}

// consulError is the consul_error of service, "" while the admin API is
// not up yet.
func (s *sluice) consulError(service string) string {
	resp, err := s.client.Get("http://" + s.Admin + "/v1/services")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var out admin.ServicesResponse
	if json.NewDecoder(resp.Body).Decode(&out) != nil {
		return ""
	}
	for _, svc := range out.Services {
		if svc.Name == service {
			return svc.ConsulError
		}
	}
	return ""
}

func (s *sluice) healthzBody() (int, aclHealthz) {
	s.t.Helper()
	var out aclHealthz
	resp, err := s.client.Get("http://" + s.Admin + "/healthz")
	if err != nil {
		s.t.Fatalf("admin: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		s.t.Fatalf("healthz: %v", err)
	}
	return resp.StatusCode, out
}

// TestConsulACL runs sluice against Consul with ACLs on and
// default_policy "deny": a token with service and node read fills the pool;
// a token without them gets answers Consul empties by filtering, which
// sluice reports as an ACL error (not ready, consul_error, logged once)
// until the policy is attached, then recovers by itself; an unknown token
// (403) is reported the same way.
func TestConsulACL(t *testing.T) {
	consul := startConsulACL(t)
	acl := consul.Client.ACL()
	policy, _, err := acl.PolicyCreate(&api.ACLPolicy{
		Name:  "sluice-read",
		Rules: `service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }`,
	}, nil)
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	link := []*api.ACLTokenPolicyLink{{ID: policy.ID}}
	good, _, err := acl.TokenCreate(&api.ACLToken{Description: "sluice", Policies: link}, nil)
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	bare, _, err := acl.TokenCreate(&api.ACLToken{Description: "sluice without policy"}, nil)
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	b := startBackend(t, "b1")
	consul.register("web", "web-1", b.addr(), nil)

	body := `
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
`
	// (b) and (c) start first: their failures take backoff periods to show.
	filtered := launchSluice(t, consul.Addr, bare.SecretID, body)
	unknown := launchSluice(t, consul.Addr, uuid(), body)

	// (a) The token with the policy: the pool fills and requests pass.
	ok := launchSluice(t, consul.Addr, good.SecretID, body)
	waitFor(t, 20*time.Second, "sluice with the read token ready", func() bool { return ok.healthz() == http.StatusOK })
	if code, name, _, err := ok.get("/"); err != nil || code != http.StatusOK || name != "b1" {
		t.Fatalf("read token: want 200 from b1, have %d %q %v", code, name, err)
	}

	// (c) An unknown token: Consul answers 403.
	waitFor(t, 10*time.Second, "403 shown in consul_error", func() bool {
		return strings.Contains(unknown.consulError("web"), "ACL not found")
	})
	if e := unknown.service("web").ConsulError; e != "consul ACL: the token was refused (403 ACL not found)" {
		t.Fatalf("unknown token: consul_error %q", e)
	}
	if code, h := unknown.healthzBody(); code != http.StatusServiceUnavailable || !strings.Contains(h.ConsulErrors["web"], "403") {
		t.Fatalf("unknown token: want /healthz 503 with the error, have %d %+v", code, h)
	}

	// (b) A token without the policy: Consul answers 200 with nothing.
	const want = `consul ACL: results filtered: the token lacks service:read on "web" or node:read on its nodes`
	waitFor(t, 10*time.Second, "ACL error shown in consul_error", func() bool {
		return filtered.consulError("web") == want
	})
	if code, h := filtered.healthzBody(); code != http.StatusServiceUnavailable || h.ConsulErrors["web"] != want {
		t.Fatalf("token without policy: want /healthz 503 with the error, have %d %+v", code, h)
	}
	if code, _, _, err := filtered.get("/"); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("token without policy: want 503, have %d %v", code, err)
	}
	// Several retries later (backoff 50ms doubling: 7 queries take about
	// 3s) the error is still logged once, and the backoff is seconds long.
	waitFor(t, 15*time.Second, "7 failed queries", func() bool {
		return filtered.scrape().value(t, "sluice_consul_errors_total", map[string]string{"service": "web"}) >= 7
	})
	if n := strings.Count(filtered.proc.out.String(), "consul ACL: results filtered"); n != 1 {
		t.Fatalf("want the ACL error logged once, have %d:\n%s", n, filtered.proc.out.String())
	}
	if n := strings.Count(unknown.proc.out.String(), "consul ACL: the token was refused"); n != 1 {
		t.Fatalf("want the 403 logged once, have %d:\n%s", n, unknown.proc.out.String())
	}

	// The policy is attached to the token: sluice recovers by itself.
	bare.Policies = link
	if _, _, err := acl.TokenUpdate(bare, nil); err != nil {
		t.Fatalf("attach policy: %v", err)
	}
	attached := time.Now()
	waitFor(t, 15*time.Second, "recovery after the policy is attached", func() bool { return filtered.healthz() == http.StatusOK })
	if code, name, _, err := filtered.get("/"); err != nil || code != http.StatusOK || name != "b1" {
		t.Fatalf("after recovery: want 200 from b1, have %d %q %v", code, name, err)
	}
	if e := filtered.service("web").ConsulError; e != "" {
		t.Fatalf("after recovery: consul_error %q", e)
	}
	t.Logf("recovered %v after the policy was attached", time.Since(attached).Round(time.Millisecond))
}
