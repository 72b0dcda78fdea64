package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/cmd/sluice/config"
)

// TestTokenFileEnvIgnoredWhenTokenOff: a consul block that turns the
// token off (token = "") makes a client that reads no
// $CONSUL_HTTP_TOKEN_FILE, so a missing file there is no error.
func TestTokenFileEnvIgnoredWhenTokenOff(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", filepath.Join(t.TempDir(), "missing"))
	if _, err := newConsulClient(config.Consul{Address: "127.0.0.1:8500"}); err != nil {
		t.Fatalf("newConsulClient with no token read the environment: %v", err)
	}
}

// TestTokenRotationKeepsRegistration: a rotated token (or another stale
// or datacenter setting) replaces the registration in place, with the
// same ID on the same agent: the service never leaves the catalog.
func TestTokenRotationKeepsRegistration(t *testing.T) {
	agent := newFakeAgent(t)
	fc := newFakeConsul()
	fc.add("web", "w1", backend(t, "w1"))
	front, adm := freeAddr(t), freeAddr(t)
	src := func(consulExtra string) string {
		s := configText(registerConfig, "AGENT", agent.addr(), "ADMIN", adm, "FRONT", front,
			"REGISTER", "register {\n  id = \"edge-1\"\n}")
		return strings.Replace(s, "consul {\n", "consul {\n"+consulExtra, 1)
	}
	ta := startApp(t, fc, src("  token = \"old\"\n"))
	waitUntil(t, "registered", func() bool { _, _, has := agent.state("edge-1"); return has })
	ta.write(src("  token = \"new\"\n"))
	if err := ta.apply(ta.load(), true); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "re-registered", func() bool { n, _, _ := agent.state("edge-1"); return n == 2 })
	if _, dereg, _ := agent.state("edge-1"); len(dereg) != 0 {
		t.Errorf("token rotation deregistered %q (service left the catalog)", dereg)
	}
}
