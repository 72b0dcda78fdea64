package config

import (
	"fmt"
	"math"
	"math/big"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	if !runChecks(d, a, s, quote(s), checks) {
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
		d.invalid(a, fmt.Sprintf("must be a whole number from %d to %d", lo, hi), formatNumber(bf))
		return false
	}
	*dst = int(n)
	return true
}

// size decodes a number of bytes in lo..hi, written as a whole number or
// as a string (see parseSize).
func (d *decoder) size(as hcl.Attributes, name string, dst *int64, lo, hi int64) bool {
	a := as[name]
	if a == nil {
		return true
	}
	v, diags := a.Expr.Value(nil)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() || !v.IsWhollyKnown() {
		return false
	}
	const syntax = `must be a whole number of bytes or a string such as "64KiB", "10MiB" or "1GiB"`
	var (
		n           int64
		got         string
		syntaxOK    = true
		inRange     = true
		rangeDetail = fmt.Sprintf("must be from %s to %s", formatSize(lo), formatSize(hi))
	)
	switch {
	case v.IsNull():
		d.invalid(a, "must not be null", "null")
		return false
	case v.Type().Equals(cty.Number):
		bf := v.AsBigFloat()
		got = formatNumber(bf)
		var acc big.Accuracy
		n, acc = bf.Int64()
		syntaxOK = bf.IsInt() && bf.Sign() >= 0
		inRange = acc == big.Exact
	case v.Type().Equals(cty.String):
		s := v.AsString()
		got = quote(s)
		n, syntaxOK, inRange = parseSize(s)
	default:
		d.invalid(a, syntax, describe(v))
		return false
	}
	switch {
	case !syntaxOK:
		d.invalid(a, syntax, got)
		return false
	case !inRange || n < lo || n > hi:
		d.invalid(a, rangeDetail, got)
		return false
	}
	*dst = n
	return true
}

// Size units, binary.
const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

var sizeUnits = []struct {
	name string
	mult int64
}{{"GiB", gib}, {"MiB", mib}, {"KiB", kib}}

// parseSize parses a byte count: decimal digits, optionally followed by
// white space and one of the units "KiB", "MiB" and "GiB" (1024, 1024^2,
// 1024^3 bytes), such as "65536", "64KiB" or "10 MiB". syntaxOK is false
// for anything else; fits is false for a value beyond math.MaxInt64.
func parseSize(s string) (n int64, syntaxOK, fits bool) {
	digits := strings.TrimLeft(s, "0123456789")
	num, unit := s[:len(s)-len(digits)], strings.TrimLeft(digits, " ")
	if num == "" {
		return 0, false, true
	}
	mult := int64(1)
	if unit != "" {
		mult = 0
		for _, u := range sizeUnits {
			if unit == u.name {
				mult = u.mult
			}
		}
		if mult == 0 {
			return 0, false, true
		}
	} else if digits != "" {
		return 0, false, true // trailing spaces only
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v > math.MaxInt64/mult {
		return 0, true, false
	}
	return v * mult, true, true
}

// formatSize renders n bytes for a diagnostic: with the largest unit that
// divides it ("16MiB"), else as a plain number.
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// duration decodes a Go duration string ("1m30s"), which is never negative.
func (d *decoder) duration(as hcl.Attributes, name string, dst *time.Duration, checks ...check[time.Duration]) bool {
	a, v, ok := d.eval(as, name, cty.String, `a duration string such as "2s"`)
	if !ok {
		return a == nil
	}
	s := v.AsString()
	got := quote(s)
	dur, err := time.ParseDuration(s)
	switch {
	case err != nil && durationSyntax(s):
		d.invalid(a, "must be at most "+time.Duration(math.MaxInt64).String(), got)
		return false
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

// prefixes decodes a list of IP prefixes written as CIDR strings
// ("10.0.0.0/8") or bare IP addresses (a /32 or /128 prefix). Each element
// is checked on its own and reported at its own range; the list is stored
// only when every element is good. An empty list stores nil.
func (d *decoder) prefixes(as hcl.Attributes, name string, dst *[]netip.Prefix) bool {
	var ss []string
	isPrefix := func(s string) string { _, problem := parsePrefix(s); return problem }
	if !d.listOfStrings(as, name, `must be a list of CIDR strings such as ["10.0.0.0/8", "127.0.0.1"]`, &ss, isPrefix) {
		return false
	}
	var ps []netip.Prefix
	for _, s := range ss {
		p, _ := parsePrefix(s)
		ps = append(ps, p)
	}
	*dst = ps
	return true
}

// strList decodes a list of strings, each checked on its own and reported
// at its own range; the list is stored only when every element is good.
// An empty list stores nil.
func (d *decoder) strList(as hcl.Attributes, name string, dst *[]string, checks ...check[string]) bool {
	return d.listOfStrings(as, name, `must be a list of strings such as ["a", "b"]`, dst, checks...)
}

// listOfStrings is strList with the problem reported when the value is not a
// list written out (wantList).
func (d *decoder) listOfStrings(as hcl.Attributes, name, wantList string, dst *[]string, checks ...check[string]) bool {
	a := as[name]
	if a == nil {
		return true
	}
	exprs, listDiags := hcl.ExprList(a.Expr)
	if listDiags.HasErrors() {
		v, diags := a.Expr.Value(nil)
		d.diags = append(d.diags, diags...)
		if !diags.HasErrors() {
			got := "null"
			if !v.IsNull() {
				got = describe(v)
			}
			d.invalid(a, wantList, got)
		}
		return false
	}
	var out []string
	ok := true
	for i, e := range exprs {
		v, diags := e.Value(nil)
		d.diags = append(d.diags, diags...)
		problem, got := "", ""
		switch {
		case diags.HasErrors() || !v.IsWhollyKnown():
			ok = false
			continue
		case v.IsNull():
			problem, got = "must be a string", "null"
		case !v.Type().Equals(cty.String):
			problem, got = "must be a string", describe(v)
		default:
			s := v.AsString()
			for _, c := range checks {
				if problem = c(s); problem != "" {
					break
				}
			}
			if problem == "" {
				out = append(out, s)
				continue
			}
			got = quote(s)
		}
		ok = false
		d.errorf(e.Range(), "Invalid "+name, "%s element %d %s; got %s", name, i+1, problem, got)
	}
	if ok {
		*dst = out
	}
	return ok
}

// parsePrefix parses "ADDR/BITS" or a bare address, returning the problem
// otherwise. It refuses zones, IPv4-mapped IPv6 addresses (clients show up
// as plain IPv4) and bits set after the prefix length, which usually mean a
// typing mistake that would trust more addresses than meant.
func parsePrefix(s string) (netip.Prefix, string) {
	const syntax = `must be an IP address or a CIDR prefix such as "10.0.0.0/8"`
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, syntax
		}
	} else {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return p, syntax
		}
		if addr.Zone() != "" {
			return p, "must not have a zone"
		}
		p = netip.PrefixFrom(addr, addr.BitLen())
	}
	if p.Addr().Is4In6() {
		return p, "must be written as IPv4, not as an IPv4-mapped IPv6 address"
	}
	if m := p.Masked(); m != p {
		return p, fmt.Sprintf("must have no bits set after the prefix length (%s)", m)
	}
	return p, ""
}

