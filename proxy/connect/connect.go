// Package connect holds what sluice needs to dial Consul Connect (service
// mesh) instances: its own leaf certificate, the mesh's roots, and the
// client TLS configuration of each destination service, which presents
// the current leaf and verifies the instance's chain against the current
// roots and its SPIFFE identity against the service dialled.
//
// Rotation contract: a Material is long-lived and so are the tls.Configs
// it makes. SetLeaf and SetRoots swap atomic pointers; a handshake reads
// whichever leaf and roots are current when it runs. The configs never
// change identity, so connections pooled by *tls.Config are neither
// rebuilt nor dropped by a rotation: established connections keep the
// certificates they were made with, new ones use the new ones.
package connect

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultNamespace is the namespace of a SPIFFE identity when sluice's
// Consul namespace is unset (Consul CE has only this one).
const DefaultNamespace = "default"

// Leaf is sluice's own certificate as the agent issued it.
type Leaf struct {
	Cert     tls.Certificate
	URI      string // its SPIFFE URI SAN: spiffe://<trust domain>/ns/<ns>/dc/<dc>/svc/<identity>
	Serial   string // as Consul writes it (colon-separated hex)
	NotAfter time.Time
}

// Roots are the mesh's trusted certificate authorities.
type Roots struct {
	Pool        *x509.CertPool
	TrustDomain string // lowercase, e.g. "7f2c...consul"
	Count       int    // certificates in Pool
	ActiveID    string // Consul's ID of the active root
}

// ParseLeaf parses a leaf certificate (PEM, possibly followed by its
// intermediates) and its private key. The first certificate must carry
// a spiffe URI SAN.
func ParseLeaf(certPEM, keyPEM, serial string) (*Leaf, error) {
	cert, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		return nil, fmt.Errorf("connect leaf: %w", err)
	}
	x, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("connect leaf: %w", err)
	}
	cert.Leaf = x
	uri := ""
	for _, u := range x.URIs {
		if u.Scheme == "spiffe" {
			uri = u.String()
			break
		}
	}
	if uri == "" {
		return nil, errors.New("connect leaf: no spiffe URI SAN")
	}
	return &Leaf{Cert: cert, URI: uri, Serial: serial, NotAfter: x.NotAfter}, nil
}

// ParseRoots parses the PEM root certificates the agent lists; an entry
// may hold several certificates. It fails when no certificate parses or
// trustDomain is empty.
func ParseRoots(trustDomain, activeID string, pems []string) (*Roots, error) {
	if trustDomain == "" {
		return nil, errors.New("connect roots: no trust domain")
	}
	r := &Roots{Pool: x509.NewCertPool(), TrustDomain: strings.ToLower(trustDomain), ActiveID: activeID}
	for _, p := range pems {
		rest := []byte(p)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("connect roots: %w", err)
			}
			r.Pool.AddCert(c)
			r.Count++
		}
	}
	if r.Count == 0 {
		return nil, errors.New("connect roots: no certificate")
	}
	return r, nil
}

// Material is the current leaf and roots. The zero value has neither;
// every method is safe for concurrent use.
type Material struct {
	leaf  atomic.Pointer[Leaf]
	roots atomic.Pointer[Roots]
}

// SetLeaf makes l the leaf presented from the next handshake on.
func (m *Material) SetLeaf(l *Leaf) { m.leaf.Store(l) }

// SetRoots makes r the roots checked from the next handshake on.
func (m *Material) SetRoots(r *Roots) { m.roots.Store(r) }

// Leaf returns the current leaf, nil before the first.
func (m *Material) Leaf() *Leaf { return m.leaf.Load() }

// Roots returns the current roots, nil before the first.
func (m *Material) Roots() *Roots { return m.roots.Load() }

// Ready reports whether both a leaf and roots are loaded.
func (m *Material) Ready() bool { return m.leaf.Load() != nil && m.roots.Load() != nil }

// ClientConfig returns a new client configuration for the instances of
// the Connect service named service in namespace ("" for
// DefaultNamespace). Make one per destination and keep it: connections
// are pooled by its identity. It presents the current leaf (none before
// the first, which the instance refuses) and replaces hostname
// verification (Consul's certificates carry no DNS names) with
// VerifyPeer against the current roots. NextProtos is empty and not nil:
// sidecars are L4 proxies, so no ALPN is offered (see proxy.ServiceOptions.TLS).
func (m *Material) ClientConfig(service, namespace string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{},
		// Hostname verification only: VerifyConnection checks the chain
		// and the identity.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if l := m.leaf.Load(); l != nil {
				return &l.Cert, nil
			}
			return &tls.Certificate{}, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyPeer(m.roots.Load(), cs.PeerCertificates, service, namespace)
		},
	}
}

// VerifyPeer checks an instance's certificate chain (leaf first, then any
// intermediates it sent) against roots, and that the leaf's SPIFFE URI
// SAN names service in namespace under the roots' trust domain:
// spiffe://<trust domain>[/ap/<partition>]/ns/<namespace>/dc/<dc>/svc/<service>.
func VerifyPeer(roots *Roots, chain []*x509.Certificate, service, namespace string) error {
	if roots == nil {
		return errors.New("connect: no roots loaded yet")
	}
	if len(chain) == 0 {
		return errors.New("connect: the instance presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots.Pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("connect: instance certificate: %w", err)
	}
	if namespace == "" {
		namespace = DefaultNamespace
	}
	// An X.509 SVID carries exactly one URI SAN (SPIFFE X.509-SVID 2):
	// a certificate naming two identities names none.
	uris := chain[0].URIs
	if len(uris) > 1 {
		return fmt.Errorf("connect: instance certificate has %d URI SANs, an SVID has one", len(uris))
	}
	if len(uris) == 0 || uris[0].Scheme != "spiffe" {
		return errors.New("connect: instance certificate has no spiffe URI SAN")
	}
	if err := checkIdentity(uris[0], roots.TrustDomain, service, namespace); err != nil {
		return fmt.Errorf("connect: instance certificate names %s, not service %q in namespace %q of trust domain %s",
			uris[0], service, namespace, roots.TrustDomain)
	}
	return nil
}

// checkIdentity matches one spiffe URI against the expected identity.
func checkIdentity(u *url.URL, trustDomain, service, namespace string) error {
	if !strings.EqualFold(u.Host, trustDomain) {
		return errors.New("trust domain")
	}
	// No user, port, query, fragment or percent-encoding: the identity
	// is compared as written, not as decoded.
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawPath != "" ||
		u.Opaque != "" || strings.Contains(u.Path, "%") {
		return errors.New("form")
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) == 8 && parts[0] == "ap" {
		parts = parts[2:]
	}
	if len(parts) != 6 || parts[0] != "ns" || parts[2] != "dc" || parts[4] != "svc" || parts[3] == "" {
		return errors.New("path")
	}
	if parts[1] != namespace || parts[5] != service {
		return errors.New("service")
	}
	return nil
}
