package config

import (
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// FuzzParse checks Parse's contract on arbitrary input: it never panics,
// returns a Config exactly when there is no error, and places every error
// either inside the file (a Subject within src) or on the file as a whole
// (a Context naming it).
func FuzzParse(f *testing.F) {
	for _, src := range []string{
		fullExample,
		okListener,
		"",
		"service \"web\" {\n  sticky {}\n  health_check {}\n  passive {}\n  retry {}\n}\n" + okListener,
		serviceBlock("sticky", "mode   = \"header\"\n    header = \"X-Session\""),
		serviceBlock("health_check", "type = \"tcp\""),
		serviceBlock("passive", "ejection_time     = \"60s\"\n    max_ejection_time = \"30s\""),
		listenerAttr(`trusted_proxies = ["10.0.0.0/8", "10.0.0.1/8", 1, null, "fe80::1%eth0"]`),
		tcpListenerAttr(`request_header_timeout = "5s"`),
		tlsListener([]string{`hsts_max_age = "1h"`, `max_header_bytes = "64KiB"`}, certBlock("/nonexistent/cert.pem", "/dev/null")),
		tlsListener([]string{"redirect_https = true", "https_port = 8443"}, nil, "max_connections = 10"),
		tcpTLSListener(nil, []string{`mode = "passthrough"`}, `route "*.example.com" {`, `  service = "db"`, `}`, `route "*" {`, `  service = "x"`, `}`),
		routeAttr(`max_body_bytes = "10 MiB"`),
		serviceBlock("tls", "ca_file = \"/nonexistent\"\n    cert_file = \"x\""),
		// Broken ones.
		"listener \"ok\" {\n  address = \"127.0.0.1:8080\n}\n",
		"listener \"ok\" {\n  address =\n}\n",
		"listener {\n",
		"service \"web\" { tag = \"a\", strategy = \"p2c\" }\n",
		"a = " + strings.Repeat("(", 2*MaxNesting) + "1",
		"a = \"${\"${\"${x}\"}\"}\"\n",
		"a = <<EOT\n%{ if true }${1 + 2}%{ endif }\nEOT\n",
		serviceBlock("retry", "attempts = 1e400000"),
		serviceBlock("retry", "attempts = 1e999999999 * 1e999999999 % 2"),
		serviceBlock("retry", "attempts = 1/0"),
		serviceBlock("retry", `per_try_timeout = "3000000h"`),
		"\xff\xfe\x00",
	} {
		f.Add(src)
	}
	f.Fuzz(func(t *testing.T, src string) {
		cfg, diags := Parse("fuzz.hcl", []byte(src), Options{Getenv: env(nil)})
		if (cfg == nil) != diags.HasErrors() {
			t.Fatalf("config %v with errors %v", cfg != nil, FormatDiagnostics(diags))
		}
		for _, d := range diags {
			if d.Severity != hcl.DiagError {
				continue
			}
			switch {
			case d.Subject != nil:
				if problem := outside(d.Subject, len(src)); problem != "" {
					t.Fatalf("diagnostic %q: Subject %s %s", d.Summary, d.Subject, problem)
				}
			case d.Context == nil || d.Context.Filename != "fuzz.hcl":
				t.Fatalf("diagnostic %q has neither a Subject nor a Context naming the file", d.Summary)
			}
		}
	})
}

// outside describes how r is not a range of a file of size bytes named
// fuzz.hcl, or returns "".
func outside(r *hcl.Range, size int) string {
	switch {
	case r.Filename != "fuzz.hcl":
		return "names another file"
	case r.Start.Byte < 0 || r.Start.Byte > r.End.Byte || r.End.Byte > size:
		return "has bytes outside the file"
	case r.Start.Line < 1 || r.Start.Column < 1 || r.End.Line < r.Start.Line:
		return "has impossible lines or columns"
	}
	return ""
}
