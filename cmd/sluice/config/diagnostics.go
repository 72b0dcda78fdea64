package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// FormatDiagnostics renders each error diagnostic (warnings are skipped) as
// one line, "FILE:LINE,COL: summary: detail", sorted by file name, line and
// column; diagnostics at the same position keep their order. ": detail" is
// present only when the detail is non-empty and differs from the summary,
// and line breaks inside a detail become spaces. A diagnostic without a
// Subject renders as "FILE: summary: detail", with FILE taken from its
// Context, or as "summary: detail" without one; it sorts before the
// positioned lines of its file.
func FormatDiagnostics(diags hcl.Diagnostics) []string {
	errs := make([]*hcl.Diagnostic, 0, len(diags))
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			errs = append(errs, d)
		}
	}
	slices.SortStableFunc(errs, func(a, b *hcl.Diagnostic) int {
		fa, la, ca := position(a)
		fb, lb, cb := position(b)
		return cmp.Or(cmp.Compare(fa, fb), cmp.Compare(la, lb), cmp.Compare(ca, cb))
	})
	lines := make([]string, len(errs))
	for i, d := range errs {
		var b strings.Builder
		switch file, line, col := position(d); {
		case d.Subject != nil:
			fmt.Fprintf(&b, "%s:%d,%d: ", file, line, col)
		case file != "":
			fmt.Fprintf(&b, "%s: ", file)
		}
		b.WriteString(oneLine(d.Summary))
		if detail := oneLine(d.Detail); detail != "" && detail != oneLine(d.Summary) {
			b.WriteString(": ")
			b.WriteString(detail)
		}
		lines[i] = b.String()
	}
	return lines
}

// position returns where d sorts: its Subject's start, else its Context's
// file name at line 0.
func position(d *hcl.Diagnostic) (file string, line, col int) {
	switch {
	case d.Subject != nil:
		return d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column
	case d.Context != nil:
		return d.Context.Filename, 0, 0
	}
	return "", 0, 0
}

// oneLine collapses every run of white space in s to one space.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
