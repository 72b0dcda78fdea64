package config

import (
	"maps"
	"reflect"
	"strings"
	"testing"
)

// TestInstanceSelectionAccepted: the attributes that choose which
// instances count, failover and panic mode, with their defaults.
func TestInstanceSelectionAccepted(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string // the body of service "web"
		want func(*Service) bool
	}{
		{"defaults", ``, func(s *Service) bool {
			return s.Tags == nil && !s.PassingOnly && s.NodeMeta == nil && s.Filter == "" && s.Failover == nil &&
				s.BackupTag == "" && s.PanicThreshold == 0
		}},
		{"tags", `tags = ["blue", "v2"]`, func(s *Service) bool { return reflect.DeepEqual(s.Tags, []string{"blue", "v2"}) && s.Tag == "" }},
		{"empty tags", `tags = []`, func(s *Service) bool { return s.Tags == nil }},
		{"passing_only", `passing_only = true`, func(s *Service) bool { return s.PassingOnly }},
		{"node_meta", `node_meta = { rack = "r1", "zone-a_1" = "" }`, func(s *Service) bool {
			return maps.Equal(s.NodeMeta, map[string]string{"rack": "r1", "zone-a_1": ""})
		}},
		{"filter", `filter = "Service.Meta.version == \"2\""`, func(s *Service) bool { return s.Filter == `Service.Meta.version == "2"` }},
		{"failover", "failover {\n  datacenters = [\"dc2\", \"dc3\"]\n}", func(s *Service) bool {
			return reflect.DeepEqual(s.Failover, &Failover{Datacenters: []string{"dc2", "dc3"}})
		}},
		{"backup_tag", `backup_tag = "backup"`, func(s *Service) bool { return s.BackupTag == "backup" }},
		{"panic_threshold", `panic_threshold = 50`, func(s *Service) bool { return s.PanicThreshold == 50 }},
		{"panic_threshold 100", `panic_threshold = 100`, func(s *Service) bool { return s.PanicThreshold == 100 }},
		{"written defaults", "passing_only = false\nnode_meta = {}\nfilter = \"\"\nbackup_tag = \"\"\npanic_threshold = 0", func(s *Service) bool {
			return !s.PassingOnly && s.NodeMeta == nil && s.Filter == "" && s.BackupTag == "" && s.PanicThreshold == 0
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "consul {\n  datacenter = \"dc1\"\n}\nservice \"web\" {\n" + tc.src + "\n}\n" + okListener
			cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
			if diags.HasErrors() {
				t.Fatalf("Parse: %v", FormatDiagnostics(diags))
			}
			if !tc.want(cfg.Services["web"]) {
				t.Errorf("unexpected service %s", dump(cfg.Services["web"]))
			}
		})
	}
}

// TestInstanceSelectionErrors: each refusal, at its position.
func TestInstanceSelectionErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		src    string // the body of service "web", from line 5
		wantAt string
		want   string
	}{
		{"tag and tags", "  tag  = \"a\"\n  tags = [\"b\"]", "6,3",
			"Conflicting tags: tag is shorthand for tags = [TAG]; set one of them, not both (tag is at test.hcl:5,3)"},
		{"tags not a list", `  tags = "a"`, "5,10", `Invalid tags: tags must be a list of strings such as ["a", "b"]; got string "a"`},
		{"tags empty element", `  tags = ["a", ""]`, "5,16", `Invalid tags: tags element 2 must not be empty; got ""`},
		{"tags number", `  tags = [1]`, "5,11", "tags element 1 must be a string; got number 1"},
		{"passing_only string", `  passing_only = "yes"`, "5,18", `passing_only must be true or false; got string "yes"`},
		{"node_meta list", `  node_meta = ["a"]`, "5,15", `node_meta must be an object of strings such as { rack = "r1" }`},
		{"node_meta bad key", `  node_meta = { "a:b" = "c" }`, "5,15", `node_meta keys must be 1 to 128 letters, digits, '_' and '-'; got "a:b"`},
		{"node_meta number", `  node_meta = { a = 1 }`, "5,15", `node_meta key "a" must be a string; got number 1`},
		{"node_meta long value", `  node_meta = { a = "` + strings.Repeat("x", 513) + `" }`, "5,15", `key "a" must have a value of at most 512 bytes`},
		{"filter number", `  filter = 1`, "5,12", `Invalid filter: filter must be a string; got number 1`},
		{"panic_threshold negative", `  panic_threshold = -1`, "5,21", "panic_threshold must be a whole number from 0 to 100; got -1"},
		{"panic_threshold 101", `  panic_threshold = 101`, "5,21", "panic_threshold must be a whole number from 0 to 100; got 101"},
		{"failover without datacenters", "  failover {}", "5,3", `Missing datacenters: failover needs datacenters`},
		{"failover empty", "  failover {\n    datacenters = []\n  }", "6,19", "datacenters must list at least one datacenter"},
		{"failover bad name", "  failover {\n    datacenters = [\"dc 2\"]\n  }", "6,20", `datacenters element 1 must be a datacenter name of letters, digits, '_' and '-'; got "dc 2"`},
		{"failover repeat", "  failover {\n    datacenters = [\"dc2\", \"dc2\"]\n  }", "6,27", `datacenters element 2 repeats "dc2"`},
		{"failover local", "  failover {\n    datacenters = [\"dc1\"]\n  }", "6,20", `datacenters element 1 is "dc1", the consul block's own datacenter`},
		{"duplicate failover", "  failover {\n    datacenters = [\"dc2\"]\n  }\n  failover {}", "8,3", "Duplicate failover block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "consul {\n  datacenter = \"dc1\"\n}\nservice \"web\" {\n" + tc.src + "\n}\n" + okListener
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
