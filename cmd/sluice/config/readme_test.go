package config

import (
	"os"
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/proxy/certs/certstest"
)

// TestREADMEExamplesParse parses the configuration reference's examples
// in README.md, with the certificate files they name replaced by real
// ones.
func TestREADMEExamplesParse(t *testing.T) {
	data, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, ref, ok := strings.Cut(string(data), "\n## Configuration reference\n")
	if !ok {
		t.Fatal("README has no configuration reference")
	}
	ref, _, _ = strings.Cut(ref, "\n## ")
	dir := t.TempDir()
	cert, key := certstest.NewCA(t, "test CA").WriteLeaf(t, dir, "example.com")
	blocks := strings.Split(ref, "```hcl\n")[1:]
	if len(blocks) < 2 {
		t.Fatalf("want at least 2 hcl examples, have %d", len(blocks))
	}
	for i, b := range blocks {
		src, _, _ := strings.Cut(b, "```")
		src = strings.NewReplacer(
			"/etc/sluice/example.com.pem", cert,
			"/etc/sluice/example.com.key", key,
		).Replace(src)
		if _, diags := Parse("README.md", []byte(src), Options{Getenv: env(nil)}); diags.HasErrors() {
			t.Errorf("example %d: %s", i+1, strings.Join(FormatDiagnostics(diags), "\n"))
		}
	}
}
