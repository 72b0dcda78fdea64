package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
)

// recordingConsul answers /v1/health/service/web with an empty set and
// records each request's query and token.
type recordingConsul struct {
	mu      sync.Mutex
	queries []url.Values
	tokens  []string
}

func (rc *recordingConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/health/service/web" {
		http.NotFound(w, r)
		return
	}
	rc.mu.Lock()
	rc.queries = append(rc.queries, r.URL.Query())
	rc.tokens = append(rc.tokens, r.Header.Get("X-Consul-Token"))
	rc.mu.Unlock()
	w.Header().Set("X-Consul-Index", "7")
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte("[]"))
}

func (rc *recordingConsul) first(t *testing.T) (url.Values, string) {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.queries) == 0 {
		t.Fatal("consul got no query")
	}
	return rc.queries[0], rc.tokens[0]
}

// firstUpdate runs a watcher built the way a service builds it and
// returns its first update.
func firstUpdate(t *testing.T, h discovery.HealthAPI, c config.Consul) discovery.Update {
	t.Helper()
	svc := &config.Service{Name: "web", WeightKey: "weight"}
	w := discovery.NewWatcher(h, watchOptions("web", svc, c, nil))
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan discovery.Update)
	done := make(chan struct{})
	go func() { w.Run(ctx, out); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case u := <-out:
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no update within 10s")
		return discovery.Update{}
	}
}

func TestConsulClientSendsNamespacePartitionAndToken(t *testing.T) {
	// The api package would fill these from the process environment;
	// the consul block's settings must win.
	t.Setenv("CONSUL_HTTP_TOKEN", "env-token")
	t.Setenv("CONSUL_NAMESPACE", "env-ns")
	t.Setenv("CONSUL_PARTITION", "env-part")
	for _, tc := range []struct {
		name                  string
		c                     config.Consul
		wantNS, wantPartition string
		wantToken             string
	}{
		{"set", config.Consul{Namespace: "team-a", Partition: "part-1", Token: "block-token", Datacenter: "dc1", Stale: true},
			"team-a", "part-1", "block-token"},
		{"unset", config.Consul{Stale: true}, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := &recordingConsul{}
			srv := httptest.NewServer(rc)
			defer srv.Close()
			tc.c.Address = srv.URL
			h, err := newConsulHealth(tc.c)
			if err != nil {
				t.Fatal(err)
			}
			if u := firstUpdate(t, h, tc.c); u.Err != nil || u.Index != 7 {
				t.Fatalf("want an empty set at index 7, have %+v", u)
			}
			q, token := rc.first(t)
			for name, want := range map[string]string{"ns": tc.wantNS, "partition": tc.wantPartition} {
				if have, sent := q.Get(name), q.Has(name); have != want || sent != (want != "") {
					t.Errorf("query %s: want %q (sent %t), have %q (sent %t) in %s", name, want, want != "", have, sent, q.Encode())
				}
			}
			if token != tc.wantToken {
				t.Errorf("X-Consul-Token: want %q, have %q", tc.wantToken, token)
			}
			if tc.c.Datacenter != "" && q.Get("dc") != tc.c.Datacenter {
				t.Errorf("dc: want %q, have %q", tc.c.Datacenter, q.Get("dc"))
			}
		})
	}
}

// writePEM writes cert as a PEM file in dir.
func writePEM(t *testing.T, dir, name string, cert *x509.Certificate) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// selfSigned makes a fresh self-signed CA certificate.
func selfSigned(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wrong CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestConsulClientTLS(t *testing.T) {
	rc := &recordingConsul{}
	quiet := log.New(io.Discard, "", 0) // the refused handshakes are expected
	srv := httptest.NewUnstartedServer(rc)
	srv.Config.ErrorLog = quiet
	srv.StartTLS()
	defer srv.Close()
	dir := t.TempDir()
	goodCA := writePEM(t, dir, "good-ca.pem", srv.Certificate())
	wrongCA := writePEM(t, dir, "wrong-ca.pem", selfSigned(t)) // did not sign the server's certificate

	t.Run("right CA", func(t *testing.T) {
		c := config.Consul{Address: srv.URL, Stale: true, TLS: config.ConsulTLS{CAFile: goodCA}}
		h, err := newConsulHealth(c)
		if err != nil {
			t.Fatal(err)
		}
		if u := firstUpdate(t, h, c); u.Err != nil {
			t.Fatalf("want an answer, have %v", u.Err)
		}
	})
	t.Run("wrong CA", func(t *testing.T) {
		c := config.Consul{Address: srv.URL, Stale: true, TLS: config.ConsulTLS{CAFile: wrongCA}}
		h, err := newConsulHealth(c)
		if err != nil {
			t.Fatal(err)
		}
		u := firstUpdate(t, h, c)
		want := "consul TLS: certificate verification failed (ca_file " + wrongCA + "): "
		if u.Err == nil || !strings.Contains(u.Err.Error(), want) {
			t.Fatalf("want an error containing %q, have %v", want, u.Err)
		}
	})
	t.Run("client certificate required", func(t *testing.T) {
		mtls := httptest.NewUnstartedServer(rc)
		// TLS 1.2: the refusal ends the handshake itself. Over TLS 1.3
		// the client's handshake completes first and the alert races with
		// its request write, so net/http may report the write's error
		// ("use of closed network connection") instead of the alert.
		mtls.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert, MaxVersion: tls.VersionTLS12}
		mtls.Config.ErrorLog = quiet
		mtls.StartTLS()
		defer mtls.Close()
		ca := writePEM(t, dir, "mtls-ca.pem", mtls.Certificate())
		c := config.Consul{Address: mtls.URL, Stale: true, TLS: config.ConsulTLS{CAFile: ca}}
		h, err := newConsulHealth(c)
		if err != nil {
			t.Fatal(err)
		}
		u := firstUpdate(t, h, c)
		want := "consul TLS: the agent refused the handshake (no cert_file): "
		if u.Err == nil || !strings.Contains(u.Err.Error(), want) {
			t.Fatalf("want an error containing %q, have %v", want, u.Err)
		}
	})
}

func TestIsLocalAgent(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8500": true, "http://127.0.0.1:8500": true, "https://localhost:8501": true, "[::1]:8500": true,
		"unix:///var/run/consul.sock": true, "127.9.9.9": true, "localhost": true,
		"10.0.0.1:8500": false, "consul.service:8500": false, "https://[2001:db8::1]:8501": false, "": false,
	} {
		if have := isLocalAgent(addr); have != want {
			t.Errorf("isLocalAgent(%q) = %v, want %v", addr, have, want)
		}
	}
}
