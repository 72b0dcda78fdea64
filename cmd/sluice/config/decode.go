package config

import (
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/discovery"
	"github.com/sluice-lb/sluice/proxy"
	"github.com/sluice-lb/sluice/proxy/h1"
	"github.com/zclconf/go-cty/cty"
)

// Defaults that are not derived from other values.
const (
	defaultConsulAddress   = "127.0.0.1:8500"
	defaultAdminAddress    = "127.0.0.1:9901"
	defaultStrategy        = "weighted_round_robin"
	defaultMaxEjectionTime = balance.DefaultMaxEjectionTime
	defaultTagPrefix       = "sluice-route="
	defaultMaxRoutes       = 100

	// The timeouts' defaults are owned by the packages that apply them;
	// the configuration fills them in so that validate shows them.
	defaultIdleTimeout           = h1.DefaultIdleTimeout // tcp listeners too
	defaultRequestHeaderTimeout  = h1.DefaultHeaderTimeout
	defaultRequestBodyTimeout    = h1.DefaultBodyTimeout
	defaultResponseWriteTimeout  = h1.DefaultWriteTimeout
	defaultResponseHeaderTimeout = proxy.DefaultResponseHeaderTimeout
	defaultResponseBodyTimeout   = proxy.DefaultResponseBodyTimeout

	// Limits and redirects.
	defaultHTTPSPort            = proxy.DefaultHTTPSPort
	defaultMaxHeaderBytes       = h1.DefaultMaxHeaderBytes
	defaultMaxConcurrentStreams = h1.DefaultMaxConcurrentStreams
)

// Bounds of the limits.
const (
	maxMaxConnections       = math.MaxInt32
	maxDiscoverRoutes       = 10000
	maxMaxConcurrentStreams = 10000
	minMaxHeaderBytes       = 1 << 10
	maxMaxHeaderBytes       = 16 << 20
)

var (
	fileSchema = &hcl.BodySchema{
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "consul"},
			{Type: "admin"},
			{Type: "listener", LabelNames: []string{"name"}},
			{Type: "service", LabelNames: []string{"name"}},
			{Type: "service_defaults"},
			{Type: "register"},
			{Type: "connect"},
		},
	}
	consulSchema = &hcl.BodySchema{
		Attributes: attrs("address", "token", "token_file", "datacenter", "namespace", "partition", "stale"),
		Blocks:     []hcl.BlockHeaderSchema{{Type: "tls"}},
	}
	consulTLSSchema = &hcl.BodySchema{
		Attributes: attrs("ca_file", "ca_path", "cert_file", "key_file", "server_name", "insecure_skip_verify"),
	}
	adminSchema = &hcl.BodySchema{
		Attributes: attrs("address"),
	}
	listenerSchema = &hcl.BodySchema{
		Attributes: attrs("address", "protocol", "service", "access_log", "idle_timeout",
			"request_header_timeout", "request_body_timeout", "response_write_timeout", "trusted_proxies",
			"redirect_https", "https_port", "hsts_max_age",
			"max_connections", "max_concurrent_streams", "max_header_bytes"),
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "route", LabelNames: []string{"prefix"}},
			{Type: "tls"},
			{Type: "discover"},
		},
	}
	discoverSchema = &hcl.BodySchema{
		Attributes: attrs("tag_prefix", "max_routes"),
	}
	listenerTLSSchema = &hcl.BodySchema{
		Attributes: attrs("mode", "min_version", "client_ca_file", "require_client_cert"),
		Blocks:     []hcl.BlockHeaderSchema{{Type: "certificate"}},
	}
	certificateSchema = &hcl.BodySchema{
		Attributes: attrs("cert_file", "key_file"),
	}
	routeSchema = &hcl.BodySchema{
		Attributes: attrs("service", "max_body_bytes"),
	}
	sniRouteSchema = &hcl.BodySchema{
		Attributes: attrs("service"),
	}
	serviceSchema = &hcl.BodySchema{
		Attributes: attrs("tag", "strategy", "weight_key", "slow_start", "response_header_timeout", "response_body_timeout",
			"tags", "passing_only", "node_meta", "filter", "backup_tag", "panic_threshold", "connect"),
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "failover"},
			{Type: "sticky"},
			{Type: "health_check"},
			{Type: "passive"},
			{Type: "retry"},
			{Type: "tls"},
		},
	}
	serviceTLSSchema = &hcl.BodySchema{
		Attributes: attrs("ca_file", "server_name", "insecure_skip_verify", "cert_file", "key_file"),
	}
	stickySchema = &hcl.BodySchema{
		Attributes: attrs("mode", "cookie", "header", "ttl", "secret"),
	}
	healthCheckSchema = &hcl.BodySchema{
		Attributes: attrs("type", "path", "interval", "timeout", "rise", "fall"),
	}
	passiveSchema = &hcl.BodySchema{
		Attributes: attrs("consecutive_failures", "ejection_time", "max_ejection_time", "max_ejection_percent"),
	}
	failoverSchema = &hcl.BodySchema{
		Attributes: attrs("datacenters"),
	}
	retrySchema = &hcl.BodySchema{
		Attributes: attrs("attempts", "per_try_timeout"),
	}
)

