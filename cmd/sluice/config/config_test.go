package config

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy/h1"
)

const fullExample = `consul {
  address    = "127.0.0.1:8500"
  token      = ""
  datacenter = ""
  stale      = true
}
admin {
  address = "127.0.0.1:9901"
}
listener "public" {
  address                = "127.0.0.1:8080"
  protocol               = "http"
  idle_timeout           = "2m"
  request_header_timeout = "10s"
  request_body_timeout   = "60s"
  response_write_timeout = "60s"
  trusted_proxies        = ["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"]
  max_connections        = 0
  max_concurrent_streams = 100
  max_header_bytes       = "64KiB"
  route "/" {
    service        = "web"
    max_body_bytes = 0
  }
  route "api.example.com/v1" {
    service = "api"
  }
}
listener "db" {
  address      = "127.0.0.1:5433"
  protocol     = "tcp"
  service      = "postgres"
  idle_timeout = "2m"
  max_connections = 0
}
service "web" {
  tag                     = ""
  strategy                = "weighted_round_robin"
  weight_key              = "weight"
  slow_start              = "0s"
  response_header_timeout = "60s"
  response_body_timeout   = "60s"
  sticky {
    mode   = "cookie"
    cookie = "sluice_web"
    header = ""
    ttl    = "1h"
    secret = ""
  }
  health_check {
    type     = "http"
    path     = "/health"
    interval = "2s"
    timeout  = "1s"
    rise     = 2
    fall     = 3
  }
  passive {
    consecutive_failures = 5
    ejection_time        = "30s"
    max_ejection_time    = "300s"
    max_ejection_percent = 50
  }
  retry {
    attempts        = 2
    per_try_timeout = "0s"
  }
}
`

// okListener is a valid listener appended to cases that test other blocks.
const okListener = `
listener "ok" {
  address = "127.0.0.1:8080"
  route "/" {
    service = "web"
  }
}
`

// env returns a Getenv that serves vars and "" for anything else.
func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestParseFullExample(t *testing.T) {
	// The environment must not override what the file says.
	opts := Options{Getenv: env(map[string]string{
		"CONSUL_HTTP_ADDR":  "127.0.0.2:8500",
		"CONSUL_HTTP_TOKEN": "from-env",
	})}
	have, diags := Parse("test.hcl", []byte(fullExample), opts)
	if diags.HasErrors() {
		t.Fatalf("Parse: %v", FormatDiagnostics(diags))
	}
	want := &Config{
		Consul: Consul{Address: "127.0.0.1:8500", Token: "", Datacenter: "", Stale: true},
		Admin:  Admin{Address: "127.0.0.1:9901"},
		Listeners: []Listener{
			{
				Name:     "public",
				Address:  "127.0.0.1:8080",
				Protocol: "http", IdleTimeout: 2 * time.Minute,
				RequestHeaderTimeout: 10 * time.Second, RequestBodyTimeout: time.Minute, ResponseWriteTimeout: time.Minute,
				TrustedProxies: []netip.Prefix{
					netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32"),
					netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fd00::/8"),
				},
				Routes: []Route{
					{Host: "", PathPrefix: "/", Service: "web"},
					{Host: "api.example.com", PathPrefix: "/v1", Service: "api"},
				},
				MaxConcurrentStreams: 100, MaxHeaderBytes: 64 << 10,
			},
			{Name: "db", Address: "127.0.0.1:5433", Protocol: "tcp", IdleTimeout: 2 * time.Minute, Service: "postgres"},
		},
		Services: map[string]*Service{
			"web": {
				Name:      "web",
				Strategy:  "weighted_round_robin",
				WeightKey: "weight",
				Sticky:    &Sticky{Mode: "cookie", Cookie: "sluice_web", TTL: time.Hour},
				HealthCheck: &HealthCheck{
					Type: "http", Path: "/health", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
				},
				Passive: &Passive{ConsecutiveFailures: 5, EjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 50},
				Retry:   Retry{Attempts: 2},

				ResponseHeaderTimeout: time.Minute, ResponseBodyTimeout: time.Minute,
			},
			"api":      defaultsFor("api"),
			"postgres": defaultsFor("postgres"),
		},
	}
	assertConfig(t, want, have)
	if want, have := []string{"api", "postgres", "web"}, have.ServiceNames(); !slices.Equal(want, have) {
		t.Errorf("ServiceNames: want %v, have %v", want, have)
	}
}

func TestParseMinimalGetsDefaults(t *testing.T) {
	src := `listener "public" {
  address = "127.0.0.1:8080"
  route "/" {
    service = "web"
  }
}
`
	for _, tc := range []struct {
		name string
		env  map[string]string
		want Consul
	}{
		{
			name: "no environment",
			want: Consul{Address: "127.0.0.1:8500", Stale: true},
		},
		{
			name: "environment",
			env:  map[string]string{"CONSUL_HTTP_ADDR": "https://127.0.0.2:8501", "CONSUL_HTTP_TOKEN": "t0ken"},
			want: Consul{Address: "https://127.0.0.2:8501", Token: "t0ken", Stale: true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			have, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(tc.env)})
			if len(diags) != 0 {
				t.Fatalf("Parse: %v", FormatDiagnostics(diags))
			}
			want := &Config{
				Consul: tc.want,
				Admin:  Admin{Address: "127.0.0.1:9901"},
				Listeners: []Listener{{
					Name:     "public",
					Address:  "127.0.0.1:8080",
					Protocol: "http", IdleTimeout: 2 * time.Minute,
					RequestHeaderTimeout: 10 * time.Second, RequestBodyTimeout: time.Minute, ResponseWriteTimeout: time.Minute,
					Routes:               []Route{{PathPrefix: "/", Service: "web"}},
					MaxConcurrentStreams: 100, MaxHeaderBytes: h1.DefaultMaxHeaderBytes,
				}},
				Services: map[string]*Service{"web": defaultsFor("web")},
			}
			assertConfig(t, want, have)
		})
	}
}

