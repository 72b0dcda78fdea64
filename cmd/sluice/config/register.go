package config

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Defaults of the register block.
const (
	defaultRegisterName  = "sluice"
	defaultCheckInterval = 10 * time.Second
	defaultShutdownDelay = 5 * time.Second
	// minCheckInterval is Consul's own floor for a check interval: the
	// agent raises a shorter one to it.
	minCheckInterval = time.Second
)

// Register is sluice's own registration with the local Consul agent, so
// that Consul-driven clients and DNS find it. Written `register { }`; every
// field has a default.
type Register struct {
	// Name is the Consul service name. Default "sluice"; never empty.
	Name string
	// ID is the Consul service ID. Default Name + "-" + the host name +
	// "-" + Port, which is stable across restarts on one host; never
	// empty.
	ID string
	// Tags are the service's tags. Default none (nil).
	Tags []string
	// Meta is the service's meta data. Keys are 1 to 128 letters, digits,
	// '_' or '-', not starting with "consul-"; values at most 512 bytes;
	// at most 64 pairs. Default none (nil).
	Meta map[string]string
	// Listener names the listener whose address is registered. Default the
	// first listener of the file.
	Listener string
	// Address is the registered address: the listener's host, or "" when
	// it is a wildcard (0.0.0.0 or ::), which makes Consul use the node's
	// address. Derived; not written in the file.
	Address string
	// Port is the listener's port. Derived; not written in the file.
	Port int
	// CheckInterval is the interval of the HTTP check Consul runs on the
	// admin API's /healthz. Default 10s; at least 1s.
	CheckInterval time.Duration
	// ShutdownDelay is how long sluice keeps serving after it deregisters
	// on SIGINT or SIGTERM, before it stops accepting. Default 5s; 0 means
	// no delay.
	ShutdownDelay time.Duration
}

var registerSchema = &hcl.BodySchema{
	Attributes: attrs("name", "id", "tags", "meta", "listener", "check_interval", "shutdown_delay"),
}

// metaKey is the syntax Consul accepts for a meta key.
var metaKey = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// register decodes the register block, if any; listeners are the decoded
// listeners of the file.
func (d *decoder) register(b *hcl.Block, listeners []Listener) *Register {
	if b == nil {
		return nil
	}
	r := &Register{Name: defaultRegisterName, CheckInterval: defaultCheckInterval, ShutdownDelay: defaultShutdownDelay}
	as := d.content(b.Body, registerSchema).Attributes
	nameOK := d.str(as, "name", &r.Name, nonEmpty)
	idOK := d.str(as, "id", &r.ID, nonEmpty)
	d.stringList(as, "tags", &r.Tags)
	d.stringMap(as, "meta", &r.Meta, metaPair)
	d.duration(as, "check_interval", &r.CheckInterval, atLeast(minCheckInterval))
	d.duration(as, "shutdown_delay", &r.ShutdownDelay)

	var l *Listener
	if len(listeners) > 0 {
		l = &listeners[0]
		r.Listener = l.Name
	}
	if a := as["listener"]; a != nil {
		if !d.str(as, "listener", &r.Listener, nonEmpty) {
			return r
		}
		i := slices.IndexFunc(listeners, func(l Listener) bool { return l.Name == r.Listener })
		if i < 0 {
			d.errorf(a.Expr.Range(), "Unknown listener",
				"listener %q is not defined in this file", r.Listener)
			return r
		}
		l = &listeners[i]
	}
	if l == nil || hostPort(l.Address) != "" {
		return r // no listener, or its address is reported already
	}
	host, port, _ := net.SplitHostPort(l.Address)
	r.Port, _ = strconv.Atoi(port)
	if host != "0.0.0.0" && host != "::" {
		r.Address = host
	}
	if as["id"] == nil && nameOK && idOK {
		hostname, err := d.opts.Hostname()
		if err != nil || hostname == "" {
			d.errorf(b.DefRange, "Missing id",
				"the default id needs the host name, which is unknown (%v); set id", err)
			return r
		}
		r.ID = fmt.Sprintf("%s-%s-%d", r.Name, hostname, r.Port)
	}
	return r
}

// metaPair checks one meta pair as Consul does.
func metaPair(k, v string) string {
	switch {
	case !metaKey.MatchString(k):
		return "keys must be 1 to 128 letters, digits, '_' or '-'"
	case len(k) >= 7 && k[:7] == "consul-":
		return `keys must not start with "consul-" (reserved)`
	case len(v) > 512:
		return "values must be at most 512 bytes"
	}
	return ""
}

// stringList decodes a list of strings; an empty list stores nil.
func (d *decoder) stringList(as hcl.Attributes, name string, dst *[]string) bool {
	a := as[name]
	if a == nil {
		return true
	}
	v, diags := a.Expr.Value(nil)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() || !v.IsWhollyKnown() {
		return false
	}
	const want = `must be a list of strings such as ["a", "b"]`
	if v.IsNull() || !(v.Type().IsListType() || v.Type().IsTupleType()) {
		d.invalid(a, want, describeOrNull(v))
		return false
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() || !e.Type().Equals(cty.String) {
			d.invalid(a, want, "an element "+describeOrNull(e))
			return false
		}
		out = append(out, e.AsString())
	}
	*dst = out
	return true
}

// stringMap decodes a map of strings such as { a = "b" }, checking every
// pair with check; an empty map stores nil.
func (d *decoder) stringMap(as hcl.Attributes, name string, dst *map[string]string, check func(k, v string) string) bool {
	a := as[name]
	if a == nil {
		return true
	}
	v, diags := a.Expr.Value(nil)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() || !v.IsWhollyKnown() {
		return false
	}
	const want = `must be a map of strings such as { key = "value" }`
	if v.IsNull() || !(v.Type().IsMapType() || v.Type().IsObjectType()) {
		d.invalid(a, want, describeOrNull(v))
		return false
	}
	if n := v.LengthInt(); n > 64 {
		d.invalid(a, "must have at most 64 pairs", strconv.Itoa(n)+" pairs")
		return false
	}
	out := map[string]string{}
	for it := v.ElementIterator(); it.Next(); {
		k, e := it.Element()
		key := k.AsString()
		if e.IsNull() || !e.Type().Equals(cty.String) {
			d.invalid(a, want, fmt.Sprintf("%s = %s", quote(key), describeOrNull(e)))
			return false
		}
		if problem := check(key, e.AsString()); problem != "" {
			d.invalid(a, problem, fmt.Sprintf("%s = %s", quote(key), quote(e.AsString())))
			return false
		}
		out[key] = e.AsString()
	}
	if len(out) > 0 {
		*dst = out
	}
	return true
}

// describeOrNull is describe, with "null" for a null value.
func describeOrNull(v cty.Value) string {
	if v.IsNull() {
		return "null"
	}
	return describe(v)
}
