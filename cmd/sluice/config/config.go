// Package config parses and validates sluice's HCL configuration file.
//
// A file holds at most one consul block, at most one admin block, at most
// one register block, one or more listener blocks and any number of service
// blocks:
//
//	consul { address = "127.0.0.1:8500" }
//	listener "public" {
//	  address = "127.0.0.1:8080"
//	  route "api.example.com/v1" {
//	    service = "api"
//	  }
//	}
//	listener "db" {
//	  address  = "127.0.0.1:5433"
//	  protocol = "tcp"
//	  service  = "postgres"
//	}
//	service "api" {
//	  strategy = "least_connections"
//	}
//
// Parse fills every default and validates the whole file in one pass: it
// reports every problem it finds, each with the source range of the
// offending attribute value, block or label, and returns a Config only when
// there are none. Expressions are evaluated without variables or functions.
//
// Files that tls blocks name (certificates, keys, certificate authorities)
// are loaded at Parse to check them, as the runtime will load them; the
// Config holds their names, never their content, so the runtime reads them
// again at start and on every reload.
//
// A file over MaxFileSize bytes, nested deeper than MaxNesting or with a
// number literal longer than MaxNumberLength is refused before it is
// parsed, so that hostile input cannot crash or stall the process.
package config

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sluice-lb/sluice/balance"
	"github.com/sluice-lb/sluice/proxy"
)

// Options tune validation. The zero value reads the process environment.
type Options struct {
	// Getenv reads the environment defaults of the consul block (see
	// Consul). nil means os.Getenv.
	Getenv func(string) string
	// Hostname is the host name in a register block's default id. nil
	// means os.Hostname.
	Hostname func() (string, error)
}

// Config is a validated configuration with every default filled in.
type Config struct {
	Consul Consul
	Admin  Admin
	// Listeners are in file order; there is at least one.
	Listeners []Listener
	// Services holds, by name, every service that has a service block or is
	// named by a route or a tcp listener. A service without a block has
	// the policy of ServiceDefaults (see ServiceFor).
	Services map[string]*Service
	// ServiceDefaults is the service_defaults block: the policy of every
	// service without a service block, those that routes name and those
	// that discover blocks find in Consul. Its Name is "", and its
	// Sticky.Cookie is "" unless written (each service then gets
	// "sluice_" + its name). nil without the block: built-in defaults.
	ServiceDefaults *Service
	// Register is nil when the file has no register block.
	Register *Register
	// Connect is nil when the file has no connect block (see
	// ConnectIdentity); it applies only when a service uses Connect
	// (UsesConnect).
	Connect *Connect
}

// ConnectIdentity is the identity sluice presents in the mesh: the
// connect block's service, default "sluice".
func (c *Config) ConnectIdentity() string {
	if c.Connect == nil {
		return defaultConnectService
	}
	return c.Connect.Service
}

// UsesConnect reports whether any service, or service_defaults, has
// connect = true: sluice then runs its Connect identity (leaf, roots and
// intentions watches) and /healthz waits for the leaf and roots.
func (c *Config) UsesConnect() bool {
	if c.ServiceDefaults != nil && c.ServiceDefaults.Connect {
		return true
	}
	for _, s := range c.Services {
		if s.Connect {
			return true
		}
	}
	return false
}

