package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sluice-lb/sluice/proxy/certs"
)

// ListenerTLS is a listener's tls block. Every file it names is read at
// load to check it (certs.CheckPair, certs.CheckCAFile) and read again by
// the runtime at start and on every reload, so a certificate replaced
// under the same name is picked up by a reload although the Config does
// not change; nothing here holds file content.
type ListenerTLS struct {
	// Mode is TLSTerminate (default) or TLSPassthrough (tcp listeners
	// only).
	Mode TLSMode
	// Certificates are the certificate blocks in file order; at least one
	// when terminating, none for passthrough. The first is the default:
	// it is presented when the client's server name (SNI) matches no
	// certificate's names exactly or by a one-label wildcard, and when
	// the client sends none (see certs.Set).
	Certificates []certs.Pair
	// MinVersion is tls.VersionTLS12 (written "1.2", the default,
	// certs.DefaultMinVersion) or tls.VersionTLS13 ("1.3"); 0 for
	// passthrough.
	MinVersion uint16
	// ClientCAFile is a PEM file of the authorities that issue client
	// certificates, holding at least one certificate; when set, a client
	// certificate is asked for and verified. Default "" (mutual TLS off).
	ClientCAFile string
	// RequireClientCert refuses clients without a valid certificate;
	// without it a client certificate is optional (but verified when
	// given). Default false; true requires ClientCAFile.
	RequireClientCert bool
}

// TLSMode is what a listener does with TLS.
type TLSMode string

const (
	// TLSTerminate decrypts: an http listener serves HTTP/1.1 and HTTP/2
	// over TLS, a tcp listener forwards the plain bytes to its service.
	TLSTerminate TLSMode = "terminate"
	// TLSPassthrough (tcp listeners only) reads the server name from the
	// client's ClientHello, picks the service by it (SNIRoutes) and
	// forwards every byte untouched: the instances terminate TLS.
	TLSPassthrough TLSMode = "passthrough"
)

// TLSModes lists every TLSMode, in documentation order.
func TLSModes() []TLSMode { return []TLSMode{TLSTerminate, TLSPassthrough} }

// ServerOptions translates a terminating tls block for certs.LoadServer;
// nextProtos are the ALPN protocols the listener offers (the runtime
// knows them: "h2" and "http/1.1" for http, none for tcp). The slices are
// the caller's.
func (t *ListenerTLS) ServerOptions(nextProtos []string) certs.ServerOptions {
	return certs.ServerOptions{
		Pairs:             slices.Clone(t.Certificates),
		MinVersion:        t.MinVersion,
		ClientCAFile:      t.ClientCAFile,
		RequireClientCert: t.RequireClientCert,
		NextProtos:        slices.Clone(nextProtos),
	}
}

// SNIRoute sends a passthrough tcp listener's connections whose server
// name matches Host to Service. It is written as
// `route "HOST" { service = "name" }`.
type SNIRoute struct {
	// Host is a lowercased DNS name matched exactly, a wildcard
	// "*.example.com" matching exactly one more label ("a.example.com",
	// not "example.com" nor "a.b.example.com"), or "*", the default for
	// every other name and for clients that send none. An exact name
	// wins over a wildcard. Unique within the listener; without a "*"
	// route, a connection whose name matches nothing is closed.
	Host string
	// Service is the target service name, never empty.
	Service string
}

// ServiceTLS is a service's tls block: sluice speaks TLS to the service's
// instances, for requests and for health checks. Files are checked at
// load and read again by the runtime whenever it builds the client
// configuration.
type ServiceTLS struct {
	// CAFile is a PEM file of the authorities trusted to sign the
	// instances' certificates, holding at least one certificate. Default
	// "" (the system's roots).
	CAFile string
	// ServerName is the name sent as SNI and checked against every
	// instance's certificate. Default "" (each instance's own host, as
	// Consul gives it).
	ServerName string
	// InsecureSkipVerify turns off checking the instances' certificates.
	// Default false.
	InsecureSkipVerify bool
	// CertFile and KeyFile are the client certificate sluice presents to
	// the instances and its private key, PEM; both or neither (default).
	CertFile string
	KeyFile  string
}

// ClientOptions translates the tls block for certs.LoadClient.
func (t *ServiceTLS) ClientOptions() certs.ClientOptions {
	return certs.ClientOptions{
		CAFile: t.CAFile, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify,
		CertFile: t.CertFile, KeyFile: t.KeyFile,
	}
}