// attrs builds optional attribute schemas; required attributes are checked
// by the decoder so that the error points at the block that lacks them.
func attrs(names ...string) []hcl.AttributeSchema {
	s := make([]hcl.AttributeSchema, len(names))
	for i, n := range names {
		s[i] = hcl.AttributeSchema{Name: n}
	}
	return s
}

// decoder turns one file body into a Config, collecting diagnostics. It is
// used for a single Parse call.
type decoder struct {
	filename string
	opts     Options
	diags    hcl.Diagnostics

	listenerNames map[string]hcl.Range // name -> first listener block
	addresses     map[string]hcl.Range // listener address -> first use
	admin         adminAddress         // decoded before the listeners
	serviceRefs   map[string]bool      // services a route or tcp listener names
	datacenter    string               // the consul block's datacenter, decoded before the services
}

// adminAddress is the admin interface's address as decoded, for
// listener() to compare with. Like listener addresses, it is compared as
// written: "localhost:9901" and "127.0.0.1:9901" do not collide here (binding
// fails at start instead).
type adminAddress struct {
	address string
	ok      bool       // address is valid (invalid ones are reported already)
	attr    *hcl.Range // the address expression; nil for the default
	block   hcl.Range  // the admin block, when attr is set
}

func newDecoder(filename string, opts Options) *decoder {
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.Hostname == nil {
		opts.Hostname = os.Hostname
	}
	return &decoder{
		filename:      filename,
		opts:          opts,
		listenerNames: map[string]hcl.Range{},
		addresses:     map[string]hcl.Range{},
		serviceRefs:   map[string]bool{},
	}
}

// errorf records an error diagnostic at subject.
func (d *decoder) errorf(subject hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   fmt.Sprintf(format, args...),
		Subject:  subject.Ptr(),
	})
}

// content decodes body against schema, recording unknown attributes and
// blocks and malformed labels. The result is never nil.
func (d *decoder) content(body hcl.Body, schema *hcl.BodySchema) *hcl.BodyContent {
	c, diags := body.Content(schema)
	d.diags = append(d.diags, diags...)
	return c
}

// first returns the first block of type typ, or nil, and reports every
// further one as a duplicate. Duplicates are not decoded.
func (d *decoder) first(blocks hcl.Blocks, typ string) *hcl.Block {
	of := blocks.OfType(typ)
	if len(of) == 0 {
		return nil
	}
	for _, b := range of[1:] {
		d.errorf(b.DefRange, fmt.Sprintf("Duplicate %s block", typ),
			"only one %s block is allowed here; the first is at %s", typ, pos(of[0].DefRange))
	}
	return of[0]
}

// pos renders r's start as FILE:LINE,COL.
func pos(r hcl.Range) string {
	return fmt.Sprintf("%s:%d,%d", r.Filename, r.Start.Line, r.Start.Column)
}

