package config

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/balance"
)

func TestDiscoverAndServiceDefaults(t *testing.T) {
	src := `
listener "a" {
  address = "127.0.0.1:8080"
  discover {}
}
listener "b" {
  address = "127.0.0.1:8081"
  discover {
    tag_prefix = "urlprefix-"
  }
  route "/" {
    service = "web"
  }
}
service_defaults {
  strategy   = "least_connections"
  slow_start = "10s"
  sticky {}
}
service "api" {
  strategy = "round_robin"
}
`
	cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
	if diags.HasErrors() {
		t.Fatal(FormatDiagnostics(diags))
	}
	if d := cfg.Listeners[0].Discover; d == nil || d.TagPrefix != "sluice-route=" || len(cfg.Listeners[0].Routes) != 0 {
		t.Fatalf("listener a: %+v", cfg.Listeners[0])
	}
	if d := cfg.Listeners[1].Discover; d == nil || d.TagPrefix != "urlprefix-" {
		t.Fatalf("listener b: %+v", cfg.Listeners[1])
	}
	if d := cfg.ServiceDefaults; d == nil || d.Name != "" || d.Sticky.Cookie != "" || d.Strategy != "least_connections" {
		t.Fatalf("service_defaults: %+v", d)
	}
	// A service that a route names without a block has service_defaults.
	web := cfg.Services["web"]
	if web.Strategy != "least_connections" || web.SlowStart != 10*time.Second || web.Sticky.Cookie != "sluice_web" || web.Name != "web" {
		t.Fatalf("web: %+v %+v", web, web.Sticky)
	}
	for _, tc := range []struct {
		name, strategy, cookie string
	}{
		{"api", "round_robin", ""},
		{"web", "least_connections", "sluice_web"},
		{"shop", "least_connections", "sluice_shop"},
	} {
		s, err := cfg.ServiceFor(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if s.Name != tc.name || s.Strategy != tc.strategy {
			t.Errorf("%s: have %s %s", tc.name, s.Name, s.Strategy)
		}
		if tc.cookie != "" && (s.Sticky == nil || s.Sticky.Cookie != tc.cookie || s.Sticky.Mode != balance.StickyCookie) {
			t.Errorf("%s: sticky %+v", tc.name, s.Sticky)
		}
	}
	if cfg.ServiceDefaults.Sticky.Cookie != "" {
		t.Error("ServiceFor changed service_defaults")
	}
	if _, err := cfg.ServiceFor("a b"); err == nil || !strings.Contains(err.Error(), `"sluice_a b"`) {
		t.Errorf("a bad default cookie name: %v", err)
	}

	// Without service_defaults: the built-in defaults.
	cfg, diags = Parse("test.hcl", []byte(okListener), Options{Getenv: env(nil)})
	if diags.HasErrors() {
		t.Fatal(FormatDiagnostics(diags))
	}
	if s, err := cfg.ServiceFor("shop"); err != nil || s.Strategy != defaultStrategy || s.Sticky != nil || s.Name != "shop" {
		t.Fatalf("built-in defaults: %+v %v", s, err)
	}
}

func TestDiscoverValidation(t *testing.T) {
	for _, tc := range []struct {
		name, src, wantAt, want string
	}{
		{"tcp listener", `listener "t" {
  address  = "127.0.0.1:5432"
  protocol = "tcp"
  service  = "db"
  discover {}
}`, "5,3", `Unexpected discover block: discover blocks are only valid in http listeners; "t" is a tcp listener`},
		{"redirect listener", `listener "r" {
  address        = "127.0.0.1:8080"
  redirect_https = true
  discover {}
}`, "4,3", "Unexpected discover block"},
		{"empty prefix", `listener "a" {
  address = "127.0.0.1:8080"
  discover {
    tag_prefix = ""
  }
}`, "4,18", "Invalid tag_prefix"},
		{"max_routes zero", `listener "a" {
  address = "127.0.0.1:8080"
  discover {
    max_routes = 0
  }
}`, "4,18", "Invalid max_routes"},
		{"unknown attribute", `listener "a" {
  address = "127.0.0.1:8080"
  discover {
    prefix = "x"
  }
}`, "4,5", "Unsupported argument"},
		{"duplicate discover", `listener "a" {
  address = "127.0.0.1:8080"
  discover {}
  discover {}
}`, "4,3", "Duplicate discover block"},
		{"no route and no discover", `listener "a" {
  address = "127.0.0.1:8080"
}`, "1,1", "or a discover block"},
		{"duplicate service_defaults", "service_defaults {}\nservice_defaults {}\n" + okListener, "2,1", "Duplicate service_defaults block"},
		{"bad strategy in service_defaults", "service_defaults {\n  strategy = \"fastest\"\n}\n" + okListener, "2,14", "Invalid strategy"},
		{"service_defaults cookie for a bad name", "service_defaults {\n  sticky {}\n}\n" + strings.Replace(okListener, `"web"`, `"a b"`, 1),
			"1,1", `Invalid cookie: service "a b" has no service block: the default sticky cookie name "sluice_a b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(nil)})
			have := FormatDiagnostics(diags)
			if len(have) != 1 {
				t.Fatalf("want exactly 1 error, have %d:\n%s", len(have), strings.Join(have, "\n"))
			}
			if prefix := "test.hcl:" + tc.wantAt + ": "; !strings.HasPrefix(have[0], prefix) || !strings.Contains(have[0], tc.want) {
				t.Errorf("want %q containing %q, have\n%s", prefix, tc.want, have[0])
			}
			if cfg != nil {
				t.Error("want nil config with errors")
			}
		})
	}
}
