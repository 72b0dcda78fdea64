package main

import (
	"io"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
		err  string // in stderr
	}{
		{nil, 2, "usage"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"version"}, 0, ""},
		{[]string{"validate", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"validate", "my.hcl"}, 2, `unexpected argument "my.hcl"`},
		{[]string{"run", "-config", "x.hcl", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"validate", "-config", "/nonexistent/sluice.hcl"}, 1, "/nonexistent/sluice.hcl"},
	} {
		var stderr strings.Builder
		if have := run(tc.args, io.Discard, &stderr); have != tc.want || !strings.Contains(strings.ToLower(stderr.String()), strings.ToLower(tc.err)) {
			t.Errorf("%q: want exit %d with %q, have %d with %q", tc.args, tc.want, tc.err, have, stderr.String())
		}
	}
}