func (d *decoder) file(body hcl.Body) *Config {
	c := d.content(body, fileSchema)
	cfg := &Config{
		Consul:   d.consul(d.first(c.Blocks, "consul")),
		Admin:    d.decodeAdmin(d.first(c.Blocks, "admin")), // before the listeners
		Services: map[string]*Service{},
	}
	d.datacenter = cfg.Consul.Datacenter
	for _, b := range c.Blocks.OfType("listener") {
		if l, ok := d.listener(b); ok {
			cfg.Listeners = append(cfg.Listeners, l)
		}
	}
	if len(c.Blocks.OfType("listener")) == 0 {
		start := hcl.Pos{Line: 1, Column: 1, Byte: 0}
		d.errorf(hcl.Range{Filename: d.filename, Start: start, End: start}, "Missing listener",
			`the file needs at least one listener block, such as listener "public" { address = "127.0.0.1:8080" ... }`)
	}
	blocks := map[string]hcl.Range{}
	for _, b := range c.Blocks.OfType("service") {
		name := b.Labels[0]
		if first, dup := blocks[name]; dup {
			d.errorf(b.DefRange, "Duplicate service",
				"service %q is already defined at %s", name, pos(first))
			continue
		}
		blocks[name] = b.DefRange
		if svc := d.service(b); svc != nil {
			cfg.Services[name] = svc
		}
	}
	defaults := d.first(c.Blocks, "service_defaults")
	if defaults != nil {
		cfg.ServiceDefaults = d.serviceBody("", defaults.Body)
	}
	for _, name := range slices.Sorted(maps.Keys(d.serviceRefs)) {
		if _, ok := blocks[name]; !ok {
			svc, err := cfg.ServiceFor(name)
			if err != nil {
				d.errorf(defaults.DefRange, "Invalid cookie", "service %q has no service block: %v", name, err)
				continue
			}
			cfg.Services[name] = svc
		}
	}
	cfg.Register = d.register(d.first(c.Blocks, "register"), cfg.Listeners) // after the listeners
	cfg.Connect = d.connect(d.first(c.Blocks, "connect"))
	return cfg
}

// decodeAdmin decodes the admin block, if any, and records its address in
// d.admin.
func (d *decoder) decodeAdmin(b *hcl.Block) Admin {
	a := Admin{Address: defaultAdminAddress}
	d.admin = adminAddress{address: a.Address, ok: true}
	if b != nil {
		as := d.content(b.Body, adminSchema).Attributes
		if attr := as["address"]; attr != nil {
			d.admin.ok = d.str(as, "address", &a.Address, hostPort)
			d.admin.address = a.Address
			d.admin.attr = attr.Expr.Range().Ptr()
			d.admin.block = b.DefRange
		}
	}
	return a
}