// tlsVersions maps min_version's values to crypto/tls versions.
var tlsVersions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// listenerTLS decodes a listener's tls block. isHTTP says the listener is
// an http one (mode is then an error); ok is false when the mode is
// invalid or misplaced, so that what depends on it goes unreported.
func (d *decoder) listenerTLS(b *hcl.Block, listener string, isHTTP bool) (t *ListenerTLS, ok bool) {
	t = &ListenerTLS{Mode: TLSTerminate}
	c := d.content(b.Body, listenerTLSSchema)
	as := c.Attributes
	ok = true
	if a := as["mode"]; a != nil {
		if isHTTP {
			d.errorf(a.NameRange, "Unexpected mode",
				"mode is only valid in tcp listeners; http listener %q terminates TLS", listener)
			ok = false
		} else {
			ok = enum(d, as, "mode", &t.Mode, TLSModes())
		}
	}
	certBlocks := c.Blocks.OfType("certificate")
	if ok && t.Mode == TLSPassthrough {
		for _, cb := range certBlocks {
			d.errorf(cb.DefRange, "Unexpected certificate block",
				"listener %q passes TLS through to its instances, which present their own certificates", listener)
		}
		for _, name := range []string{"min_version", "client_ca_file", "require_client_cert"} {
			if a := as[name]; a != nil {
				d.errorf(a.NameRange, "Unexpected "+name,
					"%s is only valid when TLS is terminated; listener %q passes it through", name, listener)
			}
		}
		return t, true
	}

	for _, cb := range certBlocks {
		if p, ok := d.certificate(cb); ok {
			t.Certificates = append(t.Certificates, p)
		}
	}
	if len(certBlocks) == 0 && ok {
		d.errorf(b.DefRange, "Missing certificate",
			`the tls block of listener %q needs at least one certificate block, such as certificate { cert_file = "cert.pem" key_file = "key.pem" }`,
			listener)
	}
	version := "1.2"
	t.MinVersion = certs.DefaultMinVersion
	if d.str(as, "min_version", &version, oneOf("1.2", "1.3")) {
		t.MinVersion = tlsVersions[version]
	}
	caOK := d.str(as, "client_ca_file", &t.ClientCAFile, nonEmpty)
	if caOK && t.ClientCAFile != "" {
		d.checkFile(as["client_ca_file"], t.ClientCAFile, certs.CheckCAFile(t.ClientCAFile))
	}
	if d.boolean(as, "require_client_cert", &t.RequireClientCert) && caOK &&
		t.RequireClientCert && t.ClientCAFile == "" {
		d.errorf(as["require_client_cert"].Expr.Range(), "Missing client_ca_file",
			"require_client_cert needs client_ca_file, the authorities that issue client certificates")
	}
	return t, ok
}

// certificate decodes a certificate block and checks that its files form
// a key pair; ok is false when a diagnostic was recorded.
func (d *decoder) certificate(b *hcl.Block) (p certs.Pair, ok bool) {
	as := d.content(b.Body, certificateSchema).Attributes
	ok = true
	for _, f := range []struct {
		name, what string
		dst        *string
	}{
		{"cert_file", "the PEM certificate chain, leaf first", &p.CertFile},
		{"key_file", "the PEM private key of the certificate", &p.KeyFile},
	} {
		if as[f.name] == nil {
			d.errorf(b.DefRange, "Missing "+f.name, "a certificate block needs %s, %s", f.name, f.what)
			ok = false
		} else if !d.str(as, f.name, f.dst, nonEmpty) {
			ok = false
		}
	}
	if ok {
		ok = d.checkPair(as, p.CertFile, p.KeyFile)
	}
	return p, ok
}

// checkPair loads certFile and keyFile, the values of as["cert_file"] and
// as["key_file"], as the runtime will, and reports a problem at the
// attribute of the file at fault (at cert_file when the two do not form
// a key pair).
func (d *decoder) checkPair(as hcl.Attributes, certFile, keyFile string) bool {
	err := certs.CheckPair(certFile, keyFile)
	var fe *certs.FileError
	var pe *certs.PairError
	switch {
	case err == nil:
		return true
	case errors.As(err, &fe) && fe.File == keyFile && fe.File != certFile:
		d.checkFile(as["key_file"], keyFile, err)
	case errors.As(err, &pe):
		d.invalid(as["cert_file"], fmt.Sprintf("and key_file %s must form a key pair (%v)", quote(keyFile), pe.Err), quote(certFile))
	default:
		d.checkFile(as["cert_file"], certFile, err)
	}
	return false
}

