package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// connectMesh is a dev agent with Connect on (the dev agent's default,
// intentions default allow) and instances of "web", each a backend with
// the built-in proxy as its sidecar on a pinned loopback port.
type connectMesh struct {
	t        *testing.T
	agent    *consulAgent
	backends map[string]*backend
	sidecars map[string]*process // service ID -> its `consul connect proxy`
	ports    map[string]int      // service ID -> sidecar port
}

func startConnectMesh(t *testing.T, ids ...string) *connectMesh {
	t.Helper()
	return startConnectMeshOn(t, startConsul(t), "", ids...)
}

// startConnectMeshOn is startConnectMesh on agent; token, when not "",
// is the sidecars' ACL token (agent.Client registers the instances).
func startConnectMeshOn(t *testing.T, agent *consulAgent, token string, ids ...string) *connectMesh {
	t.Helper()
	m := &connectMesh{t: t, agent: agent, backends: map[string]*backend{}, sidecars: map[string]*process{},
		ports: map[string]int{}}
	for _, id := range ids {
		b := startBackend(t, id)
		m.backends[id] = b
		port := freePort(t)
		m.ports[id] = port
		_, bp, _ := strings.Cut(b.addr(), ":")
		var p int
		fmt.Sscan(bp, &p)
		err := m.agent.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: id, Name: "web", Address: "127.0.0.1", Port: p,
			Check: &api.AgentServiceCheck{CheckID: "check-" + id, TTL: "1h", Status: api.HealthPassing},
			Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{
				Port: port,
				// A passing TTL check instead of the default TCP check
				// (every 10s): the sidecar is eligible at once, and a
				// killed one stays so, as a crashed instance would until
				// Consul notices.
				Checks: api.AgentServiceChecks{{CheckID: "check-" + id + "-sidecar", TTL: "1h", Status: api.HealthPassing}},
			}},
		})
		if err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
		args := []string{"connect", "proxy", "-sidecar-for", id, "-http-addr", m.agent.Addr, "-log-level", "warn"}
		if token != "" {
			args = append(args, "-token", token)
		}
		m.sidecars[id] = startProcess(t, binary(t, "CONSUL_BIN", "consul"), args...)
	}
	for id, port := range m.ports {
		waitFor(t, 20*time.Second, "sidecar of "+id+" listening", func() bool {
			c, err := netDial(fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	return m
}

// intention sets the intention sluice => web to action ("allow", "deny"),
// with the agent client's token.
func (m *connectMesh) intention(action string) {
	m.t.Helper()
	_, err := m.agent.Client.Connect().IntentionUpsert(&api.Intention{SourceName: "sluice", DestinationName: "web",
		Action: api.IntentionAction(action)}, nil)
	if err != nil {
		m.t.Fatalf("intention %s: %v", action, err)
	}
}

// connectConfig routes "/" of FRONT to web over Connect.
const connectConfig = `
connect {
  service = "sluice"
}
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
service "web" {
  connect = true
  passive {
    consecutive_failures = 1
  }
}
`

// connectStatus is the connect section of /v1/status.
type connectStatusJSON struct {
	Connect *struct {
		Identity        string `json:"identity"`
		LeafURI         string `json:"leaf_uri"`
		LeafSerial      string `json:"leaf_serial"`
		TrustDomain     string `json:"trust_domain"`
		ActiveRootID    string `json:"active_root_id"`
		Roots           int    `json:"roots"`
		LeafError       string `json:"leaf_error"`
		IntentionsError string `json:"intentions_error"`
	} `json:"connect"`
}

func (s *sluice) connectStatus() connectStatusJSON {
	s.t.Helper()
	var out connectStatusJSON
	s.adminJSON("/v1/status", &out)
	return out
}

// TestConnectIntentions: requests reach the backends over their sidecars
// (sluice's instances are the sidecars' addresses, the backends' own
// ports are never dialled); a deny intention turns the next request into
// 403 naming source and destination within 1 s, for a keep-alive client
// connected before the deny too, without ejecting any instance; allow
// brings 200 back within 1 s. A tcp listener to the same service works
// over the sidecars too, and closes its connections without a byte while
// denied.
func TestConnectIntentions(t *testing.T) {
	t.Parallel()
	m := startConnectMesh(t, "web-1", "web-2")
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := startSluiceConfig(t, m.agent.Addr, connectConfig+fmt.Sprintf(`
listener "mesh-tcp" {
  address  = %q
  protocol = "tcp"
  service  = "web"
}
`, tcpAddr))
	// overTCP sends one HTTP/1.1 request through the tcp listener and
	// returns what came back before the connection closed.
	overTCP := func() string {
		c, err := net.DialTimeout("tcp", tcpAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
		got, _ := io.ReadAll(c)
		return string(got)
	}

	// The instances are the sidecars.
	svc := s.service("web")
	if len(svc.Instances) != 2 {
		t.Fatalf("want the 2 sidecars, have %+v", svc.Instances)
	}
	for _, in := range svc.Instances {
		id := strings.TrimSuffix(strings.TrimPrefix(in.ID, consulNode+"/"), "-sidecar-proxy")
		if want := fmt.Sprintf("127.0.0.1:%d", m.ports[id]); in.Address != want {
			t.Errorf("instance %s: want the sidecar's address %s, have %s", in.ID, want, in.Address)
		}
		if in.Address == m.backends[id].addr() {
			t.Errorf("instance %s is the backend's plaintext port", in.ID)
		}
	}
	seen := map[string]bool{}
	waitFor(t, 10*time.Second, "both backends over their sidecars", func() bool {
		code, backend, _, err := s.get("/")
		if err == nil && code == http.StatusOK {
			seen[backend] = true
		}
		return len(seen) == 2
	})
	if got := overTCP(); !strings.HasPrefix(got, "HTTP/1.1 200 ") {
		t.Fatalf("tcp listener over Connect: %q", got)
	}
	st := s.connectStatus()
	if st.Connect == nil || st.Connect.Identity != "sluice" || !strings.HasSuffix(st.Connect.LeafURI, "/svc/sluice") || st.Connect.Roots < 1 {
		t.Fatalf("connect status: %+v", st.Connect)
	}

	// A keep-alive client connected before the deny.
	keep := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1}, Timeout: 10 * time.Second}
	getWith := func(c *http.Client) (int, string) {
		resp, err := c.Get("http://" + s.Front + "/")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := getWith(keep); code != http.StatusOK {
		t.Fatalf("keep-alive client before the deny: %d %s", code, body)
	}

	denyAt := time.Now()
	m.intention("deny")
	var body string
	waitFor(t, 5*time.Second, "403 after the deny", func() bool {
		var code int
		code, body = getWith(&http.Client{Timeout: 5 * time.Second})
		if code != http.StatusForbidden && code != http.StatusOK {
			t.Fatalf("during the deny: want 200 or 403, have %d %s", code, body)
		}
		return code == http.StatusForbidden
	})
	took := time.Since(denyAt)
	t.Logf("deny -> 403 in %v", took)
	if took > time.Second {
		t.Errorf("deny took %v to apply, want at most 1s", took)
	}
	var denial struct{ Error, Service, Source, Destination string }
	if err := json.Unmarshal([]byte(body), &denial); err != nil || denial.Source != "sluice" || denial.Destination != "web" {
		t.Errorf("403 body: want source sluice and destination web, have %s (%v)", body, err)
	}
	// Every request now: fresh clients and the keep-alive one alike.
	waitFor(t, 3*time.Second, "the keep-alive client refused", func() bool {
		code, b := getWith(keep)
		return code == http.StatusForbidden && strings.Contains(b, `"destination":"web"`)
	})
	for i := range 20 {
		if code, b := getWith(keep); code != http.StatusForbidden {
			t.Fatalf("request %d after the deny (keep-alive): %d %s", i, code, b)
		}
		if code, b, _, _ := s.get("/"); code != http.StatusForbidden {
			t.Fatalf("request %d after the deny: %d %s", i, code, b)
		}
	}
	// A tcp listener's connection is closed without a byte.
	for i := range 5 {
		if got := overTCP(); got != "" {
			t.Fatalf("tcp connection %d after the deny: %q", i, got)
		}
	}
	for _, in := range s.service("web").Instances {
		if in.Ejected || !in.Eligible || in.Errors != 0 {
			t.Errorf("instance %s after denials: ejected %t, eligible %t, errors %d", in.ID, in.Ejected, in.Eligible, in.Errors)
		}
	}
	if n := s.scrape().sum("sluice_connect_intention_denials_total", map[string]string{"service": "web"}); n < 20 {
		t.Errorf("want at least 20 denials counted, have %v", n)
	}

	allowAt := time.Now()
	m.intention("allow")
	waitFor(t, 5*time.Second, "200 after the allow", func() bool {
		code, _ := getWith(&http.Client{Timeout: 5 * time.Second})
		return code == http.StatusOK
	})
	took = time.Since(allowAt)
	t.Logf("allow -> 200 in %v", took)
	if took > time.Second {
		t.Errorf("allow took %v to apply, want at most 1s", took)
	}
	waitFor(t, 3*time.Second, "the keep-alive client served again", func() bool {
		code, _ := getWith(keep)
		return code == http.StatusOK
	})
	if got := overTCP(); !strings.HasPrefix(got, "HTTP/1.1 200 ") {
		t.Fatalf("tcp listener after the allow: %q", got)
	}
}

// TestConnectSidecarKilled: a sidecar killed with SIGKILL under load costs
// no request: they fail over to the other instance's sidecar.
func TestConnectSidecarKilled(t *testing.T) {
	t.Parallel()
	m := startConnectMesh(t, "web-1", "web-2")
	s := startSluiceConfig(t, m.agent.Addr, connectConfig)
	l := startLoad(s, 4)
	waitFor(t, 10*time.Second, "load on both", func() bool { return m.backends["web-1"].hits.Load() > 20 && m.backends["web-2"].hits.Load() > 20 })
	_ = m.sidecars["web-1"].stop(syscall.SIGKILL)
	before := m.backends["web-2"].hits.Load()
	waitFor(t, 10*time.Second, "load after the kill", func() bool { return m.backends["web-2"].hits.Load() > before+200 })
	l.finish()
	ok, failed, reasons := l.ok.Load(), l.failed.Load(), l.examples
	t.Logf("sidecar killed under load: %d ok, %d failed", ok, failed)
	if failed != 0 {
		t.Errorf("want 0 failed requests, have %d: %q", failed, reasons)
	}
}

// TestConnectCARotation: a new root under continuous load, then the
// sidecars' re-issued leaves: no failed request throughout.
func TestConnectCARotation(t *testing.T) {
	t.Parallel()
	m := startConnectMesh(t, "web-1", "web-2")
	s := startSluiceConfig(t, m.agent.Addr, connectConfig)
	old := s.connectStatus().Connect
	if old == nil {
		t.Fatal("no connect status")
	}
	l := startLoad(s, 4)
	waitFor(t, 10*time.Second, "load", func() bool { return l.ok.Load() > 100 })

	key, root := newMeshCA(t, old.TrustDomain)
	cfg := map[string]any{"Provider": "consul", "Config": map[string]any{"PrivateKey": key, "RootCert": root}}
	b, _ := json.Marshal(cfg)
	req, _ := http.NewRequest(http.MethodPut, "http://"+m.agent.Addr+"/v1/connect/ca/configuration", bytes.NewReader(b))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CA configuration: %s %s", resp.Status, msg)
	}
	rotatedAt := time.Now()
	waitFor(t, 45*time.Second, "sluice on the new root and leaf", func() bool {
		st := s.connectStatus().Connect
		return st.ActiveRootID != old.ActiveRootID && st.LeafSerial != old.LeafSerial && st.Roots >= 2
	})
	t.Logf("sluice took the new root and leaf in %v", time.Since(rotatedAt))
	// Consul spreads the sidecars' re-issue over 30 s: the load goes on
	// until both present a leaf of the new root, and 40 s at least.
	for id, port := range m.ports {
		waitFor(t, 45*time.Second, "the sidecar of "+id+" re-issued", func() bool {
			return sidecarIssuer(fmt.Sprintf("127.0.0.1:%d", port)) == newRootCN
		})
		t.Logf("sidecar of %s re-issued %v after the rotation", id, time.Since(rotatedAt))
	}
	deadline := rotatedAt.Add(40 * time.Second)
	waitFor(t, time.Minute, "40s after the rotation", func() bool { return time.Now().After(deadline) })
	l.finish()
	ok, failed, reasons := l.ok.Load(), l.failed.Load(), l.examples
	t.Logf("CA rotation under load: %d ok, %d failed", ok, failed)
	if failed != 0 {
		t.Errorf("want 0 failed requests across the rotation, have %d: %q", failed, reasons)
	}
	if code, _, body, err := s.get("/"); code != http.StatusOK {
		t.Errorf("after the rotation: %d %s %v", code, body, err)
	}
}

// newRootCN is the common name of the root newMeshCA makes.
const newRootCN = "e2e rotated root"

// sidecarIssuer returns the issuer's common name of the leaf a sidecar
// presents ("" when the handshake fails): with TLS 1.3 the client's
// handshake ends before the sidecar asks for sluice's certificate.
func sidecarIssuer(addr string) string {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return ""
	}
	defer c.Close()
	certs := c.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return ""
	}
	return certs[0].Issuer.CommonName
}

