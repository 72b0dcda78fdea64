package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// twoListeners has listener "ok" on 127.0.0.1:8080 first, then "db" on a
// wildcard address.
const twoListeners = okListener + `
listener "db" {
  address  = "0.0.0.0:5433"
  protocol = "tcp"
  service  = "pg"
}
`

func hostname(name string) func() (string, error) {
	return func() (string, error) { return name, nil }
}

func TestRegisterDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want *Register
	}{
		{"no block", twoListeners, nil},
		{"empty block", "register {}\n" + twoListeners, &Register{
			Name: "sluice", ID: "sluice-host1-8080", Listener: "ok", Address: "127.0.0.1", Port: 8080,
			CheckInterval: 10 * time.Second, ShutdownDelay: 5 * time.Second,
		}},
		{"name alone", "register {\n  name = \"edge\"\n}\n" + twoListeners, &Register{
			Name: "edge", ID: "edge-host1-8080", Listener: "ok", Address: "127.0.0.1", Port: 8080,
			CheckInterval: 10 * time.Second, ShutdownDelay: 5 * time.Second,
		}},
		{"wildcard listener registers no address", "register {\n  listener = \"db\"\n}\n" + twoListeners, &Register{
			Name: "sluice", ID: "sluice-host1-5433", Listener: "db", Port: 5433,
			CheckInterval: 10 * time.Second, ShutdownDelay: 5 * time.Second,
		}},
		{"ipv6 wildcard", "register {}\n" + strings.Replace(okListener, "127.0.0.1:8080", "[::]:8080", 1), &Register{
			Name: "sluice", ID: "sluice-host1-8080", Listener: "ok", Port: 8080,
			CheckInterval: 10 * time.Second, ShutdownDelay: 5 * time.Second,
		}},
		{"everything", `register {
  name           = "edge"
  id             = "edge-1"
  tags           = ["a", "b"]
  meta           = { zone = "z1", "rack-id" = "r2" }
  listener       = "ok"
  check_interval = "1s"
  shutdown_delay = "0s"
}
` + twoListeners, &Register{
			Name: "edge", ID: "edge-1", Tags: []string{"a", "b"}, Meta: map[string]string{"zone": "z1", "rack-id": "r2"},
			Listener: "ok", Address: "127.0.0.1", Port: 8080, CheckInterval: time.Second,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(nil), Hostname: hostname("host1")})
			if diags.HasErrors() {
				t.Fatalf("Parse: %v", FormatDiagnostics(diags))
			}
			if !reflect.DeepEqual(cfg.Register, tc.want) {
				t.Errorf("want %+v\nhave %+v", tc.want, cfg.Register)
			}
		})
	}
}

// The default ID depends only on the name, the host name and the port:
// the same file on the same host gives the same ID on every start.
func TestRegisterIDStable(t *testing.T) {
	src := []byte("register { name = \"edge\" }\n" + okListener)
	var ids []string
	for range 3 {
		cfg, diags := Parse("test.hcl", src, Options{Getenv: env(nil), Hostname: hostname("web-7")})
		if diags.HasErrors() {
			t.Fatalf("Parse: %v", FormatDiagnostics(diags))
		}
		ids = append(ids, cfg.Register.ID)
	}
	for _, id := range ids {
		if id != "edge-web-7-8080" {
			t.Fatalf("want edge-web-7-8080 every time, have %q", ids)
		}
	}
	other, _ := Parse("test.hcl", []byte(strings.Replace(string(src), "8080", "8081", 1)), Options{Getenv: env(nil), Hostname: hostname("web-7")})
	if other.Register.ID != "edge-web-7-8081" {
		t.Errorf("another port: want edge-web-7-8081, have %q", other.Register.ID)
	}
}

func TestRegisterErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		block    string
		hostname func() (string, error)
		wantAt   string
		want     string
	}{
		{"unknown listener", `listener = "nope"`, nil, "2,14", `Unknown listener: listener "nope" is not defined in this file`},
		{"empty name", `name = ""`, nil, "2,10", `Invalid name: name must not be empty; got ""`},
		{"empty id", `id = ""`, nil, "2,8", `Invalid id: id must not be empty`},
		{"bad check_interval", `check_interval = "10"`, nil, "2,20", `Invalid check_interval: check_interval must be a duration string such as "2s"; got "10"`},
		{"short check_interval", `check_interval = "500ms"`, nil, "2,20", `check_interval must be at least 1s`},
		{"negative shutdown_delay", `shutdown_delay = "-1s"`, nil, "2,20", `Invalid shutdown_delay: shutdown_delay must not be negative`},
		{"tags not a list", `tags = "a"`, nil, "2,10", `Invalid tags: tags must be a list of strings`},
		{"tags with a number", `tags = ["a", 1]`, nil, "2,10", `Invalid tags`},
		{"meta not a map", `meta = ["a"]`, nil, "2,10", `Invalid meta: meta must be a map of strings`},
		{"meta bad key", `meta = { "a b" = "c" }`, nil, "2,10", `Invalid meta: meta keys must be 1 to 128 letters, digits, '_' or '-'; got "a b" = "c"`},
		{"meta reserved key", `meta = { consul-x = "c" }`, nil, "2,10", `reserved`},
		{"unknown attribute", `port = 80`, nil, "2,3", `Unsupported argument`},
		{"no host name", ``, func() (string, error) { return "", errors.New("no uts") }, "1,1", `Missing id: the default id needs the host name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "register {\n  " + tc.block + "\n}\n" + okListener
			h := tc.hostname
			if h == nil {
				h = hostname("h")
			}
			cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil), Hostname: h})
			have := FormatDiagnostics(diags)
			if len(have) != 1 {
				t.Fatalf("want exactly 1 error, have %d:\n%s", len(have), strings.Join(have, "\n"))
			}
			prefix := "test.hcl:" + tc.wantAt + ": "
			if !strings.HasPrefix(have[0], prefix) || !strings.Contains(have[0], tc.want) {
				t.Errorf("want %q containing %q, have\n%s", prefix, tc.want, have[0])
			}
			if cfg != nil {
				t.Errorf("want nil config with errors")
			}
		})
	}
	// A second register block is refused like other single blocks.
	_, diags := Parse("test.hcl", []byte("register {}\nregister {}\n"+okListener), Options{Getenv: env(nil), Hostname: hostname("h")})
	if have := FormatDiagnostics(diags); len(have) != 1 || !strings.HasPrefix(have[0], "test.hcl:2,1: Duplicate register block") {
		t.Errorf("duplicate register: have %q", have)
	}
}