func TestParseBlockDefaults(t *testing.T) {
	src := `service "web" {
  sticky {}
  health_check {}
  passive {}
  retry {}
}
service "db" {
  sticky {
    mode   = "header"
    header = "X-Session"
  }
  health_check {
    type = "tcp"
  }
}
` + okListener
	cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
	if diags.HasErrors() {
		t.Fatalf("Parse: %v", FormatDiagnostics(diags))
	}
	want := map[string]*Service{
		"web": {
			Name:        "web",
			Strategy:    "weighted_round_robin",
			WeightKey:   "weight",
			Sticky:      &Sticky{Mode: "cookie", Cookie: "sluice_web", TTL: time.Hour},
			HealthCheck: &HealthCheck{Type: "http", Path: "/health", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
			Passive:     &Passive{ConsecutiveFailures: 5, EjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 50},
			Retry:       Retry{Attempts: 2},

			ResponseHeaderTimeout: time.Minute, ResponseBodyTimeout: time.Minute,
		},
		"db": {
			Name:        "db",
			Strategy:    "weighted_round_robin",
			WeightKey:   "weight",
			Sticky:      &Sticky{Mode: "header", Cookie: "sluice_db", Header: "X-Session", TTL: time.Hour},
			HealthCheck: &HealthCheck{Type: "tcp", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
			Retry:       Retry{Attempts: 2},

			ResponseHeaderTimeout: time.Minute, ResponseBodyTimeout: time.Minute,
		},
	}
	if have := cfg.Services; !reflect.DeepEqual(want, have) {
		t.Errorf("Services:\nwant %s\nhave %s", dump(want), dump(have))
	}
}

func TestParseAcceptedValues(t *testing.T) {
	for _, tc := range []struct {
		name  string
		src   string
		check func(*Config) bool
	}{
		{
			name:  "consul https address",
			src:   "consul {\n  address = \"https://consul.internal:8501\"\n}\n" + okListener,
			check: func(c *Config) bool { return c.Consul.Address == "https://consul.internal:8501" },
		},
		{
			name:  "ipv6 listener",
			src:   strings.Replace(okListener, "127.0.0.1:8080", "[::1]:8080", 1),
			check: func(c *Config) bool { return c.Listeners[0].Address == "[::1]:8080" },
		},
		{
			name: "route host is lowercased",
			src:  strings.Replace(okListener, `route "/"`, `route "API.Example.com/v1"`, 1),
			check: func(c *Config) bool {
				r := c.Listeners[0].Routes[0]
				return r.Host == "api.example.com" && r.PathPrefix == "/v1"
			},
		},
		{
			name:  "stale false",
			src:   "consul {\n  stale = false\n}\n" + okListener,
			check: func(c *Config) bool { return !c.Consul.Stale },
		},
		{
			name:  "template without interpolation variables",
			src:   "service \"web\" {\n  tag = \"${\"blue\"}-green\"\n}\n" + okListener,
			check: func(c *Config) bool { return c.Services["web"].Tag == "blue-green" },
		},
		{
			name:  "unreferenced service block",
			src:   "service \"spare\" {}\n" + okListener,
			check: func(c *Config) bool { return slices.Equal(c.ServiceNames(), []string{"spare", "web"}) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(nil)})
			if diags.HasErrors() {
				t.Fatalf("Parse: %v", FormatDiagnostics(diags))
			}
			if !tc.check(cfg) {
				t.Errorf("unexpected config %s", dump(cfg))
			}
		})
	}
}

func TestFormatThreeMistakes(t *testing.T) {
	src := `service "web" {
  strategy   = "fastest"
  color      = "blue"
  slow_start = "soon"
}
` + okListener
	cfg, diags := Parse("conf/sluice.hcl", []byte(src), Options{Getenv: env(nil)})
	if cfg != nil {
		t.Errorf("want nil config with errors, have %s", dump(cfg))
	}
	want := []string{
		`conf/sluice.hcl:2,16: Invalid strategy: strategy must be one of "ewma", "ip_hash", "least_connections", "p2c", "random", "round_robin", "weighted_round_robin"; got "fastest"`,
		`conf/sluice.hcl:3,3: Unsupported argument: An argument named "color" is not expected here.`,
		`conf/sluice.hcl:4,16: Invalid slow_start: slow_start must be a duration string such as "2s"; got "soon"`,
	}
	if have := FormatDiagnostics(diags); !slices.Equal(want, have) {
		t.Errorf("want\n%s\nhave\n%s", strings.Join(want, "\n"), strings.Join(have, "\n"))
	}
}

func TestValidationErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		src    string
		env    map[string]string
		wantAt string // "LINE,COL", or "" for a diagnostic without a position
		want   string // substring of the formatted line
	}{
		// Block multiplicity.
		{"duplicate consul", "consul {}\nconsul {}\n" + okListener, nil,
			"2,1", "Duplicate consul block: only one consul block is allowed here; the first is at test.hcl:1,1"},
		{"duplicate admin", "admin {\n  address = \"127.0.0.1:9901\"\n}\nadmin {}\n" + okListener, nil,
			"4,1", "Duplicate admin block"},
		{"duplicate sticky", "service \"web\" {\n  sticky {}\n  sticky {}\n}\n" + okListener, nil,
			"3,3", "Duplicate sticky block"},
		{"duplicate health_check", "service \"web\" {\n  health_check {}\n  health_check {}\n}\n" + okListener, nil,
			"3,3", "Duplicate health_check block"},
		{"duplicate passive", "service \"web\" {\n  passive {}\n  passive {}\n}\n" + okListener, nil,
			"3,3", "Duplicate passive block"},
		{"duplicate retry", "service \"web\" {\n  retry {}\n  retry {}\n}\n" + okListener, nil,
			"3,3", "Duplicate retry block"},
		{"duplicate listener name", strings.Replace(okListener, "8080", "8081", 1)[1:] + okListener, nil,
			"8,1", `Duplicate listener: listener "ok" is already defined at test.hcl:1,1`},
		{"duplicate listener address", strings.Replace(okListener, `"ok"`, `"other"`, 1)[1:] + okListener, nil,
			"9,13", `Duplicate address: address "127.0.0.1:8080" is already used by the listener at test.hcl:1,1`},
		{"duplicate service", "service \"web\" {}\nservice \"web\" {}\n" + okListener, nil,
			"2,1", `Duplicate service: service "web" is already defined at test.hcl:1,1`},
		{"no listener", "service \"web\" {}\n", nil,
			"1,1", "Missing listener"},
		{"empty file", "", nil,
			"1,1", "Missing listener"},

		// Labels.
		{"listener without name", "listener {\n}\n" + okListener, nil,
			"1,10", "Missing name for listener"},
		{"empty service name", "service \"\" {}\n" + okListener, nil,
			"1,9", "service name must not be empty"},
		{"empty route label", routeListener(`""`), nil,
			"3,9", `Invalid route: route label must be "[host]/path-prefix", such as "/" or "api.example.com/v1"; got ""`},
		{"route label without slash", routeListener(`"api.example.com"`), nil,
			"3,9", `route label must be "[host]/path-prefix"`},
		{"route wildcard host", routeListener(`"*.example.com/"`), nil,
			"3,9", "without wildcards"},
		{"duplicate route", `listener "ok" {
  address = "127.0.0.1:8080"
  route "Example.com/" {
    service = "web"
  }
  route "example.com/" {
    service = "web"
  }
}
`, nil, "6,3", `Duplicate route: route "example.com/" is already defined at test.hcl:3,3`},

		// Listeners.
		{"missing listener address", "listener \"ok\" {\n  route \"/\" {\n    service = \"web\"\n  }\n}\n", nil,
			"1,1", `Missing address: listener "ok" needs an address`},
		{"address without port", listenerAddress("127.0.0.1"), nil,
			"2,13", `Invalid address: address must be "host:port", such as "127.0.0.1:8080"; got "127.0.0.1"`},
		{"address without host", listenerAddress(":8080"), nil,
			"2,13", `address must have an IP address or host name before the port`},
		{"address port 0", listenerAddress("127.0.0.1:0"), nil,
			"2,13", `address must have a port number from 1 to 65535; got "127.0.0.1:0"`},
		{"address port too big", listenerAddress("127.0.0.1:65536"), nil,
			"2,13", "port number from 1 to 65535"},
		{"address named port", listenerAddress("localhost:http"), nil,
			"2,13", "port number from 1 to 65535"},
		{"unknown protocol", "listener \"ok\" {\n  address  = \"127.0.0.1:8080\"\n  protocol = \"udp\"\n}\n", nil,
			"3,14", `Invalid protocol: protocol must be one of "http", "tcp"; got "udp"`},
		{"http listener without routes", "listener \"ok\" {\n  address = \"127.0.0.1:8080\"\n}\n", nil,
			"1,1", `Missing route: http listener "ok" needs at least one route block`},
		{"http listener with service", `listener "ok" {
  address = "127.0.0.1:8080"
  service = "web"
  route "/" {
    service = "web"
  }
}
`, nil, "3,3", "Unexpected service: service is only valid in tcp listeners"},
		{"tcp listener with route", `listener "db" {
  address  = "127.0.0.1:5433"
  protocol = "tcp"
  service  = "postgres"
  route "/" {
    service = "web"
  }
}
`, nil, "5,3", "Unexpected route block: route blocks are only valid in http listeners"},
		{"tcp listener without service", "listener \"db\" {\n  address  = \"127.0.0.1:5433\"\n  protocol = \"tcp\"\n}\n", nil,
			"1,1", `Missing service: tcp listener "db" needs a service attribute`},
		{"route without service", "listener \"ok\" {\n  address = \"127.0.0.1:8080\"\n  route \"/\" {}\n}\n", nil,
			"3,3", `Missing service: route "/" needs a service attribute`},
		{"route with empty service", routeService(`""`), nil,
			"4,15", `Invalid service: service must not be empty; got ""`},

		// Consul and admin.
		{"admin address without port", "admin {\n  address = \"9901\"\n}\n" + okListener, nil,
			"2,13", `Invalid address: address must be "host:port"`},
		{"consul address bad scheme", "consul {\n  address = \"ftp://127.0.0.1:8500\"\n}\n" + okListener, nil,
			"2,13", `address must be "host:port", "http://host:port" or "https://host:port"`},
		{"consul address from environment", okListener, map[string]string{"CONSUL_HTTP_ADDR": "consul"}, "",
			`Invalid CONSUL_HTTP_ADDR: environment variable CONSUL_HTTP_ADDR must be "host:port"`},
		{"consul stale not bool", "consul {\n  stale = \"yes\"\n}\n" + okListener, nil,
			"2,11", `Invalid stale: stale must be true or false; got string "yes"`},

		// Expressions and types.
		{"variable", "admin {\n  address = local.admin\n}\n" + okListener, nil,
			"2,13", "Variables not allowed"},
		{"function call", "service \"web\" {\n  tag = upper(\"x\")\n}\n" + okListener, nil,
			"2,9", "Function calls not allowed"},
		{"number for string", "service \"web\" {\n  tag = 1\n}\n" + okListener, nil,
			"2,9", "Invalid tag: tag must be a string; got number 1"},
		{"null", "service \"web\" {\n  tag = null\n}\n" + okListener, nil,
			"2,9", "tag must not be null"},
		{"string for number", serviceBlock("health_check", "rise = \"3\""), nil,
			"3,12", `Invalid rise: rise must be a number; got string "3"`},
		{"unknown attribute", "service \"web\" {\n  weight = 3\n}\n" + okListener, nil,
			"2,3", `Unsupported argument: An argument named "weight" is not expected here.`},
		{"unknown block", "service \"web\" {\n  limits {}\n}\n" + okListener, nil,
			"2,3", "Unsupported block type"},
		{"unknown top-level block", "backend \"x\" {}\n" + okListener, nil,
			"1,1", "Unsupported block type"},

		// Durations.
		{"negative duration", "service \"web\" {\n  slow_start = \"-1s\"\n}\n" + okListener, nil,
			"2,16", `Invalid slow_start: slow_start must not be negative; got "-1s"`},
		{"number for duration", serviceBlock("sticky", "ttl = 3600"), nil,
			"3,11", `Invalid ttl: ttl must be a duration string such as "2s"; got number 3600`},
		{"bad duration string", serviceBlock("health_check", `interval = "2 seconds"`), nil,
			"3,16", `interval must be a duration string such as "2s"; got "2 seconds"`},
		{"zero ttl", serviceBlock("sticky", `ttl = "0s"`), nil,
			"3,11", `ttl must be greater than 0; got "0s"`},
		{"short interval", serviceBlock("health_check", "interval = \"50ms\"\n    timeout  = \"10ms\""), nil,
			"3,16", `interval must be at least 100ms; got "50ms"`},
		{"zero timeout", serviceBlock("health_check", `timeout = "0s"`), nil,
			"3,15", `timeout must be greater than 0; got "0s"`},
		{"timeout above interval", serviceBlock("health_check", `timeout = "3s"`), nil,
			"3,15", `Invalid timeout: timeout must not exceed interval (2s); got "3s"`},
		{"interval below default timeout", serviceBlock("health_check", `interval = "500ms"`), nil,
			"3,16", `Invalid interval: interval must not be shorter than timeout (1s); got "500ms"`},
		{"zero ejection time", serviceBlock("passive", `ejection_time = "0s"`), nil,
			"3,21", `ejection_time must be greater than 0`},
		{"negative per-try timeout", serviceBlock("retry", `per_try_timeout = "-5s"`), nil,
			"3,23", `per_try_timeout must not be negative`},

		// Client-side HTTP limits.
		{"zero request header timeout", listenerAttr(`request_header_timeout = "0s"`), nil,
			"3,28", `Invalid request_header_timeout: request_header_timeout must be greater than 0; got "0s"`},
		{"zero request body timeout", listenerAttr(`request_body_timeout = "0s"`), nil,
			"3,26", `request_body_timeout must be greater than 0; got "0s"`},
		{"negative response write timeout", listenerAttr(`response_write_timeout = "-1s"`), nil,
			"3,28", `response_write_timeout must not be negative; got "-1s"`},
		{"request header timeout on tcp", tcpListenerAttr(`request_header_timeout = "5s"`), nil,
			"5,3", `Unexpected request_header_timeout: request_header_timeout is only valid in http listeners; "db" is a tcp listener`},
		{"request body timeout on tcp", tcpListenerAttr(`request_body_timeout = "5s"`), nil,
			"5,3", `request_body_timeout is only valid in http listeners`},
		{"response write timeout on tcp", tcpListenerAttr(`response_write_timeout = "5s"`), nil,
			"5,3", `response_write_timeout is only valid in http listeners`},
		{"trusted proxies on tcp", tcpListenerAttr(`trusted_proxies = ["10.0.0.0/8"]`), nil,
			"5,3", `trusted_proxies is only valid in http listeners`},
		{"trusted proxies not a list", listenerAttr(`trusted_proxies = "10.0.0.0/8"`), nil,
			"3,21", `Invalid trusted_proxies: trusted_proxies must be a list of CIDR strings such as ["10.0.0.0/8", "127.0.0.1"]; got string "10.0.0.0/8"`},
		{"trusted proxies null", listenerAttr(`trusted_proxies = null`), nil,
			"3,21", `trusted_proxies must be a list of CIDR strings such as ["10.0.0.0/8", "127.0.0.1"]; got null`},
		{"trusted proxy not a string", listenerAttr(`trusted_proxies = ["10.0.0.0/8", 10]`), nil,
			"3,36", `Invalid trusted_proxies: trusted_proxies element 2 must be a string; got number 10`},
		{"trusted proxy not an address", listenerAttr(`trusted_proxies = ["10.0.0.0/8", "proxy.internal"]`), nil,
			"3,36", `trusted_proxies element 2 must be an IP address or a CIDR prefix such as "10.0.0.0/8"; got "proxy.internal"`},
		{"trusted proxy prefix too long", listenerAttr(`trusted_proxies = ["10.0.0.0/33"]`), nil,
			"3,22", `trusted_proxies element 1 must be an IP address or a CIDR prefix such as "10.0.0.0/8"; got "10.0.0.0/33"`},
		{"trusted proxy host bits", listenerAttr(`trusted_proxies = ["10.0.0.1/8"]`), nil,
			"3,22", `trusted_proxies element 1 must have no bits set after the prefix length (10.0.0.0/8); got "10.0.0.1/8"`},
		{"trusted proxy zone", listenerAttr(`trusted_proxies = ["fe80::1%eth0"]`), nil,
			"3,22", `trusted_proxies element 1 must not have a zone; got "fe80::1%eth0"`},
		{"trusted proxy mapped", listenerAttr(`trusted_proxies = ["::ffff:10.0.0.1"]`), nil,
			"3,22", `trusted_proxies element 1 must be written as IPv4, not as an IPv4-mapped IPv6 address; got "::ffff:10.0.0.1"`},

		// Service timeouts.
		{"zero response header timeout", "service \"web\" {\n  response_header_timeout = \"0s\"\n}\n" + okListener, nil,
			"2,29", `Invalid response_header_timeout: response_header_timeout must be greater than 0; got "0s"`},
		{"zero response body timeout", "service \"web\" {\n  response_body_timeout = \"0s\"\n}\n" + okListener, nil,
			"2,27", `response_body_timeout must be greater than 0; got "0s"`},
		{"max ejection time below ejection time", serviceBlock("passive", "ejection_time     = \"60s\"\n    max_ejection_time = \"30s\""), nil,
			"4,25", `Invalid max_ejection_time: max_ejection_time must not be shorter than ejection_time (1m0s); got "30s"`},
		{"max ejection time below default ejection time", serviceBlock("passive", `max_ejection_time = "10s"`), nil,
			"3,25", `max_ejection_time must not be shorter than ejection_time (30s); got "10s"`},
		{"zero max ejection time", serviceBlock("passive", `max_ejection_time = "0s"`), nil,
			"3,25", `max_ejection_time must be greater than 0; got "0s"`},
		{"duration too large", serviceBlock("retry", `per_try_timeout = "3000000h"`), nil,
			"3,23", `Invalid per_try_timeout: per_try_timeout must be at most 2562047h47m16.854775807s; got "3000000h"`},

		// Integers.
		{"rise 0", serviceBlock("health_check", "rise = 0"), nil,
			"3,12", "Invalid rise: rise must be a whole number from 1 to 100; got 0"},
		{"fall 101", serviceBlock("health_check", "fall = 101"), nil,
			"3,12", "fall must be a whole number from 1 to 100; got 101"},
		{"consecutive failures 0", serviceBlock("passive", "consecutive_failures = 0"), nil,
			"3,28", "consecutive_failures must be a whole number from 1 to 1000; got 0"},
		{"max ejection percent 101", serviceBlock("passive", "max_ejection_percent = 101"), nil,
			"3,28", "max_ejection_percent must be a whole number from 0 to 100; got 101"},
		{"attempts 11", serviceBlock("retry", "attempts = 11"), nil,
			"3,16", "attempts must be a whole number from 1 to 10; got 11"},
		{"fractional attempts", serviceBlock("retry", "attempts = 1.5"), nil,
			"3,16", "attempts must be a whole number from 1 to 10; got 1.5"},

		// Service fields.
		{"unknown strategy", "service \"web\" {\n  strategy = \"fastest\"\n}\n" + okListener, nil,
			"2,14", `strategy must be one of "ewma", "ip_hash", "least_connections", "p2c", "random", "round_robin", "weighted_round_robin"; got "fastest"`},
		{"empty weight key", "service \"web\" {\n  weight_key = \"\"\n}\n" + okListener, nil,
			"2,16", `Invalid weight_key: weight_key must not be empty; got ""`},
		{"unknown sticky mode", serviceBlock("sticky", `mode = "sticky"`), nil,
			"3,12", `Invalid mode: mode must be one of "cookie", "source_ip", "header"; got "sticky"`},
		{"header mode without header", serviceBlock("sticky", `mode = "header"`), nil,
			"2,3", `Missing header: sticky mode "header" needs a header attribute`},
		{"empty header in header mode", serviceBlock("sticky", "mode   = \"header\"\n    header = \"\""), nil,
			"4,14", `Missing header: sticky mode "header" needs a header attribute`},
		{"bad header name", serviceBlock("sticky", "mode   = \"header\"\n    header = \"X Session\""), nil,
			"4,14", `Invalid header: header must be a non-empty token`},
		{"bad cookie name", serviceBlock("sticky", `cookie = "my cookie"`), nil,
			"3,14", `Invalid cookie: cookie must be a non-empty token of letters, digits and !#$%&'*+-.^_` + "`" + `|~; got "my cookie"`},
		{"bad default cookie name", "service \"a/b\" {\n  sticky {}\n}\n" + okListener, nil,
			"2,3", `default cookie name "sluice_a/b" is not a valid cookie name; set cookie explicitly`},
		{"unknown health check type", serviceBlock("health_check", `type = "grpc"`), nil,
			"3,12", `Invalid type: type must be one of "http", "tcp"; got "grpc"`},
		{"relative health path", serviceBlock("health_check", `path = "health"`), nil,
			"3,12", `Invalid path: path must start with "/"; got "health"`},
		{"path in tcp health check", serviceBlock("health_check", "type = \"tcp\"\n    path = \"/health\""), nil,
			"4,5", `Unexpected path: path is only valid for health checks of type "http"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(tc.env)})
			have := FormatDiagnostics(diags)
			if len(have) != 1 {
				t.Fatalf("want exactly 1 error, have %d:\n%s", len(have), strings.Join(have, "\n"))
			}
			prefix := "test.hcl:" + tc.wantAt + ": "
			if tc.wantAt == "" {
				prefix = "test.hcl: "
			}
			if !strings.HasPrefix(have[0], prefix) || !strings.Contains(have[0], tc.want) {
				t.Errorf("want %q containing %q, have\n%s", prefix, tc.want, have[0])
			}
			if cfg != nil {
				t.Errorf("want nil config with errors, have %s", dump(cfg))
			}
		})
	}
}

func TestAdminAddressCollision(t *testing.T) {
	// Addresses are compared as written, as among listeners.
	const (
		defaultTaken  = `Duplicate address: address "127.0.0.1:9901" is the admin interface's default address; use another one, or move the admin interface with an admin block`
		adminFirst    = `Duplicate address: address "127.0.0.1:9000" is already used by the admin interface at test.hcl:1,1`
		listenerFirst = `Duplicate address: address "127.0.0.1:9000" is already used by the listener at test.hcl:1,1`
	)
	admin := func(addr string) string { return "admin {\n  address = \"" + addr + "\"\n}\n" }
	for _, tc := range []struct {
		name string
		src  string
		want []string // formatted diagnostics; none for a valid file
	}{
		{"listener on the default admin address", listenerAddress("127.0.0.1:9901"),
			[]string{"test.hcl:2,13: " + defaultTaken}},
		{"listener on the default admin address, empty admin block", "admin {}\n" + listenerAddress("127.0.0.1:9901"),
			[]string{"test.hcl:3,13: " + defaultTaken}},
		{"tcp listener on the default admin address", "listener \"db\" {\n  address  = \"127.0.0.1:9901\"\n  protocol = \"tcp\"\n  service  = \"pg\"\n}\n",
			[]string{"test.hcl:2,14: " + defaultTaken}},
		{"admin block before the listener", admin("127.0.0.1:9000") + listenerAddress("127.0.0.1:9000"),
			[]string{"test.hcl:5,13: " + adminFirst}},
		{"admin block after the listener", listenerAddress("127.0.0.1:9000") + admin("127.0.0.1:9000"),
			[]string{"test.hcl:8,13: " + listenerFirst}},
		{"second of two listeners", okListener[1:] + admin("127.0.0.1:9000") + strings.Replace(listenerAddress("127.0.0.1:9000"), `"ok"`, `"other"`, 1),
			[]string{"test.hcl:11,13: " + strings.Replace(adminFirst, "test.hcl:1,1", "test.hcl:7,1", 1)}},
		{"two listeners on the default admin address", listenerAddress("127.0.0.1:9901") + strings.Replace(listenerAddress("127.0.0.1:9901"), `"ok"`, `"other"`, 1),
			[]string{
				"test.hcl:2,13: " + defaultTaken,
				`test.hcl:8,13: Duplicate address: address "127.0.0.1:9901" is already used by the listener at test.hcl:1,1`,
			}},
		{"invalid admin address is reported once", admin("9000") + listenerAddress("9000"),
			[]string{
				`test.hcl:2,13: Invalid address: address must be "host:port", such as "127.0.0.1:8080"; got "9000"`,
				`test.hcl:5,13: Invalid address: address must be "host:port", such as "127.0.0.1:8080"; got "9000"`,
			}},
		{"admin moved off the default", admin("127.0.0.1:9902") + listenerAddress("127.0.0.1:9901"), nil},
		{"listener on the admin port of another host", admin("127.0.0.1:9000") + listenerAddress("127.0.0.2:9000"), nil},
		{"same address written differently", listenerAddress("localhost:9901"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(nil)})
			if have := FormatDiagnostics(diags); !slices.Equal(tc.want, have) {
				t.Errorf("want\n%s\nhave\n%s", strings.Join(tc.want, "\n"), strings.Join(have, "\n"))
			}
			if (cfg == nil) != (len(tc.want) > 0) {
				t.Errorf("want a config only without errors, have %s", dump(cfg))
			}
		})
	}
}