// listener decodes one listener block; ok is false for a duplicate name.
func (d *decoder) listener(b *hcl.Block) (l Listener, ok bool) {
	l = Listener{Name: b.Labels[0], Protocol: ProtocolHTTP}
	if first, dup := d.listenerNames[l.Name]; dup {
		d.errorf(b.DefRange, "Duplicate listener", "listener %q is already defined at %s", l.Name, pos(first))
		return l, false
	}
	d.listenerNames[l.Name] = b.DefRange
	c := d.content(b.Body, listenerSchema)
	as := c.Attributes

	if a := as["address"]; a == nil {
		d.errorf(b.DefRange, "Missing address",
			`listener %q needs an address such as "127.0.0.1:8080"`, l.Name)
	} else if d.str(as, "address", &l.Address, hostPort) {
		if first, dup := d.addresses[l.Address]; dup {
			d.errorf(a.Expr.Range(), "Duplicate address",
				"address %q is already used by the listener at %s", l.Address, pos(first))
		} else {
			d.addresses[l.Address] = b.DefRange
			d.adminCollision(l.Address, a.Expr.Range(), b.DefRange)
		}
	}

	protocolOK := enum(d, as, "protocol", &l.Protocol, Protocols())
	isHTTP := protocolOK && l.Protocol == ProtocolHTTP
	isTCP := protocolOK && l.Protocol == ProtocolTCP

	modeOK := true
	if tb := d.first(c.Blocks, "tls"); tb != nil {
		l.TLS, modeOK = d.listenerTLS(tb, l.Name, isHTTP)
	}
	passthrough := l.TLS != nil && l.TLS.Mode == TLSPassthrough
	redirectOK := d.boolean(as, "redirect_https", &l.RedirectHTTPS)
	if l.RedirectHTTPS && l.TLS != nil && !isTCP {
		d.errorf(as["redirect_https"].Expr.Range(), "Invalid redirect_https",
			"redirect_https is only valid in listeners without a tls block; listener %q serves https itself", l.Name)
		redirectOK = false
	}
	redirect := redirectOK && l.RedirectHTTPS
	if db := d.first(c.Blocks, "discover"); db != nil {
		switch {
		case isTCP:
			d.errorf(db.DefRange, "Unexpected discover block",
				"discover blocks are only valid in http listeners; %q is a tcp listener", l.Name)
		case redirect:
			d.errorf(db.DefRange, "Unexpected discover block",
				"listener %q has redirect_https = true and answers every request with a redirect to https; it has no routes", l.Name)
		case isHTTP:
			l.Discover = &Discover{TagPrefix: defaultTagPrefix, MaxRoutes: defaultMaxRoutes}
			as := d.content(db.Body, discoverSchema).Attributes
			d.str(as, "tag_prefix", &l.Discover.TagPrefix, nonEmpty)
			d.integer(as, "max_routes", &l.Discover.MaxRoutes, 1, maxDiscoverRoutes)
		}
	}

	routes := c.Blocks.OfType("route")
	switch {
	case isTCP && passthrough:
		seen := map[string]hcl.Range{}
		for _, rb := range routes {
			if r, ok := d.sniRoute(rb, seen); ok {
				l.SNIRoutes = append(l.SNIRoutes, r)
			}
		}
		if len(routes) == 0 {
			d.errorf(b.DefRange, "Missing route",
				`tcp listener %q passes TLS through and needs at least one route block naming a server name, such as route "db.example.com" { service = "db" } or route "*" { service = "db" }`, l.Name)
		}
	case isTCP:
		if modeOK {
			for _, r := range routes {
				d.errorf(r.DefRange, "Unexpected route block",
					`route blocks are only valid in http listeners and in tcp listeners with tls { mode = "passthrough" }; tcp listener %q sends everything to its service`, l.Name)
			}
		}
	case redirect:
		for _, r := range routes {
			d.errorf(r.DefRange, "Unexpected route block",
				"listener %q has redirect_https = true and answers every request with a redirect to https; it has no routes", l.Name)
		}
	default:
		seen := map[string]hcl.Range{}
		for _, rb := range routes {
			if r, ok := d.route(rb, seen); ok {
				l.Routes = append(l.Routes, r)
			}
		}
		if isHTTP && len(routes) == 0 && redirectOK && l.Discover == nil {
			d.errorf(b.DefRange, "Missing route",
				`http listener %q needs at least one route block, such as route "/" { service = "web" }, or a discover block`, l.Name)
		}
	}

	d.str(as, "access_log", &l.AccessLog, nonEmpty)
	l.IdleTimeout = defaultIdleTimeout
	d.duration(as, "idle_timeout", &l.IdleTimeout, positive)
	d.integer(as, "max_connections", &l.MaxConnections, 0, maxMaxConnections)

	// Client-side HTTP settings: defaults for http listeners, errors on
	// tcp ones.
	if isTCP {
		for _, name := range []string{"request_header_timeout", "request_body_timeout", "response_write_timeout", "trusted_proxies",
			"redirect_https", "https_port", "hsts_max_age", "max_concurrent_streams", "max_header_bytes"} {
			if a := as[name]; a != nil {
				d.errorf(a.NameRange, "Unexpected "+name,
					"%s is only valid in http listeners; %q is a tcp listener", name, l.Name)
			}
		}
		l.RedirectHTTPS = false
	} else {
		l.RequestHeaderTimeout = defaultRequestHeaderTimeout
		l.RequestBodyTimeout = defaultRequestBodyTimeout
		l.ResponseWriteTimeout = defaultResponseWriteTimeout
		d.duration(as, "request_header_timeout", &l.RequestHeaderTimeout, positive)
		d.duration(as, "request_body_timeout", &l.RequestBodyTimeout, positive)
		d.duration(as, "response_write_timeout", &l.ResponseWriteTimeout, positive)
		d.prefixes(as, "trusted_proxies", &l.TrustedProxies)
		d.httpsRedirect(as, &l, redirectOK)
		l.MaxConcurrentStreams = defaultMaxConcurrentStreams
		d.integer(as, "max_concurrent_streams", &l.MaxConcurrentStreams, 1, maxMaxConcurrentStreams)
		headerBytes := int64(defaultMaxHeaderBytes)
		d.size(as, "max_header_bytes", &headerBytes, minMaxHeaderBytes, maxMaxHeaderBytes)
		l.MaxHeaderBytes = int(headerBytes)
	}

	svc := as["service"]
	switch {
	case isHTTP && svc != nil:
		d.errorf(svc.NameRange, "Unexpected service",
			"service is only valid in tcp listeners; http listener %q routes with route blocks", l.Name)
	case isTCP && passthrough && svc != nil:
		d.errorf(svc.NameRange, "Unexpected service",
			`tcp listener %q passes TLS through (tls { mode = "passthrough" }) and picks the service by server name with route blocks`, l.Name)
	case isTCP && svc == nil && !passthrough && modeOK:
		d.errorf(b.DefRange, "Missing service",
			"tcp listener %q needs a service attribute", l.Name)
	case svc != nil:
		d.serviceRef(as, &l.Service)
	}
	return l, true
}

