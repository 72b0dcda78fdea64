package connect

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

const trustDomain = "11111111-2222-3333-4444-555555555555.consul"

// ca is a Go-made mesh root.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

var serial int64

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newCA(t *testing.T, td string) *ca {
	t.Helper()
	k := newKey(t)
	serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "root " + td},
		URIs: []*url.URL{{Scheme: "spiffe", Host: td}}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &ca{cert: c, key: k, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// leaf issues a Consul-like leaf with uris as URI SANs (none when empty).
func (c *ca) leaf(t *testing.T, uris ...string) (tls.Certificate, string, string) {
	t.Helper()
	k := newKey(t)
	serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &k.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(k)
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}))
	pair, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	pair.Leaf, _ = x509.ParseCertificate(der)
	return pair, certPEM, keyPEM
}

func svcURI(td, ns, svc string) string {
	return "spiffe://" + td + "/ns/" + ns + "/dc/dc1/svc/" + svc
}

// TestVerifyPeer: the chain must lead to a current root and the SPIFFE
// URI SAN must name the service dialled in the roots' trust domain.
func TestVerifyPeer(t *testing.T) {
	root, other := newCA(t, trustDomain), newCA(t, trustDomain)
	roots, err := ParseRoots(strings.ToUpper(trustDomain), "r1", []string{root.pem})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		issuer  *ca
		uris    []string
		service string
		ns      string
		want    string // "" for success, else part of the error
	}{
		{"good", root, []string{svcURI(trustDomain, "default", "web")}, "web", "", ""},
		{"partition", root, []string{"spiffe://" + trustDomain + "/ap/part1/ns/default/dc/dc1/svc/web"}, "web", "", ""},
		{"namespace", root, []string{svcURI(trustDomain, "team-a", "web")}, "web", "team-a", ""},
		{"second URI", root, []string{"https://example.com/x", svcURI(trustDomain, "default", "web")}, "web", "", "2 URI SANs"},
		{"two identities", root, []string{svcURI(trustDomain, "default", "web"), svcURI(trustDomain, "default", "api")}, "api", "", "2 URI SANs"},
		{"escaped service", root, []string{svcURI(trustDomain, "default", "w%65b")}, "web", "", `not service "web"`},
		{"query", root, []string{svcURI(trustDomain, "default", "web") + "?x=1"}, "web", "", `not service "web"`},
		{"port", root, []string{"spiffe://" + trustDomain + ":8443/ns/default/dc/dc1/svc/web"}, "web", "", `not service "web"`},
		{"wrong svc", root, []string{svcURI(trustDomain, "default", "api")}, "web", "", `not service "web"`},
		{"svc prefix", root, []string{svcURI(trustDomain, "default", "web2")}, "web", "", `not service "web"`},
		{"wrong namespace", root, []string{svcURI(trustDomain, "team-a", "web")}, "web", "", `namespace "default"`},
		{"wrong trust domain", root, []string{svcURI("99999999-2222-3333-4444-555555555555.consul", "default", "web")}, "web", "", "trust domain"},
		{"agent URI", root, []string{"spiffe://" + trustDomain + "/agent/client/dc/dc1/id/x"}, "web", "", `not service "web"`},
		{"no URI SAN", root, nil, "web", "", "no spiffe URI SAN"},
		{"non-spiffe URI only", root, []string{"https://web"}, "web", "", "no spiffe URI SAN"},
		{"other root", other, []string{svcURI(trustDomain, "default", "web")}, "web", "", "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pair, _, _ := tc.issuer.leaf(t, tc.uris...)
			err := VerifyPeer(roots, []*x509.Certificate{pair.Leaf}, tc.service, tc.ns)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want success, have %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error with %q, have %v", tc.want, err)
			}
		})
	}
	if err := VerifyPeer(nil, nil, "web", ""); err == nil {
		t.Error("no roots: want an error")
	}
	if err := VerifyPeer(roots, nil, "web", ""); err == nil {
		t.Error("no certificate: want an error")
	}
}

// TestRotation: a handshake follows the current leaf and roots without a
// new tls.Config: a chain from a root no longer listed is refused, the
// new leaf is what the peer sees.
func TestRotation(t *testing.T) {
	oldRoot, newRoot := newCA(t, trustDomain), newCA(t, trustDomain)
	var m Material
	cfg := m.ClientConfig("web", "")
	if cfg.NextProtos == nil || len(cfg.NextProtos) != 0 {
		t.Errorf("NextProtos: want empty and not nil, have %#v", cfg.NextProtos)
	}
	setLeaf := func(c *ca) {
		_, certPEM, keyPEM := c.leaf(t, svcURI(trustDomain, "default", "sluice"))
		l, err := ParseLeaf(certPEM, keyPEM, "01")
		if err != nil {
			t.Fatal(err)
		}
		if l.URI != svcURI(trustDomain, "default", "sluice") {
			t.Fatalf("leaf URI %q", l.URI)
		}
		m.SetLeaf(l)
	}
	setRoots := func(cs ...*ca) {
		var pems []string
		for _, c := range cs {
			pems = append(pems, c.pem)
		}
		r, err := ParseRoots(trustDomain, "x", pems)
		if err != nil {
			t.Fatal(err)
		}
		m.SetRoots(r)
	}
	if m.Ready() {
		t.Fatal("ready without leaf and roots")
	}
	setLeaf(oldRoot)
	setRoots(oldRoot)
	if !m.Ready() {
		t.Fatal("not ready with leaf and roots")
	}
	// The server: a web instance whose leaf is from serverCA; it records
	// the client certificate's issuer.
	handshake := func(serverCA *ca) (string, error) {
		pair, _, _ := serverCA.leaf(t, svcURI(trustDomain, "default", "web"))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		issuer := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				issuer <- ""
				return
			}
			defer c.Close()
			s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAnyClientCert})
			if s.Handshake() != nil || len(s.ConnectionState().PeerCertificates) == 0 {
				issuer <- ""
				return
			}
			issuer <- s.ConnectionState().PeerCertificates[0].Issuer.CommonName
		}()
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			<-issuer
			return "", err
		}
		defer c.Close()
		return <-issuer, nil
	}
	if is, err := handshake(oldRoot); err != nil || is != oldRoot.cert.Subject.CommonName {
		t.Fatalf("before the rotation: %q %v", is, err)
	}
	// Rotation: both roots, then the new leaf; an old-root instance is
	// still trusted.
	setRoots(oldRoot, newRoot)
	setLeaf(newRoot)
	if is, err := handshake(oldRoot); err != nil || is != newRoot.cert.Subject.CommonName {
		t.Fatalf("during the rotation: %q %v", is, err)
	}
	// The old root is gone: its chains are refused.
	setRoots(newRoot)
	if _, err := handshake(oldRoot); err == nil {
		t.Fatal("a chain from a root no longer listed was accepted")
	}
	if _, err := handshake(newRoot); err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	root := newCA(t, trustDomain)
	if _, err := ParseRoots("", "x", []string{root.pem}); err == nil {
		t.Error("roots without trust domain accepted")
	}
	if _, err := ParseRoots(trustDomain, "x", []string{"junk"}); err == nil {
		t.Error("roots without certificates accepted")
	}
	_, certPEM, keyPEM := root.leaf(t)
	if _, err := ParseLeaf(certPEM, keyPEM, "1"); err == nil || !strings.Contains(err.Error(), "spiffe") {
		t.Errorf("leaf without URI SAN: %v", err)
	}
	if _, err := ParseLeaf("junk", keyPEM, "1"); err == nil {
		t.Error("junk leaf accepted")
	}
}