// ServiceNames returns the keys of c.Services in sorted order.
func (c *Config) ServiceNames() []string {
	names := make([]string, 0, len(c.Services))
	for name := range c.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// ServiceFor returns the policy of the service called name: its entry in
// Services (its service block, or the defaults it got because a route
// names it), else the service_defaults block's with the name filled in,
// else the built-in defaults. The result is shared or fresh; callers must
// not modify it. It fails only for a name that makes the default sticky
// cookie name ("sluice_" + name) an invalid cookie name.
func (c *Config) ServiceFor(name string) (*Service, error) {
	if s := c.Services[name]; s != nil {
		return s, nil
	}
	s := c.defaultsFor(name)
	if st := s.Sticky; st != nil && st.Mode == balance.StickyCookie {
		if problem := token(st.Cookie); problem != "" {
			return nil, fmt.Errorf("the default sticky cookie name %q %s; set cookie in service_defaults' sticky block", st.Cookie, problem)
		}
	}
	return s, nil
}

// defaultsFor is the policy of a service without a service block.
func (c *Config) defaultsFor(name string) *Service {
	if c.ServiceDefaults == nil {
		return defaultService(name)
	}
	s := *c.ServiceDefaults
	s.Name = name
	if st := s.Sticky; st != nil && st.Cookie == "" {
		cp := *st
		cp.Cookie = "sluice_" + name
		s.Sticky = &cp
	}
	return &s
}

// Consul says how to reach the Consul agent. Every field but Stale has a
// default from the environment variable that Consul's own CLI reads (named
// below); a value written in the file wins over the environment, and the
// environment over the built-in default. A value taken from the environment
// is validated like one written in the file, and a diagnostic about it names
// the variable. Consul is comparable: a reload compares it with == to decide
// whether to make a new client.
//
// Token is a secret: it is never logged or shown by the admin API, so the
// struct must not be logged as a whole.
type Consul struct {
	// Address is "host:port", "http://host:port" or "https://host:port".
	// Default: $CONSUL_HTTP_ADDR, else "127.0.0.1:8500". An address without
	// a scheme gets "https://" when $CONSUL_HTTP_SSL is true (the scheme
	// written in an address always wins).
	Address string
	// Token is the ACL token: the token attribute, or the content of
	// TokenFile read at load (surrounding white space removed), so that a
	// token file whose content changed makes a reload count as a change.
	// Default: the content of $CONSUL_HTTP_TOKEN_FILE, else
	// $CONSUL_HTTP_TOKEN, else "" (the agent's default token). The file may
	// set token or token_file, not both; either overrides both variables.
	Token string
	// TokenFile is the file Token was read from; "" when Token was given
	// directly. Default $CONSUL_HTTP_TOKEN_FILE.
	TokenFile string
	// Datacenter to query. Default "" (the agent's own). No variable.
	Datacenter string
	// Namespace to query (Consul Enterprise), sent as the "ns" query
	// parameter on every request. Default $CONSUL_NAMESPACE, else "" (the
	// token's or the agent's default).
	Namespace string
	// Partition to query (Consul Enterprise), sent as the "partition" query
	// parameter on every request. Default $CONSUL_PARTITION, else "".
	Partition string
	// Stale allows any Consul server to answer reads. Default true. No
	// variable.
	Stale bool
	// TLS is used when the address is https.
	TLS ConsulTLS
}

// ConsulTLS is how sluice checks the Consul agent's certificate and which
// certificate it presents. Every file is read at load to check it, and
// again when the client is made (at start and when a reload changes the
// consul block).
type ConsulTLS struct {
	// CAFile is a PEM file of the certificate authorities to trust; it
	// must hold at least one certificate. Default $CONSUL_CACERT, else ""
	// (with CAPath also "", the system's roots).
	CAFile string
	// CAPath is a directory of PEM certificate files to trust. Default
	// $CONSUL_CAPATH, else "".
	CAPath string
	// CertFile and KeyFile are the client certificate and its private key,
	// PEM; both or neither, and they must form a key pair. Defaults
	// $CONSUL_CLIENT_CERT and $CONSUL_CLIENT_KEY, else "" (no client
	// certificate).
	CertFile string
	KeyFile  string
	// ServerName is the name checked against the agent's certificate.
	// Default $CONSUL_TLS_SERVER_NAME, else "" (the host of Address).
	ServerName string
	// InsecureSkipVerify turns off checking the agent's certificate.
	// Default false, or true when $CONSUL_HTTP_SSL_VERIFY is false.
	InsecureSkipVerify bool
	// Files is a SHA-256 digest of the content of the files above as read
	// at load, so that a reload after a certificate or key was replaced
	// under the same name counts as a change of the consul block; zero
	// when no file is named.
	Files [sha256.Size]byte
}

// Admin is the admin API listener.
type Admin struct {
	// Address is "host:port". Default "127.0.0.1:9901".
	Address string
}

// Listener accepts client traffic.
type Listener struct {
	// Name is the block label, unique among listeners.
	Name string
	// Address is "host:port" with a non-empty host and a port from 1 to
	// 65535, unique among listeners (compared as written). Required.
	Address string
	// Protocol is ProtocolHTTP (default) or ProtocolTCP.
	Protocol Protocol
	// Routes are the http listener's routes in file order; at least one,
	// except on a redirect listener (RedirectHTTPS), which has none, and
	// on a listener with a discover block, which may have none. Empty for
	// tcp listeners.
	Routes []Route
	// Discover is nil without a discover block (http listeners only, not
	// redirect ones). With one, the listener also routes to the services
	// that Consul's catalog lists with a tag TagPrefix + "[host]/path".
	Discover *Discover
	// AccessLog is where one line per HTTP request or TCP connection is
	// written: "stdout", "stderr" or a file path (appended to). Default ""
	// (off).
	AccessLog string
	// IdleTimeout closes a client connection idle this long: an HTTP
	// keep-alive connection between requests, a TCP connection with no
	// bytes either way. Default 2m.
	IdleTimeout time.Duration
	// RequestHeaderTimeout is how long an http listener waits for the
	// whole head of a request (request line and headers), counted from
	// the accept on a new connection and from the request's first byte on
	// a kept-alive one; then it answers 408 and closes the connection.
	// Default 10s; greater than 0. 0 for tcp listeners.
	RequestHeaderTimeout time.Duration
	// RequestBodyTimeout is how long an http listener waits for the next
	// byte of a request body; then it answers 408 and closes the
	// connection. Default 60s; greater than 0. 0 for tcp listeners.
	RequestBodyTimeout time.Duration
	// ResponseWriteTimeout is how long an http listener waits for a client
	// that stopped reading to take the next byte of a response; then it
	// closes the connection. Default 60s; greater than 0. 0 for tcp
	// listeners.
	ResponseWriteTimeout time.Duration
	// TrustedProxies are the client addresses whose forwarding headers an
	// http listener believes, written as CIDR prefixes ("10.0.0.0/8") or
	// bare IP addresses (a /32 or /128 prefix). A prefix must have no bits
	// set after its length. Default none; always nil for tcp listeners.
	TrustedProxies []netip.Prefix
	// Service receives all of a tcp listener's connections. Empty for http
	// listeners and for tcp listeners that route by server name
	// (SNIRoutes).
	Service string

	// TLS is nil when the listener has no tls block (plain HTTP or TCP).
	// With one, an http listener terminates TLS (and offers HTTP/2 by
	// ALPN); a tcp listener terminates it or, in TLSPassthrough mode,
	// routes by server name without terminating it.
	TLS *ListenerTLS
	// SNIRoutes are a passthrough tcp listener's routes by server name,
	// in file order; at least one. Empty otherwise.
	SNIRoutes []SNIRoute
	// RedirectHTTPS makes an http listener without TLS answer every
	// request with 308 Permanent Redirect to the same host and request
	// target over https on HTTPSPort. Such a listener has no routes.
	// Default false; only on http listeners without a tls block.
	RedirectHTTPS bool
	// HTTPSPort is the port redirects point to; 443 is left out of the
	// URL. Default 443 when RedirectHTTPS is set (1 to 65535), else 0.
	HTTPSPort int
	// HSTSMaxAge, when set, adds "Strict-Transport-Security:
	// max-age=SECONDS" to every answer of a TLS http listener. Default 0
	// (off); whole seconds, at least 1s; only on http listeners with a
	// tls block.
	HSTSMaxAge time.Duration
	// MaxConnections caps the listener's open client connections. At the
	// cap, accepting waits (clients queue in the kernel's backlog, they
	// are never refused) and an http listener closes idle keep-alive
	// connections first so that waiting clients get served. Default 0
	// (no cap); 0 to 2147483647.
	MaxConnections int
	// MaxConcurrentStreams is how many HTTP/2 streams one client
	// connection may have open at once. Default 100; 1 to 10000; 0 for
	// tcp listeners.
	MaxConcurrentStreams int
	// MaxHeaderBytes bounds a request head (request line and headers, or
	// an HTTP/2 header block); a larger one is answered 431. Default 64
	// KiB (h1.DefaultMaxHeaderBytes); 1 KiB to 16 MiB; 0 for tcp
	// listeners.
	MaxHeaderBytes int
}

// Discover makes routes from Consul service tags: a service carrying the
// tag TagPrefix + "[host]/path-prefix" gets a route on the listener,
// sent to its instances that carry that tag.
type Discover struct {
	// TagPrefix starts the tags that make routes. Default
	// "sluice-route="; never empty.
	TagPrefix string
	// MaxRoutes caps the discovered routes the listener serves (1 to
	// 10000; default 100). Each runs a Consul watch, one connection to
	// the agent (one per datacenter with failover), and Consul's agent
	// refuses a client more than limits.http_max_conns_per_client (200 by
	// default) connections: tags beyond the cap, in service and tag order,
	// are shown as over_limit and run nothing.
	MaxRoutes int
}

// Protocol is what a listener speaks to its clients.
type Protocol string

const (
	ProtocolHTTP Protocol = "http" // HTTP/1.1 and h2c, routed by host and path
	ProtocolTCP  Protocol = "tcp"  // bytes, to one service
)

// Protocols lists every Protocol, in documentation order.
func Protocols() []Protocol { return []Protocol{ProtocolHTTP, ProtocolTCP} }

// Route sends matching HTTP requests to a service. It is written as
// `route "[host]/path-prefix" { service = "name" }`; route labels are
// unique within a listener after the host is lowercased.
type Route struct {
	// Host is the lowercased host to match; "" matches any host.
	Host string
	// PathPrefix is the path prefix to match; it begins with "/".
	PathPrefix string
	// Service is the target service name, never empty.
	Service string
	// MaxBodyBytes bounds a request body: a larger Content-Length is
	// answered 413 at once, and a streamed body that grows beyond it ends
	// in 413 (or a closed connection if the answer has begun). Written as
	// a number of bytes or a string such as "10MiB". Default 0 (no bound).
	MaxBodyBytes int64
}

// Service is the balancing policy for one Consul service.
type Service struct {
	// Name is the Consul service name, never empty.
	Name string
	// Tag filters instances by Consul tag, shorthand for Tags with one
	// element. Default "" (no filter). At most one of Tag and Tags is set.
	Tag string
	// Tags: only instances carrying every one of these Consul tags
	// (Consul compares them case-insensitively). Default none; each
	// element non-empty.
	Tags []string
	// PassingOnly makes instances whose Consul health is warning
	// ineligible; they stay listed with the reason "consul warning
	// (passing_only)". Default false: passing and warning instances serve.
	PassingOnly bool
	// NodeMeta: only instances on nodes whose node meta holds every one
	// of these pairs (Consul's node-meta parameter). Keys are 1 to 128
	// letters, digits, '_' and '-' (Consul's own rule), values at most
	// 512 bytes. Default none (nil).
	NodeMeta map[string]string
	// Filter is a Consul filter expression over the service's health
	// entries (Consul's filter parameter), applied by Consul; Consul
	// checks its syntax, and a bad one shows as the service's Consul
	// error. Default "" (none).
	Filter string
	// Failover is nil when the service has no failover block.
	Failover *Failover
	// BackupTag marks backup instances: those carrying this tag (compared
	// case-insensitively, as Consul compares tags) serve only while no
	// other instance of their datacenter is eligible. Default "" (off).
	BackupTag string
	// PanicThreshold turns on panic mode: while fewer than this percentage
	// of the instances Consul admits are eligible because of sluice's own
	// probes and ejections, those verdicts are ignored. 0 to 100; default
	// 0 (off).
	PanicThreshold int
	// Strategy is one of balance.Implemented. Default
	// "weighted_round_robin".
	Strategy string
	// WeightKey is the service meta key holding an instance's weight.
	// Default "weight"; never empty.
	WeightKey string
	// SlowStart ramps a new instance's share up over this long. Default 0
	// (off).
	SlowStart time.Duration
	// Sticky is nil when the service has no sticky block.
	Sticky *Sticky
	// HealthCheck is nil when the service has no health_check block.
	HealthCheck *HealthCheck
	// Passive is nil when the service has no passive block.
	Passive *Passive
	// ResponseHeaderTimeout bounds the wait for an instance's response
	// headers, from the moment the request body has been sent; the
	// instance is blamed when it runs out. Default 60s; greater than 0.
	ResponseHeaderTimeout time.Duration
	// ResponseBodyTimeout is how long to wait for the next byte of an
	// instance's response body; then the connection is closed and the
	// instance blamed. Default 60s; greater than 0.
	ResponseBodyTimeout time.Duration
	// Retry is always set; without a retry block it holds the defaults.
	Retry Retry
	// TLS is nil when the service has no tls block: sluice speaks plain
	// HTTP (or TCP) to its instances. With one, it speaks TLS to them,
	// health checks included.
	TLS *ServiceTLS
	// Connect makes the service a Consul Connect destination: sluice
	// watches /v1/health/connect/<name> (its sidecars and Connect-native
	// instances) and dials them with mutual TLS as the connect block's
	// identity, honouring intentions. Default false. Not with a tls block
	// (Connect brings its own) nor a failover block.
	Connect bool
}

// Connect is sluice's identity in the Consul service mesh.
type Connect struct {
	// Service is the identity sluice presents (its leaf certificate is
	// issued for it; intentions name it as the source). The Consul token
	// needs service:write on it. Default "sluice".
	Service string
}

// Failover lists the datacenters whose instances serve, in this order,
// while no instance of the local datacenter is eligible.
type Failover struct {
	// Datacenters are Consul datacenter names: at least one, unique, each
	// of letters, digits, '_' and '-', none the consul block's datacenter.
	Datacenters []string
}

// Sticky is session affinity.
type Sticky struct {
	// Mode is one of balance.StickyModes. Default balance.StickyCookie.
	Mode balance.StickyMode
	// Cookie is the affinity cookie's name, an RFC 6265 token. Default
	// "sluice_" + the service name. Checked when mode is "cookie" or when
	// written explicitly.
	Cookie string
	// Header is the request header carrying the affinity key, an RFC 9110
	// token. Required when mode is "header".
	Header string
	// TTL is how long affinity lasts. Default 1h; greater than 0.
	TTL time.Duration
	// Secret keys the cookie value. Default "", meaning the caller
	// generates one at start.
	Secret string
}

// HealthCheck is an active probe of every instance.
type HealthCheck struct {
	// Type is proxy.ProbeHTTP (default) or proxy.ProbeTCP.
	Type proxy.ProbeType
	// Path is the http probe's request path; it begins with "/".
	// Default "/health" for http; always "" for tcp, where setting it is
	// an error.
	Path string
	// Interval between probes. Default 2s; at least 100ms.
	Interval time.Duration
	// Timeout of one probe. Default 1s; greater than 0 and at most
	// Interval.
	Timeout time.Duration
	// Rise consecutive successes mark an instance up. Default 2; 1 to 100.
	Rise int
	// Fall consecutive failures mark an instance down. Default 3; 1 to 100.
	Fall int
}

// Passive ejects instances that fail real traffic.
type Passive struct {
	// ConsecutiveFailures eject an instance. Default 5; 1 to 1000.
	ConsecutiveFailures int
	// EjectionTime is how long an ejected instance stays out. Default 30s;
	// greater than 0.
	EjectionTime time.Duration
	// MaxEjectionTime caps the ejection time, which doubles for each
	// ejection that follows soon after the last. Default the larger of
	// 300s and EjectionTime; when written, at least EjectionTime.
	MaxEjectionTime time.Duration
	// MaxEjectionPercent caps the share of a pool ejected at once.
	// Default 50; 0 to 100.
	MaxEjectionPercent int
}

// Retry is the failover policy for one request.
type Retry struct {
	// Attempts is the total number of tries per request, the first
	// included. Default 2; 1 to 10.
	Attempts int
	// PerTryTimeout bounds each try. Default 0, meaning no bound; never
	// negative.
	PerTryTimeout time.Duration
}

// Parse parses and validates src, which was read from filename (used only
// in diagnostics). It returns every syntax error, or else every validation
// error, in discovery order; FormatDiagnostics sorts them. The Config is nil
// exactly when the diagnostics contain an error. A file beyond the limits
// (MaxFileSize, MaxNesting, MaxNumberLength) yields only the diagnostics
// about them.
func Parse(filename string, src []byte, opts Options) (*Config, hcl.Diagnostics) {
	if diags := prescan(filename, src); diags.HasErrors() {
		return nil, diags
	}
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	d := newDecoder(filename, opts)
	cfg := d.file(file.Body)
	diags = append(diags, d.diags...)
	if diags.HasErrors() {
		return nil, diags
	}
	return cfg, diags
}

// Load reads filename and parses it with Parse. A file that cannot be read
// yields one error diagnostic with a nil Subject and a Context naming the
// file. At most MaxFileSize+1 bytes are read, so a larger file is refused
// without reading all of it.
func Load(filename string, opts Options) (*Config, hcl.Diagnostics) {
	src, err := readAtMost(filename, MaxFileSize+1)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "Cannot read configuration file",
			Detail:   err.Error(),
			Context:  &hcl.Range{Filename: filename},
		}}
	}
	return Parse(filename, src, opts)
}

// readAtMost reads up to limit bytes of filename.
func readAtMost(filename string, limit int64) ([]byte, error) {
	f, err := os.Open(filename)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}
