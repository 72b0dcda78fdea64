package config

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/certs"
	"github.com/sluice-lb/sluice/proxy/certs/certstest"
	"github.com/sluice-lb/sluice/proxy/h1"
)

// pemFiles are certificate files written for one test.
type pemFiles struct {
	dir              string
	cert, key        string // a pair for "a.example.com"
	cert2, key2      string // a pair for "*.example.com"
	ca               string // the issuing CA
	notPEM, missing  string
	emptyFile, other string // other: a key that matches neither certificate
}

func writePEMFiles(t *testing.T) pemFiles {
	t.Helper()
	dir := t.TempDir()
	ca := certstest.NewCA(t, "test CA")
	f := pemFiles{dir: dir, ca: ca.WriteCA(t, dir), missing: filepath.Join(dir, "missing.pem")}
	f.cert, f.key = ca.WriteLeaf(t, dir, "a.example.com")
	f.cert2, f.key2 = ca.WriteLeaf(t, dir, "*.example.com")
	_, f.other = ca.WriteLeaf(t, dir, "other.test")
	f.notPEM = filepath.Join(dir, "not.pem")
	f.emptyFile = filepath.Join(dir, "empty.pem")
	for name, data := range map[string]string{f.notPEM: "hello\n", f.emptyFile: ""} {
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// q quotes s as an HCL string.
func q(s string) string { return strconv.Quote(s) }

// certBlock is a certificate block as tls-block lines: its cert_file and
// key_file values start 14 columns right of the block's first column.
func certBlock(certFile, keyFile string) []string {
	return []string{"certificate {", "  cert_file = " + q(certFile), "  key_file  = " + q(keyFile), "}"}
}

// tlsListener is http listener "ok": line 1 the block, line 2 its address,
// then attrs one per line from line 3 (column 3), then a tls block (when
// tlsLines is not nil) whose lines start at column 5 on the line after
// "tls {", then rest (default: a route "/" to web).
func tlsListener(attrs, tlsLines []string, rest ...string) string {
	var b strings.Builder
	b.WriteString("listener \"ok\" {\n  address = \"127.0.0.1:8443\"\n")
	for _, a := range attrs {
		b.WriteString("  " + a + "\n")
	}
	if tlsLines != nil {
		b.WriteString("  tls {\n")
		for _, l := range tlsLines {
			b.WriteString("    " + l + "\n")
		}
		b.WriteString("  }\n")
	}
	if rest == nil {
		rest = []string{`route "/" {`, `  service = "web"`, `}`}
	}
	for _, l := range rest {
		b.WriteString("  " + l + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// tcpTLSListener is tcp listener "db": line 1 the block, 2 its address,
// 3 its protocol, then like tlsListener from line 4; rest is required.
func tcpTLSListener(attrs, tlsLines []string, rest ...string) string {
	src := tlsListener(append([]string{`protocol = "tcp"`}, attrs...), tlsLines, rest...)
	src = strings.Replace(src, `listener "ok"`, `listener "db"`, 1)
	return strings.Replace(src, "127.0.0.1:8443", "127.0.0.1:5433", 1)
}

// join concatenates line lists.
func join(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

func TestTLSAndLimitsAccepted(t *testing.T) {
	f := writePEMFiles(t)
	for _, tc := range []struct {
		name  string
		src   string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "http listener with every tls setting",
			src: tlsListener(
				[]string{`hsts_max_age = "8760h"`, `max_connections = 1000`, `max_concurrent_streams = 50`, `max_header_bytes = 32768`},
				join(certBlock(f.cert, f.key), certBlock(f.cert2, f.key2), []string{
					`min_version = "1.3"`, "client_ca_file = " + q(f.ca), "require_client_cert = true",
				}),
				`route "/" {`, `  service        = "web"`, `  max_body_bytes = "10MiB"`, `}`,
			),
			check: func(t *testing.T, c *Config) {
				want := Listener{
					Name: "ok", Address: "127.0.0.1:8443", Protocol: ProtocolHTTP,
					Routes:      []Route{{PathPrefix: "/", Service: "web", MaxBodyBytes: 10 << 20}},
					IdleTimeout: 2 * time.Minute, RequestHeaderTimeout: 10 * time.Second,
					RequestBodyTimeout: time.Minute, ResponseWriteTimeout: time.Minute,
					TLS: &ListenerTLS{
						Mode:              TLSTerminate,
						Certificates:      []certs.Pair{{CertFile: f.cert, KeyFile: f.key}, {CertFile: f.cert2, KeyFile: f.key2}},
						MinVersion:        tls.VersionTLS13,
						ClientCAFile:      f.ca,
						RequireClientCert: true,
					},
					HSTSMaxAge: 8760 * time.Hour, MaxConnections: 1000, MaxConcurrentStreams: 50, MaxHeaderBytes: 32768,
				}
				if have := c.Listeners[0]; !reflect.DeepEqual(want, have) {
					t.Errorf("listener:\nwant %+v\nhave %+v", want, have)
				}
				opts := c.Listeners[0].TLS.ServerOptions([]string{"h2", "http/1.1"})
				wantOpts := certs.ServerOptions{
					Pairs:      []certs.Pair{{CertFile: f.cert, KeyFile: f.key}, {CertFile: f.cert2, KeyFile: f.key2}},
					MinVersion: tls.VersionTLS13, ClientCAFile: f.ca, RequireClientCert: true,
					NextProtos: []string{"h2", "http/1.1"},
				}
				if !reflect.DeepEqual(wantOpts, opts) {
					t.Errorf("ServerOptions:\nwant %+v\nhave %+v", wantOpts, opts)
				}
				if _, err := certs.LoadServer(opts); err != nil {
					t.Errorf("LoadServer(ServerOptions): %v", err)
				}
			},
		},
		{
			name: "http listener tls defaults",
			src:  tlsListener(nil, certBlock(f.cert, f.key)),
			check: func(t *testing.T, c *Config) {
				l := c.Listeners[0]
				want := &ListenerTLS{Mode: TLSTerminate, Certificates: []certs.Pair{{CertFile: f.cert, KeyFile: f.key}}, MinVersion: tls.VersionTLS12}
				if !reflect.DeepEqual(want, l.TLS) {
					t.Errorf("TLS: want %+v, have %+v", want, l.TLS)
				}
				if l.HSTSMaxAge != 0 || l.MaxConnections != 0 || l.MaxConcurrentStreams != 100 ||
					l.MaxHeaderBytes != h1.DefaultMaxHeaderBytes || l.RedirectHTTPS || l.HTTPSPort != 0 {
					t.Errorf("defaults: have %+v", l)
				}
			},
		},
		{
			name: "client CA without require",
			src:  tlsListener(nil, join(certBlock(f.cert, f.key), []string{"client_ca_file = " + q(f.ca)})),
			check: func(t *testing.T, c *Config) {
				if l := c.Listeners[0].TLS; l.ClientCAFile != f.ca || l.RequireClientCert {
					t.Errorf("TLS: have %+v", l)
				}
			},
		},
		{
			name: "redirect listener needs no routes",
			src:  tlsListener([]string{"redirect_https = true"}, nil, "max_connections = 10"),
			check: func(t *testing.T, c *Config) {
				l := c.Listeners[0]
				if !l.RedirectHTTPS || l.HTTPSPort != 443 || l.Routes != nil || l.MaxConnections != 10 || len(c.Services) != 0 {
					t.Errorf("listener: have %+v, services %v", l, c.ServiceNames())
				}
			},
		},
		{
			name: "redirect to another port",
			src:  tlsListener([]string{"redirect_https = true", "https_port = 8443"}, nil, "max_header_bytes = 4096"),
			check: func(t *testing.T, c *Config) {
				if l := c.Listeners[0]; l.HTTPSPort != 8443 || l.MaxHeaderBytes != 4096 {
					t.Errorf("listener: have %+v", l)
				}
			},
		},
		{
			name: "redirect_https false is a plain listener",
			src:  tlsListener([]string{"redirect_https = false"}, nil),
			check: func(t *testing.T, c *Config) {
				if l := c.Listeners[0]; l.RedirectHTTPS || l.HTTPSPort != 0 || len(l.Routes) != 1 {
					t.Errorf("listener: have %+v", l)
				}
			},
		},
		{
			name: "tcp listener terminating tls",
			src:  tcpTLSListener([]string{"max_connections = 5"}, certBlock(f.cert, f.key), `service = "postgres"`),
			check: func(t *testing.T, c *Config) {
				l := c.Listeners[0]
				if l.TLS == nil || l.TLS.Mode != TLSTerminate || len(l.TLS.Certificates) != 1 || l.Service != "postgres" ||
					l.MaxConnections != 5 || l.MaxConcurrentStreams != 0 || l.MaxHeaderBytes != 0 {
					t.Errorf("listener: have %+v, tls %+v", l, l.TLS)
				}
				if opts := l.TLS.ServerOptions(nil); opts.NextProtos != nil || len(opts.Pairs) != 1 {
					t.Errorf("ServerOptions: have %+v", opts)
				}
			},
		},
		{
			name: "tcp listener passing tls through",
			src: tcpTLSListener(nil, []string{`mode = "passthrough"`},
				`route "DB.Example.com" {`, `  service = "db"`, `}`,
				`route "*.example.com" {`, `  service = "wild"`, `}`,
				`route "*" {`, `  service = "fallback"`, `}`),
			check: func(t *testing.T, c *Config) {
				l := c.Listeners[0]
				want := []SNIRoute{{"db.example.com", "db"}, {"*.example.com", "wild"}, {"*", "fallback"}}
				if !reflect.DeepEqual(want, l.SNIRoutes) || l.Service != "" || l.Routes != nil {
					t.Errorf("listener: have %+v", l)
				}
				if want := (&ListenerTLS{Mode: TLSPassthrough}); !reflect.DeepEqual(want, l.TLS) {
					t.Errorf("TLS: want %+v, have %+v", want, l.TLS)
				}
				if have := c.ServiceNames(); !reflect.DeepEqual([]string{"db", "fallback", "wild"}, have) {
					t.Errorf("services: have %v", have)
				}
			},
		},
		{
			name: "service tls",
			src: "service \"web\" {\n  tls {\n    ca_file = " + q(f.ca) + "\n    server_name = \"backend.internal\"\n" +
				"    insecure_skip_verify = true\n    cert_file = " + q(f.cert) + "\n    key_file = " + q(f.key) + "\n  }\n}\n" + okListener,
			check: func(t *testing.T, c *Config) {
				want := &ServiceTLS{CAFile: f.ca, ServerName: "backend.internal", InsecureSkipVerify: true, CertFile: f.cert, KeyFile: f.key}
				have := c.Services["web"].TLS
				if !reflect.DeepEqual(want, have) {
					t.Errorf("TLS: want %+v, have %+v", want, have)
				}
				wantOpts := certs.ClientOptions{CAFile: f.ca, ServerName: "backend.internal", InsecureSkipVerify: true, CertFile: f.cert, KeyFile: f.key}
				if opts := have.ClientOptions(); opts != wantOpts {
					t.Errorf("ClientOptions: want %+v, have %+v", wantOpts, opts)
				}
				if _, err := certs.LoadClient(have.ClientOptions()); err != nil {
					t.Errorf("LoadClient(ClientOptions): %v", err)
				}
			},
		},
		{
			name: "empty service tls block: system roots",
			src:  serviceBlock("tls", ""),
			check: func(t *testing.T, c *Config) {
				if have := c.Services["web"].TLS; have == nil || *have != (ServiceTLS{}) {
					t.Errorf("TLS: have %+v", have)
				}
				if have := c.Services["other"]; have != nil {
					t.Errorf("unexpected service %+v", have)
				}
			},
		},
		{
			name: "no tls block",
			src:  okListener,
			check: func(t *testing.T, c *Config) {
				if c.Listeners[0].TLS != nil || c.Services["web"].TLS != nil {
					t.Error("TLS set without a tls block")
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(nil)})
			if diags.HasErrors() {
				t.Fatalf("Parse: %v\n%s", FormatDiagnostics(diags), tc.src)
			}
			tc.check(t, cfg)
		})
	}
}

func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  int64
	}{
		{"0", 0},
		{"1", 1},
		{`"0"`, 0},
		{`"1024"`, 1024},
		{`"1KiB"`, 1 << 10},
		{`"10 MiB"`, 10 << 20},
		{`"3GiB"`, 3 << 30},
		{"1e3", 1000},
		{`"8589934591GiB"`, 8589934591 << 30}, // just below 2^63
		{"9223372036854775807", 1<<63 - 1},
	} {
		src := routeAttr("max_body_bytes = " + tc.value)
		cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
		if diags.HasErrors() {
			t.Errorf("%s: %v", tc.value, FormatDiagnostics(diags))
			continue
		}
		if have := cfg.Listeners[0].Routes[0].MaxBodyBytes; have != tc.want {
			t.Errorf("%s: want %d, have %d", tc.value, tc.want, have)
		}
	}
}

// routeAttr is listener "ok" whose route "/" has attr on line 5, column 5.
func routeAttr(attr string) string {
	return "listener \"ok\" {\n  address = \"127.0.0.1:8080\"\n  route \"/\" {\n    service = \"web\"\n    " + attr + "\n  }\n}\n"
}

func TestTLSAndLimitsErrors(t *testing.T) {
	f := writePEMFiles(t)
	good := certBlock(f.cert, f.key)
	passthrough := []string{`mode = "passthrough"`}
	sniRoute := []string{`route "db.example.com" {`, `  service = "db"`, `}`}
	for _, tc := range []struct {
		name   string
		src    string
		wantAt string // LINE,COL
		want   string
	}{
		// The tls block of a listener.
		{"no certificate", tlsListener(nil, []string{}),
			"3,3", `Missing certificate: the tls block of listener "ok" needs at least one certificate block`},
		{"two tls blocks", strings.Replace(tlsListener(nil, good), "  route", "  tls {}\n  route", 1),
			"9,3", "Duplicate tls block"},
		{"certificate without cert_file", tlsListener(nil, []string{"certificate {", "  key_file = " + q(f.key), "}"}),
			"4,5", "Missing cert_file: a certificate block needs cert_file"},
		{"certificate without key_file", tlsListener(nil, []string{"certificate {", "  cert_file = " + q(f.cert), "}"}),
			"4,5", "Missing key_file: a certificate block needs key_file"},
		{"missing cert_file", tlsListener(nil, certBlock(f.missing, f.key)),
			"5,19", "Invalid cert_file: cert_file must name a usable PEM file (no such file or directory); got " + q(f.missing)},
		{"missing key_file", tlsListener(nil, certBlock(f.cert, f.missing)),
			"6,19", "Invalid key_file: key_file must name a usable PEM file (no such file or directory); got " + q(f.missing)},
		{"cert_file a directory", tlsListener(nil, certBlock(f.dir, f.key)),
			"5,19", "Invalid cert_file: cert_file must name a usable PEM file (not a regular file)"},
		{"key_file a device", tlsListener(nil, certBlock(f.cert, os.DevNull)),
			"6,19", "Invalid key_file: key_file must name a usable PEM file (not a regular file)"},
		{"empty cert_file", tlsListener(nil, certBlock("", f.key)),
			"5,19", `Invalid cert_file: cert_file must not be empty; got ""`},
		{"mismatched pair", tlsListener(nil, certBlock(f.cert, f.other)),
			"5,19", "Invalid cert_file: cert_file and key_file " + q(f.other) + " must form a key pair (tls: private key does not match public key); got " + q(f.cert)},
		{"files switched", tlsListener(nil, certBlock(f.key, f.cert)),
			"5,19", "Invalid cert_file: cert_file and key_file " + q(f.cert) + " must form a key pair"},
		{"cert_file not PEM", tlsListener(nil, certBlock(f.notPEM, f.key)),
			"5,19", "must form a key pair (tls: failed to find any PEM data in certificate input)"},
		{"second certificate bad", tlsListener(nil, join(good, certBlock(f.cert2, f.key))),
			"9,19", "must form a key pair"},
		{"unknown certificate attribute", tlsListener(nil, []string{"certificate {", "  cert_file = " + q(f.cert), "  key_file  = " + q(f.key), "  cert = \"x\"", "}"}),
			"7,7", "Unsupported argument"},
		{"min_version 1.1", tlsListener(nil, join(good, []string{`min_version = "1.1"`})),
			"8,19", `Invalid min_version: min_version must be one of "1.2", "1.3"; got "1.1"`},
		{"min_version a number", tlsListener(nil, join(good, []string{`min_version = 1.2`})),
			"8,19", `Invalid min_version: min_version must be a string; got number 1.2`},
		{"client_ca_file without certificates", tlsListener(nil, join(good, []string{"client_ca_file = " + q(f.notPEM)})),
			"8,22", "Invalid client_ca_file: client_ca_file must name a usable PEM file (no PEM certificate in it); got " + q(f.notPEM)},
		{"client_ca_file empty file", tlsListener(nil, join(good, []string{"client_ca_file = " + q(f.emptyFile)})),
			"8,22", "no PEM certificate in it"},
		{"client_ca_file missing", tlsListener(nil, join(good, []string{"client_ca_file = " + q(f.missing)})),
			"8,22", "(no such file or directory)"},
		{"require_client_cert without client_ca_file", tlsListener(nil, join(good, []string{"require_client_cert = true"})),
			"8,27", "Missing client_ca_file: require_client_cert needs client_ca_file"},
		{"require_client_cert not a bool", tlsListener(nil, join(good, []string{`require_client_cert = "yes"`})),
			"8,27", `Invalid require_client_cert: require_client_cert must be true or false; got string "yes"`},
		{"mode on an http listener", tlsListener(nil, join(good, []string{`mode = "terminate"`})),
			"8,5", `Unexpected mode: mode is only valid in tcp listeners; http listener "ok" terminates TLS`},
		{"unknown mode", tcpTLSListener(nil, []string{`mode = "bridge"`}, `service = "db"`),
			"5,12", `Invalid mode: mode must be one of "terminate", "passthrough"; got "bridge"`},
		{"unknown tls attribute", tlsListener(nil, join(good, []string{`ciphers = []`})),
			"8,5", "Unsupported argument"},

		// Passthrough.
		{"passthrough with a certificate", tcpTLSListener(nil, join(passthrough, good), sniRoute...),
			"6,5", `Unexpected certificate block: listener "db" passes TLS through to its instances`},
		{"passthrough with min_version", tcpTLSListener(nil, join(passthrough, []string{`min_version = "1.3"`}), sniRoute...),
			"6,5", `Unexpected min_version: min_version is only valid when TLS is terminated; listener "db" passes it through`},
		{"passthrough with client_ca_file", tcpTLSListener(nil, join(passthrough, []string{"client_ca_file = " + q(f.ca)}), sniRoute...),
			"6,5", "Unexpected client_ca_file"},
		{"passthrough with service", tcpTLSListener(nil, passthrough, join([]string{`service = "db"`}, sniRoute)...),
			"7,3", `Unexpected service: tcp listener "db" passes TLS through`},
		{"passthrough without routes", tcpTLSListener(nil, passthrough, `idle_timeout = "1m"`),
			"1,1", `Missing route: tcp listener "db" passes TLS through and needs at least one route block`},
		{"passthrough on http", tlsListener(nil, passthrough),
			"4,5", "Unexpected mode: mode is only valid in tcp listeners"},
		{"route label with a path", tcpTLSListener(nil, passthrough, `route "db.example.com/" {`, `  service = "db"`, `}`),
			"7,9", `Invalid route: route label must be a DNS name such as "db.example.com", a wildcard such as "*.example.com", or "*" (the default); got "db.example.com/"`},
		{"route label empty", tcpTLSListener(nil, passthrough, `route "" {`, `  service = "db"`, `}`),
			"7,9", `Invalid route: route label must be a DNS name`},
		{"route label with an empty label", tcpTLSListener(nil, passthrough, `route "db..example.com" {`, `  service = "db"`, `}`),
			"7,9", `Invalid route: route label must be a DNS name`},
		{"route label with a trailing dot", tcpTLSListener(nil, passthrough, `route "db.example.com." {`, `  service = "db"`, `}`),
			"7,9", `Invalid route: route label must be a DNS name`},
		{"route label two wildcards", tcpTLSListener(nil, passthrough, `route "*.*.example.com" {`, `  service = "db"`, `}`),
			"7,9", `Invalid route: route label must be a DNS name`},
		{"route label partial wildcard", tcpTLSListener(nil, passthrough, `route "db*.example.com" {`, `  service = "db"`, `}`),
			"7,9", `Invalid route: route label must be a DNS name`},
		{"route label an address", tcpTLSListener(nil, passthrough, `route "127.0.0.1" {`, `  service = "db"`, `}`),
			"7,9", `Invalid route: route label must be a DNS name, not an IP address`},
		{"route label too long", tcpTLSListener(nil, passthrough, `route "`+strings.Repeat("a", 64)+`.test" {`, `  service = "db"`, `}`),
			"7,9", `Invalid route: route label must be a DNS name`},
		{"duplicate route", tcpTLSListener(nil, passthrough, join(sniRoute, []string{`route "DB.example.COM" {`, `  service = "other"`, `}`})...),
			"10,3", `Duplicate route: route "DB.example.COM" is already defined at test.hcl:7,3`},
		{"duplicate default route", tcpTLSListener(nil, passthrough, `route "*" {`, `  service = "a"`, `}`, `route "*" {`, `  service = "b"`, `}`),
			"10,3", `Duplicate route: route "*" is already defined at test.hcl:7,3`},
		{"route without service", tcpTLSListener(nil, passthrough, `route "*" {`, `}`),
			"7,3", `Missing service: route "*" needs a service attribute`},
		{"route with max_body_bytes", tcpTLSListener(nil, passthrough, `route "*" {`, `  service = "db"`, `  max_body_bytes = 10`, `}`),
			"9,5", "Unsupported argument"},
		{"terminating tcp listener with a route", tcpTLSListener(nil, good, join([]string{`service = "db"`}, sniRoute)...),
			"11,3", `Unexpected route block: route blocks are only valid in http listeners and in tcp listeners with tls { mode = "passthrough" }`},
		{"terminating tcp listener without service", tcpTLSListener(nil, good, `idle_timeout = "1m"`),
			"1,1", `Missing service: tcp listener "db" needs a service attribute`},
		{"tcp listener without certificate", tcpTLSListener(nil, []string{}, `service = "db"`),
			"4,3", `Missing certificate: the tls block of listener "db" needs at least one certificate block`},

		// Redirect and HSTS.
		{"redirect_https with tls", tlsListener([]string{"redirect_https = true"}, good),
			"3,20", `Invalid redirect_https: redirect_https is only valid in listeners without a tls block`},
		{"redirect_https with a route", tlsListener([]string{"redirect_https = true"}, nil),
			"4,3", `Unexpected route block: listener "ok" has redirect_https = true and answers every request with a redirect to https; it has no routes`},
		{"redirect_https not a bool", tlsListener([]string{`redirect_https = "yes"`}, nil),
			"3,20", `Invalid redirect_https: redirect_https must be true or false; got string "yes"`},
		{"redirect_https on tcp", tcpTLSListener([]string{"redirect_https = true"}, nil, `service = "db"`),
			"4,3", `Unexpected redirect_https: redirect_https is only valid in http listeners; "db" is a tcp listener`},
		{"https_port without redirect_https", tlsListener([]string{"https_port = 8443"}, nil),
			"3,3", "Unexpected https_port: https_port is only valid with redirect_https = true"},
		{"https_port with redirect_https false", tlsListener([]string{"redirect_https = false", "https_port = 8443"}, nil),
			"4,3", "Unexpected https_port"},
		{"https_port 0", tlsListener([]string{"redirect_https = true", "https_port = 0"}, nil, "idle_timeout = \"1m\""),
			"4,16", "Invalid https_port: https_port must be a whole number from 1 to 65535; got 0"},
		{"https_port too big", tlsListener([]string{"redirect_https = true", "https_port = 65536"}, nil, "idle_timeout = \"1m\""),
			"4,16", "https_port must be a whole number from 1 to 65535; got 65536"},
		{"hsts_max_age without tls", tlsListener([]string{`hsts_max_age = "1h"`}, nil),
			"3,3", "Unexpected hsts_max_age: hsts_max_age is only valid in listeners with a tls block"},
		{"hsts_max_age under a second", tlsListener([]string{`hsts_max_age = "500ms"`}, good),
			"3,18", `Invalid hsts_max_age: hsts_max_age must be at least 1s; got "500ms"`},
		{"hsts_max_age fraction", tlsListener([]string{`hsts_max_age = "1.5s"`}, good),
			"3,18", `Invalid hsts_max_age: hsts_max_age must be a whole number of seconds; got "1.5s"`},
		{"hsts_max_age zero", tlsListener([]string{`hsts_max_age = "0s"`}, good),
			"3,18", `hsts_max_age must be at least 1s; got "0s"`},
		{"hsts_max_age negative", tlsListener([]string{`hsts_max_age = "-1h"`}, good),
			"3,18", `hsts_max_age must not be negative`},
		{"hsts_max_age on tcp", tcpTLSListener([]string{`hsts_max_age = "1h"`}, good, `service = "db"`),
			"4,3", "Unexpected hsts_max_age: hsts_max_age is only valid in http listeners"},

		// Limits.
		{"max_connections negative", listenerAttr("max_connections = -1"),
			"3,21", "Invalid max_connections: max_connections must be a whole number from 0 to 2147483647; got -1"},
		{"max_connections fraction", tcpListenerAttr("max_connections = 1.5"),
			"5,21", "max_connections must be a whole number from 0 to 2147483647; got 1.5"},
		{"max_concurrent_streams 0", listenerAttr("max_concurrent_streams = 0"),
			"3,28", "Invalid max_concurrent_streams: max_concurrent_streams must be a whole number from 1 to 10000; got 0"},
		{"max_concurrent_streams too many", listenerAttr("max_concurrent_streams = 10001"),
			"3,28", "from 1 to 10000; got 10001"},
		{"max_concurrent_streams on tcp", tcpListenerAttr("max_concurrent_streams = 10"),
			"5,3", "Unexpected max_concurrent_streams: max_concurrent_streams is only valid in http listeners"},
		{"max_header_bytes too small", listenerAttr("max_header_bytes = 1023"),
			"3,22", "Invalid max_header_bytes: max_header_bytes must be from 1KiB to 16MiB; got 1023"},
		{"max_header_bytes too large", listenerAttr(`max_header_bytes = "17MiB"`),
			"3,22", `max_header_bytes must be from 1KiB to 16MiB; got "17MiB"`},
		{"max_header_bytes decimal unit", listenerAttr(`max_header_bytes = "64kB"`),
			"3,22", `Invalid max_header_bytes: max_header_bytes must be a whole number of bytes or a string such as "64KiB", "10MiB" or "1GiB"; got "64kB"`},
		{"max_header_bytes on tcp", tcpListenerAttr("max_header_bytes = 4096"),
			"5,3", "Unexpected max_header_bytes"},
		{"max_body_bytes negative", routeAttr("max_body_bytes = -1"),
			"5,22", `Invalid max_body_bytes: max_body_bytes must be a whole number of bytes or a string such as "64KiB", "10MiB" or "1GiB"; got -1`},
		{"max_body_bytes negative string", routeAttr(`max_body_bytes = "-1"`),
			"5,22", `got "-1"`},
		{"max_body_bytes fraction", routeAttr("max_body_bytes = 1.5"),
			"5,22", "must be a whole number of bytes"},
		{"max_body_bytes decimal unit", routeAttr(`max_body_bytes = "10MB"`),
			"5,22", `must be a whole number of bytes or a string such as "64KiB", "10MiB" or "1GiB"; got "10MB"`},
		{"max_body_bytes lower-case unit", routeAttr(`max_body_bytes = "10mib"`),
			"5,22", `got "10mib"`},
		{"max_body_bytes trailing space", routeAttr(`max_body_bytes = "10 "`),
			"5,22", `got "10 "`},
		{"max_body_bytes unit alone", routeAttr(`max_body_bytes = "MiB"`),
			"5,22", `got "MiB"`},
		{"max_body_bytes overflow", routeAttr(`max_body_bytes = "8589934592GiB"`),
			"5,22", `Invalid max_body_bytes: max_body_bytes must be from 0 to 9223372036854775807; got "8589934592GiB"`},
		{"max_body_bytes huge number", routeAttr("max_body_bytes = 1e30"),
			"5,22", "must be from 0 to 9223372036854775807; got a number of about 10^30"},
		{"max_body_bytes bool", routeAttr("max_body_bytes = true"),
			"5,22", "must be a whole number of bytes or a string such as \"64KiB\", \"10MiB\" or \"1GiB\"; got bool true"},
		{"max_body_bytes null", routeAttr("max_body_bytes = null"),
			"5,22", "Invalid max_body_bytes: max_body_bytes must not be null; got null"},

		// The tls block of a service.
		{"service tls missing ca_file", serviceBlock("tls", "ca_file = "+q(f.missing)),
			"3,15", "Invalid ca_file: ca_file must name a usable PEM file (no such file or directory); got " + q(f.missing)},
		{"service tls ca_file not PEM", serviceBlock("tls", "ca_file = "+q(f.key)),
			"3,15", "Invalid ca_file: ca_file must name a usable PEM file (no PEM certificate in it)"},
		{"service tls empty ca_file", serviceBlock("tls", `ca_file = ""`),
			"3,15", `Invalid ca_file: ca_file must not be empty; got ""`},
		{"service tls cert_file without key_file", serviceBlock("tls", "cert_file = "+q(f.cert)),
			"3,17", "Invalid cert_file: cert_file needs a key_file with the certificate's private key; got " + q(f.cert)},
		{"service tls key_file without cert_file", serviceBlock("tls", "key_file = "+q(f.key)),
			"3,16", "Invalid key_file: key_file needs a cert_file with the client certificate; got " + q(f.key)},
		{"service tls mismatched pair", serviceBlock("tls", "cert_file = "+q(f.cert)+"\n    key_file = "+q(f.other)),
			"3,17", "Invalid cert_file: cert_file and key_file " + q(f.other) + " must form a key pair"},
		{"service tls missing key_file", serviceBlock("tls", "cert_file = "+q(f.cert)+"\n    key_file = "+q(f.missing)),
			"4,16", "Invalid key_file: key_file must name a usable PEM file (no such file or directory)"},
		{"service tls bad server_name", serviceBlock("tls", `server_name = "a b"`),
			"3,19", `Invalid server_name: server_name must be a host name or an IP address; got "a b"`},
		{"service tls insecure_skip_verify not a bool", serviceBlock("tls", `insecure_skip_verify = 1`),
			"3,28", "Invalid insecure_skip_verify: insecure_skip_verify must be true or false; got number 1"},
		{"service tls unknown attribute", serviceBlock("tls", `min_version = "1.3"`),
			"3,5", "Unsupported argument"},
		{"two service tls blocks", "service \"web\" {\n  tls {}\n  tls {}\n}\n" + okListener,
			"3,3", "Duplicate tls block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(nil)})
			have := FormatDiagnostics(diags)
			if len(have) != 1 {
				t.Fatalf("want exactly 1 error, have %d:\n%s\nsource:\n%s", len(have), strings.Join(have, "\n"), tc.src)
			}
			prefix := "test.hcl:" + tc.wantAt + ": "
			if !strings.HasPrefix(have[0], prefix) || !strings.Contains(have[0], tc.want) {
				t.Errorf("want %q containing %q, have\n%s\nsource:\n%s", prefix, tc.want, have[0], tc.src)
			}
			if cfg != nil {
				t.Errorf("want nil config with errors")
			}
		})
	}
}

// TestCertificateFilesReadAtEveryParse shows that nothing about a
// certificate's content is cached: a pair that stops matching fails the
// next Parse of the same file, and the Config of a good pair does not
// change when its content does (the runtime reads the files again).
func TestCertificateFilesReadAtEveryParse(t *testing.T) {
	f := writePEMFiles(t)
	src := []byte(tlsListener(nil, certBlock(f.cert, f.key)))
	first, diags := Parse("test.hcl", src, Options{Getenv: env(nil)})
	if diags.HasErrors() {
		t.Fatal(FormatDiagnostics(diags))
	}
	other, err := os.ReadFile(f.other)
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(f.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.key, other, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, diags := Parse("test.hcl", src, Options{Getenv: env(nil)}); !diags.HasErrors() {
		t.Error("a mismatched pair passed after the key file changed")
	}
	if err := os.WriteFile(f.key, key, 0o600); err != nil {
		t.Fatal(err)
	}
	again, diags := Parse("test.hcl", src, Options{Getenv: env(nil)})
	if diags.HasErrors() {
		t.Fatal(FormatDiagnostics(diags))
	}
	if !reflect.DeepEqual(first.Listeners, again.Listeners) {
		t.Error("the same file gave different listeners")
	}
}