// TestStrategiesFromBalance: the configuration accepts exactly the
// strategies balance implements, and its default is one of them.
func TestStrategiesFromBalance(t *testing.T) {
	names := balance.Implemented()
	if !slices.Contains(names, defaultStrategy) {
		t.Fatalf("default strategy %q not in balance.Implemented() %v", defaultStrategy, names)
	}
	for _, name := range names {
		src := "service \"web\" {\n  strategy = \"" + name + "\"\n}\n" + okListener
		cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
		if diags.HasErrors() || cfg.Services["web"].Strategy != name {
			t.Errorf("strategy %q: have %s %v", name, dump(cfg), FormatDiagnostics(diags))
		}
	}
	quoted := make([]string, len(names))
	for i, name := range names {
		quoted[i] = strconv.Quote(name)
	}
	src := "service \"web\" {\n  strategy = \"fastest\"\n}\n" + okListener
	_, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
	want := []string{`test.hcl:2,14: Invalid strategy: strategy must be one of ` + strings.Join(quoted, ", ") + `; got "fastest"`}
	if have := FormatDiagnostics(diags); !slices.Equal(want, have) {
		t.Errorf("want\n%s\nhave\n%s", strings.Join(want, "\n"), strings.Join(have, "\n"))
	}
}

func TestSyntaxErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		src    string
		wantAt string
		want   string
	}{
		{"unterminated string", "listener \"ok\" {\n  address = \"127.0.0.1:8080\n}\n", "2,28", "Invalid multi-line string"},
		{"missing value", "listener \"ok\" {\n  address =\n}\n", "2,12", "Invalid expression"},
		{"unclosed block", "listener \"ok\" {\n  address = \"127.0.0.1:8080\"\n", "1,15", "Unclosed configuration block"},
		{"two arguments on one line", "service \"web\" { tag = \"a\", strategy = \"p2c\" }\n", "1,26", "Invalid single-argument block definition"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(nil)})
			have := FormatDiagnostics(diags)
			if len(have) == 0 {
				t.Fatal("want a syntax error, have none")
			}
			if prefix := "test.hcl:" + tc.wantAt + ": "; !strings.HasPrefix(have[0], prefix) || !strings.Contains(have[0], tc.want) {
				t.Errorf("want %q containing %q, have\n%s", prefix, tc.want, strings.Join(have, "\n"))
			}
			if cfg != nil {
				t.Errorf("want nil config with errors, have %s", dump(cfg))
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.hcl")
	if err := os.WriteFile(good, []byte(okListener), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, diags := Load(good, Options{Getenv: env(nil)})
	if diags.HasErrors() || cfg == nil || len(cfg.Listeners) != 1 {
		t.Fatalf("Load(%s): config %v, diagnostics %v", good, cfg, FormatDiagnostics(diags))
	}

	missing := filepath.Join(dir, "missing.hcl")
	cfg, diags = Load(missing, Options{Getenv: env(nil)})
	if cfg != nil || len(diags) != 1 || diags[0].Subject != nil {
		t.Fatalf("Load(%s): want nil config and one diagnostic without Subject, have %v, %v", missing, cfg, diags)
	}
	want := []string{missing + ": Cannot read configuration file: no such file or directory"}
	if have := FormatDiagnostics(diags); !slices.Equal(want, have) {
		t.Errorf("want %q, have %q", want, have)
	}
}

func TestFormatDiagnostics(t *testing.T) {
	at := func(file string, line, col int) *hcl.Range {
		return &hcl.Range{Filename: file, Start: hcl.Pos{Line: line, Column: col}, End: hcl.Pos{Line: line, Column: col + 1}}
	}
	diags := hcl.Diagnostics{
		{Severity: hcl.DiagError, Summary: "Third", Detail: "detail", Subject: at("b.hcl", 1, 1)},
		{Severity: hcl.DiagError, Summary: "Second", Detail: "multi\n  line", Subject: at("a.hcl", 2, 5)},
		{Severity: hcl.DiagWarning, Summary: "Skipped warning", Subject: at("a.hcl", 1, 1)},
		{Severity: hcl.DiagError, Summary: "First", Detail: "First", Subject: at("a.hcl", 2, 3)},
		{Severity: hcl.DiagError, Summary: "Fileless", Detail: "no position", Context: &hcl.Range{Filename: "a.hcl"}},
		{Severity: hcl.DiagError, Summary: "Nowhere"},
		{Severity: hcl.DiagError, Summary: "Same place", Subject: at("a.hcl", 2, 5)},
	}
	want := []string{
		"Nowhere",
		"a.hcl: Fileless: no position",
		"a.hcl:2,3: First",
		"a.hcl:2,5: Second: multi line",
		"a.hcl:2,5: Same place",
		"b.hcl:1,1: Third: detail",
	}
	if have := FormatDiagnostics(diags); !slices.Equal(want, have) {
		t.Errorf("want\n%s\nhave\n%s", strings.Join(want, "\n"), strings.Join(have, "\n"))
	}
}

// routeListener is a listener whose only route has the given label
// (quoted) on line 3, column 9.
func routeListener(label string) string {
	return "listener \"ok\" {\n  address = \"127.0.0.1:8080\"\n  route " + label + " {\n    service = \"web\"\n  }\n}\n"
}

// routeService is a listener whose route's service value (quoted) starts at
// line 4, column 15.
func routeService(value string) string {
	return "listener \"ok\" {\n  address = \"127.0.0.1:8080\"\n  route \"/\" {\n    service = " + value + "\n  }\n}\n"
}

// listenerAddress is a listener whose address value starts at line 2,
// column 13.
func listenerAddress(addr string) string {
	return "listener \"ok\" {\n  address = \"" + addr + "\"\n  route \"/\" {\n    service = \"web\"\n  }\n}\n"
}

// listenerAttr is an http listener with attr on line 3, column 3.
func listenerAttr(attr string) string {
	return "listener \"ok\" {\n  address = \"127.0.0.1:8080\"\n  " + attr + "\n  route \"/\" {\n    service = \"web\"\n  }\n}\n"
}

// tcpListenerAttr is a tcp listener with attr on line 5, column 3.
func tcpListenerAttr(attr string) string {
	return "listener \"db\" {\n  address  = \"127.0.0.1:5433\"\n  protocol = \"tcp\"\n  service  = \"postgres\"\n  " + attr + "\n}\n"
}

// serviceBlock is service "web" holding block typ whose body (at line 3,
// indented four spaces) is body, followed by okListener.
func serviceBlock(typ, body string) string {
	return "service \"web\" {\n  " + typ + " {\n    " + body + "\n  }\n}\n" + okListener
}

// defaultsFor is the policy of a service without a service block, written
// out independently of the code under test.
func defaultsFor(name string) *Service {
	return &Service{
		Name: name, Strategy: "weighted_round_robin", WeightKey: "weight", Retry: Retry{Attempts: 2},
		ResponseHeaderTimeout: time.Minute, ResponseBodyTimeout: time.Minute,
	}
}

func assertConfig(t *testing.T, want, have *Config) {
	t.Helper()
	if !reflect.DeepEqual(want, have) {
		t.Errorf("config:\nwant %s\nhave %s", dump(want), dump(have))
	}
}

// dump renders v with pointers followed, for failure messages.
func dump(v any) string {
	switch v := v.(type) {
	case *Config:
		if v == nil {
			return "<nil>"
		}
		return fmt.Sprintf("consul %+v\n  admin %+v\n  listeners %+v\n  services %s",
			v.Consul, v.Admin, v.Listeners, dump(v.Services))
	case map[string]*Service:
		var b strings.Builder
		for _, name := range slices.Sorted(maps.Keys(v)) {
			s := v[name]
			fmt.Fprintf(&b, "\n    %s: %+v sticky=%+v health=%+v passive=%+v", name, *s, s.Sticky, s.HealthCheck, s.Passive)
		}
		return b.String()
	}
	return fmt.Sprintf("%+v", v)
}

func TestListenerAccessLogAndIdleTimeout(t *testing.T) {
	cfg, diags := Parse("a.hcl", []byte(`listener "public" {
  address      = "127.0.0.1:8080"
  access_log   = "stdout"
  idle_timeout = "30s"
  route "/" {
    service = "web"
  }
}
`), Options{Getenv: func(string) string { return "" }})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if l := cfg.Listeners[0]; l.AccessLog != "stdout" || l.IdleTimeout != 30*time.Second {
		t.Fatalf("want stdout and 30s, have %q %v", l.AccessLog, l.IdleTimeout)
	}
	_, diags = Parse("b.hcl", []byte(`listener "public" {
  address      = "127.0.0.1:8080"
  idle_timeout = "0s"
  route "/" {
    service = "web"
  }
}
`), Options{Getenv: func(string) string { return "" }})
	if lines := FormatDiagnostics(diags); len(lines) != 1 || !strings.HasPrefix(lines[0], "b.hcl:3,") {
		t.Fatalf("want one error on line 3, have %v", lines)
	}
}

func TestClientAndInstanceTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want func(*Config) []any // want, have pairs
	}{
		{
			name: "http listener written",
			src: listenerAttr(`request_header_timeout = "5s"
  request_body_timeout   = "30s"
  response_write_timeout = "45s"
  trusted_proxies        = ["192.168.0.0/16", "2001:db8::1"]`),
			want: func(c *Config) []any {
				l := c.Listeners[0]
				return []any{
					5 * time.Second, l.RequestHeaderTimeout,
					30 * time.Second, l.RequestBodyTimeout,
					45 * time.Second, l.ResponseWriteTimeout,
					[]netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("2001:db8::1/128")}, l.TrustedProxies,
				}
			},
		},
		{
			name: "empty trusted proxies",
			src:  listenerAttr(`trusted_proxies = []`),
			want: func(c *Config) []any { return []any{[]netip.Prefix(nil), c.Listeners[0].TrustedProxies} },
		},
		{
			name: "tcp listener has none",
			src:  tcpListenerAttr(""),
			want: func(c *Config) []any {
				l := c.Listeners[0]
				return []any{
					time.Duration(0), l.RequestHeaderTimeout,
					time.Duration(0), l.RequestBodyTimeout,
					time.Duration(0), l.ResponseWriteTimeout,
					[]netip.Prefix(nil), l.TrustedProxies,
				}
			},
		},
		{
			name: "service written",
			src:  "service \"web\" {\n  response_header_timeout = \"2s\"\n  response_body_timeout = \"3s\"\n}\n" + okListener,
			want: func(c *Config) []any {
				s := c.Services["web"]
				return []any{2 * time.Second, s.ResponseHeaderTimeout, 3 * time.Second, s.ResponseBodyTimeout}
			},
		},
		{
			name: "max ejection time follows a long ejection time",
			src:  serviceBlock("passive", `ejection_time = "10m"`),
			want: func(c *Config) []any { return []any{10 * time.Minute, c.Services["web"].Passive.MaxEjectionTime} },
		},
		{
			name: "max ejection time equal to ejection time",
			src:  serviceBlock("passive", "ejection_time     = \"1m\"\n    max_ejection_time = \"1m\""),
			want: func(c *Config) []any { return []any{time.Minute, c.Services["web"].Passive.MaxEjectionTime} },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(nil)})
			if diags.HasErrors() {
				t.Fatalf("Parse: %v", FormatDiagnostics(diags))
			}
			pairs := tc.want(cfg)
			for i := 0; i < len(pairs); i += 2 {
				if want, have := pairs[i], pairs[i+1]; !reflect.DeepEqual(want, have) {
					t.Errorf("field %d: want %v, have %v", i/2, want, have)
				}
			}
		})
	}
}
