package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// parseWithin parses src and fails the test if that takes longer than a
// bound generous enough for a slow machine under -race: it catches hangs,
// not slowness.
func parseWithin(t *testing.T, src string) []string {
	t.Helper()
	done := make(chan []string, 1)
	go func() {
		cfg, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
		if cfg != nil {
			t.Errorf("want nil config, have %s", dump(cfg))
		}
		done <- FormatDiagnostics(diags)
	}()
	select {
	case have := <-done:
		return have
	case <-time.After(8 * time.Second):
		t.Fatal("Parse did not return within 8s")
		return nil
	}
}

func TestHostileInputRefused(t *testing.T) {
	// Each of these overflowed the stack or ran for seconds at 100,000;
	// 20,000 keeps the test quick under -race.
	const n = 20_000
	attempts := func(value string) string { return serviceBlock("retry", "attempts = "+value) }
	for _, tc := range []struct {
		name   string
		src    string
		wantAt string // "LINE,COL"
		want   string
	}{
		{"parentheses", "a = " + strings.Repeat("(", 100_000) + "1" + strings.Repeat(")", 100_000), "1,105", "Nesting too deep"},
		{"blocks", strings.Repeat("a {\n", n), "101,3", "Nesting too deep"},
		{"tuples", "a = " + strings.Repeat("[", n), "1,105", "Nesting too deep"},
		{"objects", "a = " + strings.Repeat("{a = ", n), "1,505", "Nesting too deep"},
		{"interpolations", "a = " + strings.Repeat(`"${`, n), "1,306", "Nesting too deep"},
		{"interpolations in a heredoc", "a = <<EOT\n" + strings.Repeat("${<<EOT\n", n), "102,1", "Nesting too deep"},
		{"if directives", `a = "` + strings.Repeat("%{if true}x", n), "1,1106", "Nesting too deep"},
		{"unary minus", "a = " + strings.Repeat("-", n) + "1", "1,105", "Nesting too deep"},
		{"not", "a = " + strings.Repeat("!", n) + "true", "1,105", "Nesting too deep"},
		{"sum", "a = 1" + strings.Repeat("+1", n), "1,206", "Nesting too deep"},
		{"sum over lines in parentheses", "a = (1" + strings.Repeat("\n+1", n) + ")", "101,1", "Nesting too deep"},
		{"conditionals", "a = " + strings.Repeat("true ? 1 : ", n) + "1", "1,1110", "Nesting too deep"},
		{"indexes", "a = [1]" + strings.Repeat("[x]", n), "1,305", "Nesting too deep"},
		{"long integer", attempts(strings.Repeat("9", 100_000)), "3,16",
			"Number too long: a number may have at most 1000 characters; this one has 100000"},
		{"huge exponent", attempts("1e400000"), "3,16",
			"Invalid attempts: attempts must be a whole number from 1 to 10; got a number of about 10^400000"},
		{"tiny exponent", attempts("1e-400000"), "3,16",
			"attempts must be a whole number from 1 to 10; got a number of about 10^-400000"},
		{"huge number for a string", "service \"web\" {\n  tag = 1e400000\n}\n" + okListener, "2,9",
			"Invalid tag: tag must be a string; got number a number of about 10^400000"},
		{"huge duration", serviceBlock("retry", `per_try_timeout = "`+strings.Repeat("9", n)+`h"`), "3,23",
			`per_try_timeout must be at most 2562047h47m16.854775807s; got "9999999999999999999999999999999999999999999999999999999999999999"...`},
		{"long string", "service \"web\" {\n  strategy = \"" + strings.Repeat("x", n) + "\"\n}\n" + okListener, "2,14",
			`; got "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"...`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			have := parseWithin(t, tc.src)
			if len(have) == 0 {
				t.Fatal("want an error, have none")
			}
			prefix := "test.hcl:" + tc.wantAt + ": "
			if !strings.HasPrefix(have[0], prefix) || !strings.Contains(have[0], tc.want) {
				t.Errorf("want %q containing %q, have\n%.300s", prefix, tc.want, have[0])
			}
			if len(have[0]) > 300 {
				t.Errorf("want a short message, have %d bytes", len(have[0]))
			}
		})
	}
}

func TestNestingLimit(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  func(depth int) string
	}{
		{"parentheses", func(d int) string { return "a = " + strings.Repeat("(", d) + "1" + strings.Repeat(")", d) + "\n" }},
		{"operators", func(d int) string { return "a = 1" + strings.Repeat("+1", d) + "\n" }},
		{"blocks", func(d int) string { return strings.Repeat("a {\n", d) + strings.Repeat("}\n", d) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diags := prescan("test.hcl", []byte(tc.src(MaxNesting))); len(diags) != 0 {
				t.Errorf("depth %d: want no diagnostics, have %v", MaxNesting, FormatDiagnostics(diags))
			}
			if diags := prescan("test.hcl", []byte(tc.src(MaxNesting+1))); len(diags) != 1 {
				t.Errorf("depth %d: want one diagnostic, have %v", MaxNesting+1, FormatDiagnostics(diags))
			}
		})
	}
}

// TestNestingCountsOnlyNesting checks that operators, brackets and
// comments that do not nest are not counted: each line or element starts
// afresh.
func TestNestingCountsOnlyNesting(t *testing.T) {
	many := func(s string) string { return strings.Repeat(s, 3*MaxNesting) }
	for _, tc := range []struct {
		name string
		src  string
	}{
		{"one operator per line", many("a = -1 + 2\n")},
		{"one operator per element", "a = [" + many("-1, ") + "]\n"},
		{"sibling parentheses", "a = [" + many("((1)), ") + "]\n"},
		{"brackets in strings and comments", `a = "` + many("((") + `"` + "\n# " + many("[") + "\n/* " + many("{") + " */\n"},
		{"operators in heredocs", "a = <<EOT\n" + many("!-+?") + "\nEOT\n"},
		{"operators in comments", many("a = 1 # -!-!\n")},
		{"closed if directives", `a = "` + many("%{if true}x%{endif}") + `"` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diags := prescan("test.hcl", []byte(tc.src)); len(diags) != 0 {
				t.Errorf("want no diagnostics, have %v", FormatDiagnostics(diags))
			}
		})
	}
}

func TestFullExampleIsShallow(t *testing.T) {
	if diags := prescan("test.hcl", []byte(fullExample)); len(diags) != 0 {
		t.Errorf("want no diagnostics, have %v", FormatDiagnostics(diags))
	}
}

func TestFileSizeLimit(t *testing.T) {
	if diags := checkSize("test.hcl", MaxFileSize); diags != nil {
		t.Errorf("%d bytes: want no diagnostics, have %v", MaxFileSize, FormatDiagnostics(diags))
	}
	want := "test.hcl: Configuration file too large: the file has more than 4194304 bytes (4 MiB), the most allowed"
	src := okListener + strings.Repeat(" ", MaxFileSize+1-len(okListener))
	if have := parseWithin(t, src); len(have) != 1 || have[0] != want {
		t.Errorf("want %q, have %q", want, have)
	}

	// Load reads no more than the limit and one byte.
	path := filepath.Join(t.TempDir(), "big.hcl")
	if err := os.WriteFile(path, []byte(src+strings.Repeat(" ", MaxFileSize)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, diags := Load(path, Options{Getenv: env(nil)})
	want = path + ": Configuration file too large: the file has more than 4194304 bytes (4 MiB), the most allowed"
	if have := FormatDiagnostics(diags); cfg != nil || len(have) != 1 || have[0] != want {
		t.Errorf("Load: want %q, have %q", want, have)
	}
}
