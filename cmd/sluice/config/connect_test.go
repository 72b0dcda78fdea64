package config

import (
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/proxy/certs/certstest"
)

// TestConnectAccepted: connect = true, the connect block and defaults.
func TestConnectAccepted(t *testing.T) {
	for _, tc := range []struct {
		name, top, svc string
		wantID         string
		wantConnect    bool
		wantUses       bool
	}{
		{"defaults", "", "", "sluice", false, false},
		{"connect", "", "connect = true", "sluice", true, true},
		{"identity", "connect {\n  service = \"edge.gw-1\"\n}", "connect = true", "edge.gw-1", true, true},
		{"connect false", "connect {\n  service = \"edge\"\n}", "connect = false", "edge", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.top + "\nservice \"web\" {\n" + tc.svc + "\n}\n" + okListener
			cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
			if diags.HasErrors() {
				t.Fatalf("Parse: %v", FormatDiagnostics(diags))
			}
			if have := cfg.ConnectIdentity(); have != tc.wantID {
				t.Errorf("identity: want %q, have %q", tc.wantID, have)
			}
			if have := cfg.Services["web"].Connect; have != tc.wantConnect {
				t.Errorf("connect: want %t, have %t", tc.wantConnect, have)
			}
			if have := cfg.UsesConnect(); have != tc.wantUses {
				t.Errorf("UsesConnect: want %t, have %t", tc.wantUses, have)
			}
		})
	}
	src := "service_defaults {\n  connect = true\n}\n" + okListener
	cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
	if diags.HasErrors() || !cfg.UsesConnect() {
		t.Fatalf("service_defaults connect: %v %v", FormatDiagnostics(diags), cfg != nil && cfg.UsesConnect())
	}
}

// TestConnectErrors: connect = true with a tls or failover block, and a
// bad identity, each at its position.
func TestConnectErrors(t *testing.T) {
	dir := t.TempDir()
	cert, key := certstest.NewCA(t, "test CA").WriteLeaf(t, dir, "example.com")
	for _, tc := range []struct {
		name   string
		src    string // from line 1
		wantAt string
		want   string
	}{
		{"tls", "service \"web\" {\n  connect = true\n  tls {\n    cert_file = \"" + cert + "\"\n    key_file = \"" + key + "\"\n  }\n}", "2,13",
			"Conflicting connect: connect = true cannot be used with a tls block (at test.hcl:3,3)"},
		{"failover", "service \"web\" {\n  connect = true\n  failover {\n    datacenters = [\"dc2\"]\n  }\n}", "2,13",
			"Conflicting connect: connect = true cannot be used with a failover block (at test.hcl:3,3)"},
		{"not a bool", "service \"web\" {\n  connect = \"yes\"\n}", "2,13", `connect must be true or false`},
		{"bad identity", "connect {\n  service = \"a/b\"\n}", "2,13", `service must be a service name`},
		{"empty identity", "connect {\n  service = \"\"\n}", "2,13", `service must be a service name`},
		{"unknown attribute", "connect {\n  token = \"x\"\n}", "2,3", `Unsupported argument`},
		{"duplicate", "connect {}\nconnect {}", "2,1", "Duplicate connect block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.src + "\n" + okListener
			cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
			if cfg != nil {
				t.Fatal("want no config")
			}
			lines := FormatDiagnostics(diags)
			for _, l := range lines {
				if strings.HasPrefix(l, "test.hcl:"+tc.wantAt+":") && strings.Contains(l, tc.want) {
					return
				}
			}
			t.Fatalf("want at %s %q, have %q", tc.wantAt, tc.want, lines)
		})
	}
}