// checkFile reports err, a certs error about file, the value of a, at
// a's value.
func (d *decoder) checkFile(a *hcl.Attribute, file string, err error) {
	if err == nil {
		return
	}
	var fe *certs.FileError
	if errors.As(err, &fe) {
		err = fe.Err
	}
	d.invalid(a, fmt.Sprintf("must name a usable PEM file (%v)", err), quote(file))
}

// sniRoute decodes a passthrough listener's route block, whose label is a
// server name; ok is false when the label is malformed or repeats one in
// seen (keyed by the lowercased name).
func (d *decoder) sniRoute(b *hcl.Block, seen map[string]hcl.Range) (r SNIRoute, ok bool) {
	label, labelRange := b.Labels[0], b.LabelRanges[0]
	if problem := sniHost(label); problem != "" {
		d.errorf(labelRange, "Invalid route", "route label %s; got %s", problem, quote(label))
		return r, false
	}
	r.Host = strings.ToLower(label)
	if first, dup := seen[r.Host]; dup {
		d.errorf(b.DefRange, "Duplicate route", "route %q is already defined at %s", label, pos(first))
		return r, false
	}
	seen[r.Host] = b.DefRange
	as := d.content(b.Body, sniRouteSchema).Attributes
	if as["service"] == nil {
		d.errorf(b.DefRange, "Missing service", "route %q needs a service attribute", label)
		return r, true
	}
	d.serviceRef(as, &r.Service)
	return r, true
}

// sniHost accepts a passthrough route's label: "*", a DNS name, or "*."
// followed by a DNS name.
func sniHost(s string) string {
	const problem = `must be a DNS name such as "db.example.com", a wildcard such as "*.example.com", or "*" (the default)`
	if s == "*" {
		return ""
	}
	name := strings.TrimPrefix(s, "*.")
	if _, err := netip.ParseAddr(name); err == nil {
		return "must be a DNS name, not an IP address (clients send no server name for an address)"
	}
	if !dnsName(name) {
		return problem
	}
	return ""
}

// dnsName reports whether s is a DNS name of letters, digits, hyphens and
// underscores in dot-separated labels of 1 to 63 bytes, at most 253 bytes
// in all, without a trailing dot.
func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// serviceTLS decodes a service's tls block, if any, and checks its files.
func (d *decoder) serviceTLS(b *hcl.Block) *ServiceTLS {
	if b == nil {
		return nil
	}
	t := &ServiceTLS{}
	as := d.content(b.Body, serviceTLSSchema).Attributes
	if d.str(as, "ca_file", &t.CAFile, nonEmpty) && t.CAFile != "" {
		d.checkFile(as["ca_file"], t.CAFile, certs.CheckCAFile(t.CAFile))
	}
	d.str(as, "server_name", &t.ServerName, hostName)
	d.boolean(as, "insecure_skip_verify", &t.InsecureSkipVerify)
	certOK := d.str(as, "cert_file", &t.CertFile, nonEmpty)
	keyOK := d.str(as, "key_file", &t.KeyFile, nonEmpty)
	switch {
	case !certOK || !keyOK:
	case t.CertFile != "" && t.KeyFile == "":
		d.invalid(as["cert_file"], "needs a key_file with the certificate's private key", quote(t.CertFile))
	case t.KeyFile != "" && t.CertFile == "":
		d.invalid(as["key_file"], "needs a cert_file with the client certificate", quote(t.KeyFile))
	case t.CertFile != "":
		d.checkPair(as, t.CertFile, t.KeyFile)
	}
	return t
}

// hostName accepts an IP address or a host name.
func hostName(s string) string {
	if !validHost(s) {
		return "must be a host name or an IP address"
	}
	return ""
}

// wholeSeconds accepts durations without a fraction of a second.
func wholeSeconds(v time.Duration) string {
	if v%time.Second != 0 {
		return "must be a whole number of seconds"
	}
	return ""
}