// httpsRedirect decodes an http listener's https_port and hsts_max_age,
// which depend on redirect_https (already in l; redirectOK is false when
// it was invalid) and on the tls block.
func (d *decoder) httpsRedirect(as hcl.Attributes, l *Listener, redirectOK bool) {
	if a := as["https_port"]; a != nil && redirectOK && !l.RedirectHTTPS {
		d.errorf(a.NameRange, "Unexpected https_port",
			"https_port is only valid with redirect_https = true; it is the port redirects point to")
	} else if l.RedirectHTTPS {
		l.HTTPSPort = defaultHTTPSPort
		d.integer(as, "https_port", &l.HTTPSPort, 1, 65535)
	}
	if a := as["hsts_max_age"]; a != nil {
		if l.TLS == nil {
			d.errorf(a.NameRange, "Unexpected hsts_max_age",
				"hsts_max_age is only valid in listeners with a tls block; browsers ignore it over plain http")
		} else {
			d.duration(as, "hsts_max_age", &l.HSTSMaxAge, atLeast(time.Second), wholeSeconds)
		}
	}
}

// adminCollision reports a listener address equal to the admin interface's,
// at whichever of the two address attributes comes later in the file (at
// the listener's when the admin address is the default). Addresses are
// compared as written, like listener addresses among themselves.
func (d *decoder) adminCollision(address string, attr, block hcl.Range) {
	adm := d.admin
	if !adm.ok || address != adm.address {
		return
	}
	switch {
	case adm.attr == nil:
		d.errorf(attr, "Duplicate address",
			"address %q is the admin interface's default address; use another one, or move the admin interface with an admin block", address)
	case adm.attr.Start.Byte > attr.Start.Byte:
		d.errorf(*adm.attr, "Duplicate address",
			"address %q is already used by the listener at %s", address, pos(block))
	default:
		d.errorf(attr, "Duplicate address",
			"address %q is already used by the admin interface at %s", address, pos(adm.block))
	}
}

