package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// testPKI is a CA with a server and a client certificate it signed, and a
// second CA that signed nothing, as PEM files.
type testPKI struct {
	ca, wrongCA        string
	serverCert, server string // certificate, key
	clientCert, client string // certificate, key
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	ca, wrong := newTestCA(t, "e2e CA"), newTestCA(t, "e2e wrong CA")
	server := ca.issue("server", "server.dc1.consul", "localhost", "127.0.0.1")
	client := ca.issue("client", "sluice")
	return testPKI{
		ca: ca.File, wrongCA: wrong.File,
		serverCert: server.certFile, server: server.keyFile,
		clientCert: client.certFile, client: client.keyFile,
	}
}

// startConsulTLS runs a dev agent that serves its HTTP API over TLS on
// HTTPSAddr, requiring a client certificate signed by pki.ca, and over
// plain HTTP on Addr for the test's own calls.
func startConsulTLS(t *testing.T, pki testPKI) (c *consulAgent, httpsAddr string) {
	t.Helper()
	c = &consulAgent{t: t, ports: [4]int{freePort(t), freePort(t), freePort(t), freePort(t)}}
	httpsPort := freePort(t)
	c.Addr = fmt.Sprintf("127.0.0.1:%d", c.ports[0])
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	c.Client = client
	hcl := fmt.Sprintf(`
ports {
  https    = %d
  grpc_tls = -1
}
tls {
  defaults {
    ca_file         = %q
    cert_file       = %q
    key_file        = %q
    verify_incoming = true
    verify_outgoing = true
  }
}
`, httpsPort, pki.ca, pki.serverCert, pki.server)
	c.proc = startProcess(t, binary(t, "CONSUL_BIN", "consul"), "agent", "-dev",
		"-node", consulNode, "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", fmt.Sprint(c.ports[0]), "-serf-lan-port", fmt.Sprint(c.ports[1]),
		"-serf-wan-port", fmt.Sprint(c.ports[2]), "-server-port", fmt.Sprint(c.ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-hcl", hcl, "-log-level", "warn")
	waitFor(t, 30*time.Second, "consul leader", func() bool {
		leader, err := c.Client.Status().Leader()
		if err != nil || leader == "" {
			return false
		}
		nodes, _, err := c.Client.Catalog().Nodes(nil)
		return err == nil && len(nodes) > 0
	})
	return c, fmt.Sprintf("127.0.0.1:%d", httpsPort)
}

// startSluiceTLS runs sluice with consulBlock, one http listener routing
// "/" to service web, and returns without waiting for /healthz.
func startSluiceTLS(t *testing.T, consulBlock string) *sluice {
	t.Helper()
	s := &sluice{
		t:      t,
		Front:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		Admin:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		client: &http.Client{Timeout: 10 * time.Second},
		Path:   filepath.Join(t.TempDir(), "sluice.hcl"),
	}
	src := fmt.Sprintf(`%s
admin {
  address = %q
}
listener "public" {
  address = %q
  route "/" {
    service = "web"
  }
}
`, consulBlock, s.Admin, s.Front)
	if err := os.WriteFile(s.Path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	s.proc = startProcess(t, binary(t, "SLUICE_BIN", "sluice"), "run", "-config", s.Path)
	return s
}

func TestConsulTLS(t *testing.T) {
	pki := newTestPKI(t)
	consul, httpsAddr := startConsulTLS(t, pki)
	b := startBackend(t, "a")
	consul.register("web", "web-a", b.addr(), nil)
	const token = "e2e-secret-token-4f1c" // the dev agent has no ACLs: it ignores it
	block := func(ca string) string {
		return fmt.Sprintf(`consul {
  address = "https://%s"
  token   = "`+token+`"
  tls {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
  }
}`, httpsAddr, ca, pki.clientCert, pki.client)
	}

	t.Run("verified", func(t *testing.T) {
		s := startSluiceTLS(t, block(pki.ca))
		waitFor(t, 15*time.Second, "sluice /healthz 200", func() bool { return s.healthz() == http.StatusOK })
		status, backend, _, err := s.get("/")
		if err != nil || status != http.StatusOK || backend != "a" {
			t.Fatalf("GET / through sluice: want 200 from a, have %d from %q (%v)", status, backend, err)
		}
		for _, path := range []string{"/v1/services", "/v1/status", "/metrics"} {
			resp, err := s.client.Get("http://" + s.Admin + path)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
			}
			if strings.Contains(string(body), token) {
				t.Errorf("GET %s shows the token", path)
			}
		}
		if strings.Contains(s.proc.out.String(), token) {
			t.Error("the log shows the token")
		}
	})

	t.Run("wrong CA", func(t *testing.T) {
		s := startSluiceTLS(t, block(pki.wrongCA))
		want := "consul TLS: certificate verification failed (ca_file " + pki.wrongCA + ")"
		var consulErr string
		waitFor(t, 15*time.Second, "consul_error on web", func() bool {
			if s.healthz() == 0 {
				return false // not listening yet
			}
			consulErr = s.service("web").ConsulError
			return consulErr != ""
		})
		if !strings.Contains(consulErr, want) {
			t.Errorf("consul_error: want it to contain %q, have %q", want, consulErr)
		}
		if have := s.healthz(); have != http.StatusServiceUnavailable {
			t.Errorf("/healthz: want 503, have %d", have)
		}
		waitFor(t, 10*time.Second, "the failure in sluice's log", func() bool { return strings.Contains(s.proc.out.String(), want) })
		select {
		case <-s.proc.exited:
			t.Fatalf("sluice exited: %v", s.proc.err)
		default:
		}
	})

	t.Run("no client certificate", func(t *testing.T) {
		// The agent verifies incoming HTTPS connections.
		s := startSluiceTLS(t, fmt.Sprintf("consul {\n  address = \"https://%s\"\n  tls {\n    ca_file = %q\n  }\n}", httpsAddr, pki.ca))
		want := "consul TLS: the agent refused the handshake (no cert_file)"
		var consulErr string
		waitFor(t, 15*time.Second, "consul_error on web", func() bool {
			if s.healthz() == 0 {
				return false
			}
			consulErr = s.service("web").ConsulError
			return consulErr != ""
		})
		if !strings.Contains(consulErr, want) {
			t.Errorf("consul_error: want it to contain %q, have %q", want, consulErr)
		}
		if have := s.healthz(); have != http.StatusServiceUnavailable {
			t.Errorf("/healthz: want 503, have %d", have)
		}
	})
}
