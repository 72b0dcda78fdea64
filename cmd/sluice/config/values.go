package config

import (
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// The attribute helpers below share one contract: they read as[name],
// evaluate it with no variables or functions, require a value of the
// attribute's type (no implicit conversion, and null is not allowed), run
// the checks, and store the value in *dst. They return true when the
// attribute is absent (leaving the default in *dst) or was stored, and
// false when they recorded a diagnostic. A value problem is reported at the
// value's range as "Invalid NAME" with the detail "NAME PROBLEM; got VALUE".

// A check returns "" for a good value, else the problem, phrased to follow
// the attribute name ("must not be empty").
type check[T any] func(T) string

// eval evaluates as[name]. ok is false when the attribute is absent or a
// diagnostic was recorded.
func (d *decoder) eval(as hcl.Attributes, name string, want cty.Type, wantName string) (a *hcl.Attribute, v cty.Value, ok bool) {
	a = as[name]
	if a == nil {
		return nil, cty.NilVal, false
	}
	v, diags := a.Expr.Value(nil)
	d.diags = append(d.diags, diags...)
	switch {
	case diags.HasErrors() || !v.IsWhollyKnown():
		return a, v, false
	case v.IsNull():
		d.invalid(a, "must not be null", "null")
		return a, v, false
	case !v.Type().Equals(want):
		d.invalid(a, "must be "+wantName, describe(v))
		return a, v, false
	}
	return a, v, true
}

// invalid records the standard value diagnostic for a.
func (d *decoder) invalid(a *hcl.Attribute, problem, got string) {
	d.errorf(a.Expr.Range(), "Invalid "+a.Name, "%s %s; got %s", a.Name, problem, got)
}

// runChecks reports the first failing check; it returns true when all pass.
func runChecks[T any](d *decoder, a *hcl.Attribute, v T, got string, checks []check[T]) bool {
	for _, c := range checks {
		if problem := c(v); problem != "" {
			d.invalid(a, problem, got)
			return false
		}
	}
	return true
}

// str decodes a string attribute.
func (d *decoder) str(as hcl.Attributes, name string, dst *string, checks ...check[string]) bool {
	a, v, ok := d.eval(as, name, cty.String, "a string")
	if !ok {
		return a == nil
	}
	s := v.AsString()
	if !runChecks(d, a, s, strconv.Quote(s), checks) {
		return false
	}
	*dst = s
	return true
}

// boolean decodes a bool attribute.
func (d *decoder) boolean(as hcl.Attributes, name string, dst *bool) bool {
	a, v, ok := d.eval(as, name, cty.Bool, "true or false")
	if !ok {
		return a == nil
	}
	*dst = v.True()
	return true
}

// integer decodes a whole-number attribute in lo..hi.
func (d *decoder) integer(as hcl.Attributes, name string, dst *int, lo, hi int) bool {
	a, v, ok := d.eval(as, name, cty.Number, "a number")
	if !ok {
		return a == nil
	}
	bf := v.AsBigFloat()
	n, acc := bf.Int64()
	if !bf.IsInt() || acc != big.Exact || n < int64(lo) || n > int64(hi) {
		d.invalid(a, fmt.Sprintf("must be a whole number from %d to %d", lo, hi), bf.Text('f', -1))
		return false
	}
	*dst = int(n)
	return true
}

// duration decodes a Go duration string ("1m30s"), which is never negative.
func (d *decoder) duration(as hcl.Attributes, name string, dst *time.Duration, checks ...check[time.Duration]) bool {
	a, v, ok := d.eval(as, name, cty.String, `a duration string such as "2s"`)
	if !ok {
		return a == nil
	}
	s := v.AsString()
	got := strconv.Quote(s)
	dur, err := time.ParseDuration(s)
	switch {
	case err != nil:
		d.invalid(a, `must be a duration string such as "2s"`, got)
		return false
	case dur < 0:
		d.invalid(a, "must not be negative", got)
		return false
	case !runChecks(d, a, dur, got, checks):
		return false
	}
	*dst = dur
	return true
}

// describe renders a value of the wrong type for a diagnostic.
func describe(v cty.Value) string {
	switch ty := v.Type(); {
	case ty == cty.String:
		return "string " + strconv.Quote(v.AsString())
	case ty == cty.Number:
		return "number " + v.AsBigFloat().Text('f', -1)
	case ty == cty.Bool:
		return fmt.Sprintf("bool %t", v.True())
	default:
		return ty.FriendlyName()
	}
}

// oneOf accepts exactly the allowed strings.
func oneOf(allowed ...string) check[string] {
	quoted := make([]string, len(allowed))
	for i, s := range allowed {
		quoted[i] = strconv.Quote(s)
	}
	problem := "must be one of " + strings.Join(quoted, ", ")
	return func(s string) string {
		for _, a := range allowed {
			if s == a {
				return ""
			}
		}
		return problem
	}
}

func nonEmpty(s string) string {
	if s == "" {
		return "must not be empty"
	}
	return ""
}

func absolutePath(s string) string {
	if !strings.HasPrefix(s, "/") {
		return `must start with "/"`
	}
	return ""
}

// token accepts an RFC 9110 token, the syntax of header field names and of
// RFC 6265 cookie names.
func token(s string) string {
	const problem = "must be a non-empty token of letters, digits and !#$%&'*+-.^_`|~"
	if s == "" {
		return problem
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return problem
		}
	}
	return ""
}

// emptyOr accepts "" and whatever c accepts.
func emptyOr(c check[string]) check[string] {
	return func(s string) string {
		if s == "" {
			return ""
		}
		return c(s)
	}
}

// hostPort accepts "host:port" where host is an IP address or a host name
// and port is a number from 1 to 65535.
func hostPort(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return `must be "host:port", such as "127.0.0.1:8080"`
	}
	if !validHost(host) {
		return `must have an IP address or host name before the port, such as "127.0.0.1:8080"`
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "must have a port number from 1 to 65535"
	}
	return ""
}

// validHost reports whether s is an IP address or a plausible host name.
func validHost(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// consulAddress accepts "host:port", "http://host:port" and
// "https://host:port".
func consulAddress(s string) string {
	hp := s
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		if scheme != "http" && scheme != "https" {
			return `must be "host:port", "http://host:port" or "https://host:port"`
		}
		hp = rest
	}
	return hostPort(hp)
}

// positive accepts durations greater than 0.
func positive(v time.Duration) string {
	if v <= 0 {
		return "must be greater than 0"
	}
	return ""
}

// atLeast accepts durations of min or more.
func atLeast(min time.Duration) check[time.Duration] {
	return func(v time.Duration) string {
		if v < min {
			return "must be at least " + min.String()
		}
		return ""
	}
}