// route decodes a route block whose label is "[host]/path-prefix"; ok is
// false when the label is malformed or repeats one in seen (keyed by the
// lowercased host and the path prefix).
func (d *decoder) route(b *hcl.Block, seen map[string]hcl.Range) (r Route, ok bool) {
	label, labelRange := b.Labels[0], b.LabelRanges[0]
	slash := strings.IndexByte(label, '/')
	if slash < 0 {
		d.errorf(labelRange, "Invalid route",
			`route label must be "[host]/path-prefix", such as "/" or "api.example.com/v1"; got %s`, quote(label))
		return r, false
	}
	r = Route{Host: strings.ToLower(label[:slash]), PathPrefix: label[slash:]}
	if strings.ContainsAny(r.Host, "* \t") {
		d.errorf(labelRange, "Invalid route",
			"route host must be a literal host name without wildcards or spaces; got %s", quote(label[:slash]))
		return r, false
	}
	key := r.Host + r.PathPrefix
	if first, dup := seen[key]; dup {
		d.errorf(b.DefRange, "Duplicate route", "route %q is already defined at %s", label, pos(first))
		return r, false
	}
	seen[key] = b.DefRange
	as := d.content(b.Body, routeSchema).Attributes
	d.size(as, "max_body_bytes", &r.MaxBodyBytes, 0, math.MaxInt64)
	if as["service"] == nil {
		d.errorf(b.DefRange, "Missing service", "route %q needs a service attribute", label)
		return r, true
	}
	d.serviceRef(as, &r.Service)
	return r, true
}

// serviceRef decodes the "service" attribute naming a target service and
// records the reference.
func (d *decoder) serviceRef(as hcl.Attributes, dst *string) {
	if d.str(as, "service", dst, nonEmpty) {
		d.serviceRefs[*dst] = true
	}
}

// defaultService returns the policy of a service without a service block.
func defaultService(name string) *Service {
	return &Service{
		Name:      name,
		Strategy:  defaultStrategy,
		WeightKey: discovery.DefaultWeightKey,
		Retry:     Retry{Attempts: proxy.DefaultAttempts},

		ResponseHeaderTimeout: defaultResponseHeaderTimeout,
		ResponseBodyTimeout:   defaultResponseBodyTimeout,
	}
}

// service decodes a service block; it returns nil for an empty name.
func (d *decoder) service(b *hcl.Block) *Service {
	name := b.Labels[0]
	if name == "" {
		d.errorf(b.LabelRanges[0], "Invalid service", "service name must not be empty")
		return nil
	}
	return d.serviceBody(name, b.Body)
}

// serviceBody decodes the body of a service block, or of the
// service_defaults block when name is "".
func (d *decoder) serviceBody(name string, body hcl.Body) *Service {
	s := defaultService(name)
	c := d.content(body, serviceSchema)
	as := c.Attributes
	d.str(as, "tag", &s.Tag)
	if a, b := as["tag"], as["tags"]; a != nil && b != nil {
		d.errorf(b.NameRange, "Conflicting tags",
			"tag is shorthand for tags = [TAG]; set one of them, not both (tag is at %s)", pos(a.NameRange))
	} else {
		d.strList(as, "tags", &s.Tags, nonEmpty)
	}
	d.boolean(as, "passing_only", &s.PassingOnly)
	d.nodeMeta(as, &s.NodeMeta)
	d.str(as, "filter", &s.Filter)
	d.str(as, "backup_tag", &s.BackupTag)
	d.integer(as, "panic_threshold", &s.PanicThreshold, 0, 100)
	s.Failover = d.failover(d.first(c.Blocks, "failover"))
	d.str(as, "strategy", &s.Strategy, oneOf(balance.Implemented()...))
	d.str(as, "weight_key", &s.WeightKey, nonEmpty)
	d.duration(as, "slow_start", &s.SlowStart)
	d.duration(as, "response_header_timeout", &s.ResponseHeaderTimeout, positive)
	d.duration(as, "response_body_timeout", &s.ResponseBodyTimeout, positive)
	s.Sticky = d.sticky(d.first(c.Blocks, "sticky"), name)
	s.HealthCheck = d.healthCheck(d.first(c.Blocks, "health_check"))
	s.Passive = d.passive(d.first(c.Blocks, "passive"))
	d.retry(d.first(c.Blocks, "retry"), &s.Retry)
	s.TLS = d.serviceTLS(d.first(c.Blocks, "tls"))
	d.serviceConnect(as, c.Blocks, s)
	return s
}