// describe renders a value of the wrong type for a diagnostic.
func describe(v cty.Value) string {
	switch ty := v.Type(); {
	case ty == cty.String:
		return "string " + quote(v.AsString())
	case ty == cty.Number:
		return "number " + formatNumber(v.AsBigFloat())
	case ty == cty.Bool:
		return fmt.Sprintf("bool %t", v.True())
	default:
		return ty.FriendlyName()
	}
}

// maxQuoted is the most bytes of a string value that a diagnostic repeats.
const maxQuoted = 64

// quote renders s for a diagnostic, Go-quoted and cut after maxQuoted bytes
// (at a character boundary) with "..." after the closing quote.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

// formatNumber renders f for a diagnostic in a few characters and little
// time: whole numbers up to 2^64 and other values from 2^-64 to 2^64 in
// full, anything further from 0 or closer to it by its decimal magnitude
// ("a number of about 10^400000"), since writing it out could take
// seconds and megabytes.
func formatNumber(f *big.Float) string {
	if f.IsInf() || f.Sign() == 0 {
		return f.Text('g', -1)
	}
	exp := f.MantExp(nil) // |f| is in [2^(exp-1), 2^exp)
	if -64 <= exp && exp <= 64 {
		if s := f.Text('f', -1); len(s) <= 40 {
			return s
		}
		return f.Text('g', 10)
	}
	sign := ""
	if f.Sign() < 0 {
		sign = "-"
	}
	return fmt.Sprintf("a number of about %s10^%d", sign, int(math.Round((float64(exp)-0.5)*math.Log10(2))))
}

// durationSyntax reports whether s has the form of a Go duration, so that
// time.ParseDuration failing on it means it is too large.
func durationSyntax(s string) bool {
	s = strings.TrimPrefix(s, "+")
	if s == "" {
		return false
	}
	for s != "" {
		n := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
		if n <= 0 || strings.Count(s[:n], ".") > 1 || s[:n] == "." {
			return false
		}
		s = s[n:]
		unit := len(s)
		if i := strings.IndexAny(s, "0123456789."); i >= 0 {
			unit = i
		}
		switch s[:unit] {
		case "ns", "us", "µs", "μs", "ms", "s", "m", "h":
		default:
			return false
		}
		s = s[unit:]
	}
	return true
}

// oneOf accepts exactly the allowed strings.
// enum decodes a string attribute whose value must be one of allowed,
// into a string type of its own (a protocol, a mode).
func enum[T ~string](d *decoder, as hcl.Attributes, name string, dst *T, allowed []T) bool {
	names := make([]string, len(allowed))
	for i, v := range allowed {
		names[i] = string(v)
	}
	s := string(*dst)
	if !d.str(as, name, &s, oneOf(names...)) {
		return false
	}
	*dst = T(s)
	return true
}

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
