package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-lb/sluice/proxy/certs/certstest"
)

// tlsConfigText is an admin block, an http listener at FRONT that
// terminates TLS with CERT/KEY (when tls is true) and routes to "web",
// and the web service speaking TLS to its instances with CA.
func tlsConfigText(tls bool, streams int) string {
	block := ""
	if tls {
		block = `
  tls {
    certificate {
      cert_file = "CERT"
      key_file  = "KEY"
    }
  }`
	}
	return fmt.Sprintf(`
admin {
  address = "ADMIN"
}
listener "public" {
  address = "FRONT"%s
  max_concurrent_streams = %d
  route "/" {
    service = "web"
  }
}
service "web" {
  tls {
    ca_file = "CA"
  }
}
`, block, streams)
}

// TestReloadTLS: a reload reads the TLS files again (a new certificate
// under the same name is presented to new connections; a service's CA
// file that did not change keeps its client config, and with it the
// pooled connections; one that changed replaces it), and a reload that
// takes TLS off a running address or changes its HTTP/2 stream limit
// fails with nothing changed. (A file that does not load is refused when
// the configuration is read: e2e TestTLSEdge.)
func TestReloadTLS(t *testing.T) {
	dir := t.TempDir()
	edge, internal := certstest.NewCA(t, "edge"), certstest.NewCA(t, "internal")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	caFile := filepath.Join(dir, "ca.pem")
	writeLeaf := func() *certstest.Leaf {
		l := edge.Issue(t, certstest.LeafOptions{Names: []string{"127.0.0.1"}})
		if err := os.WriteFile(certFile, l.CertPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, l.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		return l
	}
	writeCA := func(ca *certstest.CA) {
		if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	first := writeLeaf()
	writeCA(internal)
	fc := newFakeConsul()
	front, adm := freeAddr(t), freeAddr(t)
	text := func(tls bool, streams int) string {
		return configText(tlsConfigText(tls, streams), "FRONT", front, "ADMIN", adm, "CERT", certFile, "KEY", keyFile, "CA", caFile)
	}
	ta := startApp(t, fc, text(true, 100))
	serial := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", front, &tls.Config{RootCAs: edge.Pool(), ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	if have := serial(); have != first.Cert.SerialNumber.String() {
		t.Fatalf("serial %s, want %s", have, first.Cert.SerialNumber)
	}
	clientCfg := ta.services["web"].fwd.TLS
	if clientCfg == nil {
		t.Fatal("the service has no TLS to its instances")
	}

	// Same files, new certificate: the same configuration reloads it.
	second := writeLeaf()
	if err := ta.apply(ta.load(), true); err != nil {
		t.Fatal(err)
	}
	if have := serial(); have != second.Cert.SerialNumber.String() {
		t.Fatalf("after reload: serial %s, want %s", have, second.Cert.SerialNumber)
	}
	if ta.services["web"].fwd.TLS != clientCfg {
		t.Error("an unchanged CA file replaced the service's TLS config")
	}
	writeCA(certstest.NewCA(t, "internal 2"))
	if err := ta.apply(ta.load(), true); err != nil {
		t.Fatal(err)
	}
	if ta.services["web"].fwd.TLS == clientCfg {
		t.Error("a changed CA file kept the service's old TLS config")
	}

	for _, tc := range []struct {
		name, text, want string
	}{
		{"tls removed", text(false, 100), "the TLS of " + front + " changes from terminate to none"},
		{"streams changed", text(true, 50), "max_concurrent_streams of " + front + " changes from 100 to 50"},
	} {
		ta.write(tc.text)
		err := ta.apply(ta.load(), true)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
		if have := serial(); have != second.Cert.SerialNumber.String() {
			t.Fatalf("%s: the listener changed: serial %s", tc.name, have)
		}
	}
}