func (d *decoder) sticky(b *hcl.Block, service string) *Sticky {
	if b == nil {
		return nil
	}
	s := &Sticky{Mode: balance.StickyCookie, Cookie: "sluice_" + service, TTL: time.Hour}
	if service == "" { // service_defaults: see Config.ServiceDefaults
		s.Cookie = ""
	}
	as := d.content(b.Body, stickySchema).Attributes
	modeOK := d.stickyMode(as, &s.Mode)
	if as["cookie"] != nil {
		d.str(as, "cookie", &s.Cookie, token)
	} else if modeOK && s.Mode == balance.StickyCookie && service != "" && token(s.Cookie) != "" {
		d.errorf(b.DefRange, "Invalid cookie",
			"default cookie name %q is not a valid cookie name; set cookie explicitly", s.Cookie)
	}
	headerOK := d.str(as, "header", &s.Header, emptyOr(token))
	if modeOK && headerOK && s.Mode == balance.StickyHeader && s.Header == "" {
		rng := b.DefRange
		if a := as["header"]; a != nil {
			rng = a.Expr.Range()
		}
		d.errorf(rng, "Missing header", `sticky mode "header" needs a header attribute naming the request header`)
	}
	d.duration(as, "ttl", &s.TTL, positive)
	d.str(as, "secret", &s.Secret)
	return s
}

// stickyMode decodes a sticky block's mode attribute, one of
// balance.StickyModes, into dst.
func (d *decoder) stickyMode(as hcl.Attributes, dst *balance.StickyMode) bool {
	modes := balance.StickyModes()
	names := make([]string, len(modes))
	for i, m := range modes {
		names[i] = string(m)
	}
	s := string(*dst)
	if !d.str(as, "mode", &s, oneOf(names...)) {
		return false
	}
	m, err := balance.ParseStickyMode(s)
	if err != nil {
		return false // not reached: oneOf accepts exactly these names
	}
	*dst = m
	return true
}

