package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestDiscoverACL: a token that may read no service gets a catalog that
// Consul empties by ACL filtering: /v1/routes shows it as catalog_error
// from the first answer, and the routes come once the policy is attached.
func TestDiscoverACL(t *testing.T) {
	consul := startConsulACL(t)
	acl := consul.Client.ACL()
	policy, _, err := acl.PolicyCreate(&api.ACLPolicy{
		Name:  "sluice-read",
		Rules: `service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }`,
	}, nil)
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	bare, _, err := acl.TokenCreate(&api.ACLToken{Description: "sluice without policy"}, nil)
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	b := startBackend(t, "shop")
	consul.registerTagged("shop", "shop-1", b.addr(), "sluice-route=/shop")
	s := launchSluice(t, consul.Addr, bare.SecretID, `
listener "public" {
  address = "FRONT"
  discover {}
}
`)
	waitFor(t, 20*time.Second, "catalog_error naming the ACL", func() bool {
		resp, err := s.client.Get("http://" + s.Admin + "/v1/routes")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return strings.Contains(s.routes().CatalogError, "lacks service:read")
	})
	bare.Policies = []*api.ACLTokenPolicyLink{{ID: policy.ID}}
	if _, _, err := acl.TokenUpdate(bare, nil); err != nil {
		t.Fatalf("attach policy: %v", err)
	}
	s.until(t, 15*time.Second, "/shop served after the policy is attached", "/shop", func(code int, backend, _ string) bool {
		return code == http.StatusOK && backend == "shop"
	})
	if e := s.routes().CatalogError; e != "" {
		t.Fatalf("after recovery: catalog_error %q", e)
	}
}