// newMeshCA makes a Connect root for the consul provider: an EC key and a
// self-signed CA certificate carrying the trust domain's spiffe URI.
func newMeshCA(t *testing.T, trustDomain string) (keyPEM, certPEM string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	uri := &url.URL{Scheme: "spiffe", Host: trustDomain}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: newRootCN},
		URIs:                  []*url.URL{uri},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}))
}

// netDial connects to a loopback address with a short timeout.
func netDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, time.Second) }

// readmeConnectPolicy is the ACL policy README.md's Consul Connect section
// documents (its first hcl block after "**ACL policy.**").
func readmeConnectPolicy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "**ACL policy.**")
	if !ok {
		t.Fatal(`README.md has no "**ACL policy.**"`)
	}
	_, block, ok1 := strings.Cut(after, "```hcl\n")
	policy, _, ok2 := strings.Cut(block, "```")
	if !ok1 || !ok2 || !strings.Contains(policy, `service "sluice"`) {
		t.Fatalf("README.md's Connect ACL policy not found: %q", policy)
	}
	return policy
}

// TestConnectACL: with ACLs on (default_policy "deny"), a token without
// the README policy's service:write on sluice's identity gets no leaf:
// /v1/status and /healthz say why and /healthz stays 503. Once its policy
// is exactly the README's, sluice becomes ready, serves over the sidecars
// (an allow intention: the ACL default denies), and an explicit deny
// intention gives 403 (told from the intentions
// watch: the policy cannot ask the agent's authorize).
func TestConnectACL(t *testing.T) {
	t.Parallel()
	agent := startConsulACL(t)
	acl := agent.Client.ACL()
	readme := readmeConnectPolicy(t)
	full := readme + ` service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }` // the health watches' part
	noLeaf := regexp.MustCompile(`(?s)service "sluice" \{.*?\}`).ReplaceAllString(full, "")
	if noLeaf == full {
		t.Fatal("could not remove the identity rule from the README policy")
	}
	mkToken := func(name, rules string) (*api.ACLPolicy, string) {
		p, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
		if err != nil {
			t.Fatalf("policy %s: %v", name, err)
		}
		tok, _, err := acl.TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
		if err != nil {
			t.Fatalf("token %s: %v", name, err)
		}
		return p, tok.SecretID
	}
	_, meshToken := mkToken("mesh", `service_prefix "" { policy = "write" } node_prefix "" { policy = "read" }`)
	m := startConnectMeshOn(t, agent, meshToken, "web-1", "web-2")
	policy, token := mkToken("sluice", noLeaf)

	s := launchSluice(t, agent.Addr, token, connectConfig)
	waitFor(t, 20*time.Second, "the leaf watch's error in /v1/status", func() bool {
		if s.healthz() == 0 {
			return false // not up yet
		}
		st := s.connectStatus()
		return st.Connect != nil && st.Connect.LeafError != "" && st.Connect.Roots > 0 && len(s.service("web").Instances) == 2
	})
	resp, err := s.client.Get("http://" + s.Admin + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var hz struct{ Status, Reason string }
	json.NewDecoder(resp.Body).Decode(&hz)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(hz.Reason, "no leaf certificate yet") ||
		!strings.Contains(hz.Reason, "service:write") {
		t.Fatalf("/healthz without a leaf: %d %+v", resp.StatusCode, hz)
	}
	t.Logf("without service:write on the identity: %s", s.connectStatus().Connect.LeafError)

	policy.Rules = full
	if _, _, err := acl.PolicyUpdate(policy, nil); err != nil {
		t.Fatalf("policy update: %v", err)
	}
	waitFor(t, 30*time.Second, "sluice /healthz 200 with the README policy", func() bool { return s.healthz() == http.StatusOK })
	if st := s.connectStatus(); st.Connect.LeafError != "" || st.Connect.IntentionsError != "" {
		t.Errorf("watch errors with the README policy: %+v", st.Connect)
	}
	m.intention("allow") // default_policy "deny" denies what no intention allows
	waitFor(t, 10*time.Second, "200 over the sidecars", func() bool {
		code, _, _, err := s.get("/")
		return err == nil && code == http.StatusOK
	})
	m.intention("deny")
	waitFor(t, 5*time.Second, "403 after the deny", func() bool {
		code, _, _, _ := s.get("/")
		return code == http.StatusForbidden
	})
	for _, in := range s.service("web").Instances {
		if in.Ejected || in.Errors != 0 {
			t.Errorf("instance %s after denials: ejected %t, errors %d", in.ID, in.Ejected, in.Errors)
		}
	}
}