func (d *decoder) healthCheck(b *hcl.Block) *HealthCheck {
	if b == nil {
		return nil
	}
	h := &HealthCheck{Type: proxy.ProbeHTTP, Path: "/health", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	as := d.content(b.Body, healthCheckSchema).Attributes
	typeOK := enum(d, as, "type", &h.Type, proxy.ProbeTypes())
	if typeOK && h.Type == proxy.ProbeTCP {
		h.Path = ""
		if a := as["path"]; a != nil {
			d.errorf(a.NameRange, "Unexpected path", `path is only valid for health checks of type "http"`)
		}
	} else {
		d.str(as, "path", &h.Path, absolutePath)
	}
	intervalOK := d.duration(as, "interval", &h.Interval, atLeast(100*time.Millisecond))
	timeoutOK := d.duration(as, "timeout", &h.Timeout, positive)
	if intervalOK && timeoutOK && h.Timeout > h.Interval {
		if a := as["timeout"]; a != nil {
			d.errorf(a.Expr.Range(), "Invalid timeout",
				"timeout must not exceed interval (%s); got %q", h.Interval, h.Timeout)
		} else {
			d.errorf(as["interval"].Expr.Range(), "Invalid interval",
				"interval must not be shorter than timeout (%s); got %q", h.Timeout, h.Interval)
		}
	}
	d.integer(as, "rise", &h.Rise, 1, 100)
	d.integer(as, "fall", &h.Fall, 1, 100)
	return h
}

func (d *decoder) passive(b *hcl.Block) *Passive {
	if b == nil {
		return nil
	}
	p := &Passive{ConsecutiveFailures: 5, EjectionTime: 30 * time.Second, MaxEjectionPercent: 50}
	as := d.content(b.Body, passiveSchema).Attributes
	d.integer(as, "consecutive_failures", &p.ConsecutiveFailures, 1, 1000)
	ejectionOK := d.duration(as, "ejection_time", &p.EjectionTime, positive)
	p.MaxEjectionTime = max(defaultMaxEjectionTime, p.EjectionTime)
	if a := as["max_ejection_time"]; a != nil {
		if d.duration(as, "max_ejection_time", &p.MaxEjectionTime, positive) && ejectionOK && p.MaxEjectionTime < p.EjectionTime {
			d.errorf(a.Expr.Range(), "Invalid max_ejection_time",
				"max_ejection_time must not be shorter than ejection_time (%s); got %q", p.EjectionTime, p.MaxEjectionTime)
		}
	}
	d.integer(as, "max_ejection_percent", &p.MaxEjectionPercent, 0, 100)
	return p
}

// failover decodes a failover block: its datacenters, each a Consul
// datacenter name, unique, and not the local one.
func (d *decoder) failover(b *hcl.Block) *Failover {
	if b == nil {
		return nil
	}
	f := &Failover{}
	as := d.content(b.Body, failoverSchema).Attributes
	a := as["datacenters"]
	if a == nil {
		d.errorf(b.DefRange, "Missing datacenters", `failover needs datacenters = ["dc2", ...], the datacenters to use in order`)
		return f
	}
	var dcs []string
	if !d.strList(as, "datacenters", &dcs, datacenterName) {
		return f
	}
	if len(dcs) == 0 {
		d.errorf(a.Expr.Range(), "Invalid datacenters", "datacenters must list at least one datacenter")
		return f
	}
	exprs, _ := hcl.ExprList(a.Expr)
	for i, dc := range dcs {
		switch {
		case slices.Index(dcs, dc) < i:
			d.errorf(exprs[i].Range(), "Invalid datacenters", "datacenters element %d repeats %s", i+1, quote(dc))
			return f
		case d.datacenter != "" && dc == d.datacenter:
			d.errorf(exprs[i].Range(), "Invalid datacenters",
				"datacenters element %d is %s, the consul block's own datacenter; list only other datacenters", i+1, quote(dc))
			return f
		}
	}
	f.Datacenters = dcs
	return f
}

// datacenterName accepts a Consul datacenter name: letters, digits, '_'
// and '-', as Consul requires.
func datacenterName(s string) string {
	if s == "" || strings.IndexFunc(s, func(r rune) bool { return !metaKeyRune(r) }) >= 0 {
		return "must be a datacenter name of letters, digits, '_' and '-'"
	}
	return ""
}

// metaKeyRune reports whether r may appear in a Consul meta key or
// datacenter name.
func metaKeyRune(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '_' || r == '-'
}

// Consul's bounds of node meta.
const (
	maxMetaKeyLength   = 128
	maxMetaValueLength = 512
)

// nodeMeta decodes node_meta: an object of strings whose keys follow
// Consul's rule for meta keys.
func (d *decoder) nodeMeta(as hcl.Attributes, dst *map[string]string) {
	a := as["node_meta"]
	if a == nil {
		return
	}
	v, diags := a.Expr.Value(nil)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() || !v.IsWhollyKnown() {
		return
	}
	const want = `must be an object of strings such as { rack = "r1" }`
	switch {
	case v.IsNull():
		d.invalid(a, want, "null")
		return
	case !v.Type().IsObjectType() && !v.Type().IsMapType():
		d.invalid(a, want, describe(v))
		return
	}
	m := map[string]string{}
	for it := v.ElementIterator(); it.Next(); {
		k, ev := it.Element()
		key := k.AsString()
		switch {
		case ev.IsNull() || !ev.Type().Equals(cty.String):
			got := "null"
			if !ev.IsNull() {
				got = describe(ev)
			}
			d.invalid(a, fmt.Sprintf("key %s must be a string", quote(key)), got)
			return
		case key == "" || len(key) > maxMetaKeyLength || strings.IndexFunc(key, func(r rune) bool { return !metaKeyRune(r) }) >= 0:
			d.invalid(a, fmt.Sprintf("keys must be 1 to %d letters, digits, '_' and '-'", maxMetaKeyLength), quote(key))
			return
		case len(ev.AsString()) > maxMetaValueLength:
			d.invalid(a, fmt.Sprintf("key %s must have a value of at most %d bytes", quote(key), maxMetaValueLength), quote(ev.AsString()))
			return
		}
		m[key] = ev.AsString()
	}
	if len(m) > 0 {
		*dst = m
	}
}

// retry applies a retry block, if any, over the defaults in r.
func (d *decoder) retry(b *hcl.Block, r *Retry) {
	if b == nil {
		return
	}
	as := d.content(b.Body, retrySchema).Attributes
	d.integer(as, "attempts", &r.Attempts, 1, 10)
	d.duration(as, "per_try_timeout", &r.PerTryTimeout)
}
