package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/certs/certstest"
)

// testCA is a certificate authority made by a test (certstest's), with
// its certificate and everything it issues written as PEM files in its own
// directory.
type testCA struct {
	*certstest.CA
	t    testing.TB
	dir  string
	File string // the CA certificate, PEM
}

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	ca := &testCA{CA: certstest.NewCA(t, cn), t: t, dir: t.TempDir()}
	ca.File = ca.write(strings.ReplaceAll(cn, " ", "-")+".pem", ca.PEM)
	return ca
}

func (ca *testCA) write(name string, data []byte) string {
	ca.t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		ca.t.Fatal(err)
	}
	return path
}

// leaf is an issued certificate, its key and their files.
type leaf struct {
	cert              *x509.Certificate
	tls               tls.Certificate
	certFile, keyFile string
}

// issue signs a certificate (for server and client authentication) for
// names, DNS names or IP literals, the first also its common name, and
// writes it and its key as file+".pem" and file+"-key.pem", overwriting an
// earlier issue under the same name.
func (ca *testCA) issue(file string, names ...string) leaf {
	ca.t.Helper()
	l := ca.Issue(ca.t, certstest.LeafOptions{Names: names, CommonName: names[0]})
	return leaf{cert: l.Cert, tls: l.TLS(ca.t),
		certFile: ca.write(file+".pem", l.CertPEM), keyFile: ca.write(file+"-key.pem", l.KeyPEM)}
}

// startTLSBackend runs an HTTPS server presenting l that answers its name.
func startTLSBackend(t testing.TB, name string, l leaf) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		io.WriteString(w, name)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{l.tls}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// startEchoBackend runs a TCP server that echoes every line back.
func startEchoBackend(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// tlsDial connects to addr over TLS as name (SNI), trusting roots.
func tlsDial(addr, name string, roots *x509.CertPool, certs ...tls.Certificate) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots, Certificates: certs})
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, nil
}

// rawGet sends GET path on c (HTTP/1.1, keep-alive) and reads the answer.
func rawGet(c net.Conn, br *bufio.Reader, host, path string) (*http.Response, string, error) {
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
		return nil, "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body), err
}

// httpsClient is a client for addr that sends name as SNI and Host.
func httpsClient(addr, name string, roots *x509.CertPool, h2 bool, certs ...tls.Certificate) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{ServerName: name, RootCAs: roots, Certificates: certs},
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// TestTLSEdge runs one sluice with every kind of TLS listener: SNI
// certificates and HTTP/2 by ALPN, HSTS, mutual TLS, a redirect to HTTPS,
// HTTPS to a backend with its own CA (probes included), TLS termination
// and SNI routing without termination on tcp listeners; then the
// certificate metrics and status, and a reload that swaps a certificate.
func TestTLSEdge(t *testing.T) {
	c := startConsul(t)
	edge := newTestCA(t, "edge CA")         // what clients trust
	clients := newTestCA(t, "client CA")    // signs client certificates
	internal := newTestCA(t, "internal CA") // the backends' own

	certA := edge.issue("a", "a.test", "127.0.0.1")
	certB := edge.issue("b", "*.b.test")
	clientCert := clients.issue("client", "client")

	// Proxied backends: a plain one that shows the forwarded proto, an
	// HTTPS one, a TCP echo, and two HTTPS ones behind SNI routing.
	var proto atomic.Value
	proto.Store("")
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto.Store(r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Backend", "web")
		io.WriteString(w, "web")
	}))
	t.Cleanup(web.Close)
	secure := startTLSBackend(t, "secure", internal.issue("secure", "secure.internal"))
	passA := startTLSBackend(t, "pass-a", internal.issue("pass-a", "a.test"))
	passB := startTLSBackend(t, "pass-b", internal.issue("pass-b", "other.test", "any.test"))
	echo := startEchoBackend(t)
	c.register("web", "web-1", strings.TrimPrefix(web.URL, "http://"), nil)
	c.register("secure", "secure-1", strings.TrimPrefix(secure.URL, "https://"), nil)
	c.register("pass-a", "pass-a-1", strings.TrimPrefix(passA.URL, "https://"), nil)
	c.register("pass-b", "pass-b-1", strings.TrimPrefix(passB.URL, "https://"), nil)
	c.register("echo", "echo-1", echo, nil)

	addr := func() string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }
	httpsAddr, mtlsAddr, redirectAddr, tcpTLSAddr, sniAddr, strictAddr := addr(), addr(), addr(), addr(), addr(), addr()
	_, httpsPort, _ := net.SplitHostPort(httpsAddr)
	body := fmt.Sprintf(`
listener "public" {
  address = "FRONT"
  route "/" {
    service = "web"
  }
}
listener "https" {
  address = %[1]q
  tls {
    certificate {
      cert_file = %[7]q
      key_file  = %[8]q
    }
    certificate {
      cert_file = %[9]q
      key_file  = %[10]q
    }
  }
  hsts_max_age = "1h"
  route "/secure" {
    service = "secure"
  }
  route "/" {
    service = "web"
  }
}
listener "mtls" {
  address = %[2]q
  tls {
    certificate {
      cert_file = %[7]q
      key_file  = %[8]q
    }
    client_ca_file      = %[11]q
    require_client_cert = true
  }
  route "/" {
    service = "web"
  }
}
listener "redirect" {
  address        = %[3]q
  redirect_https = true
  https_port     = %[13]s
}
listener "tcp-tls" {
  address  = %[4]q
  protocol = "tcp"
  service  = "echo"
  tls {
    certificate {
      cert_file = %[7]q
      key_file  = %[8]q
    }
  }
}
listener "sni" {
  address  = %[5]q
  protocol = "tcp"
  tls {
    mode = "passthrough"
  }
  route "a.test" {
    service = "pass-a"
  }
  route "*" {
    service = "pass-b"
  }
}
listener "sni-strict" {
  address  = %[6]q
  protocol = "tcp"
  tls {
    mode = "passthrough"
  }
  route "a.test" {
    service = "pass-a"
  }
}
service "secure" {
  tls {
    ca_file     = %[12]q
    server_name = "secure.internal"
  }
  health_check {
    type     = "http"
    path     = "/"
    interval = "200ms"
    timeout  = "200ms"
    rise     = 1
    fall     = 1
  }
}
`, httpsAddr, mtlsAddr, redirectAddr, tcpTLSAddr, sniAddr, strictAddr,
		certA.certFile, certA.keyFile, certB.certFile, certB.keyFile, clients.File, internal.File, httpsPort)
	s := startSluiceConfig(t, c.Addr, body)

	t.Run("certificate by SNI", func(t *testing.T) {
		for _, tc := range []struct{ sni, want string }{
			{"a.test", "a.test"},
			{"x.b.test", "*.b.test"},
			{"A.TEST", "a.test"},
			{"", "a.test"},           // no SNI: the first certificate
			{"y.x.b.test", "a.test"}, // a wildcard covers one label only
			{"unknown.test", "a.test"},
		} {
			conn, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true})
			if err != nil {
				t.Fatalf("SNI %q: %v", tc.sni, err)
			}
			have := conn.ConnectionState().PeerCertificates[0].Subject.CommonName
			conn.Close()
			if have != tc.want {
				t.Errorf("SNI %q: have certificate %q, want %q", tc.sni, have, tc.want)
			}
		}
	})

	t.Run("HTTP/2 by ALPN, HSTS and forwarded proto", func(t *testing.T) {
		resp, err := httpsClient(httpsAddr, "a.test", edge.Pool(), true).Get("https://a.test/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || string(b) != "web" {
			t.Fatalf("have %s %q, want HTTP/2 and web", resp.Proto, b)
		}
		if have := resp.Header.Get("Strict-Transport-Security"); have != "max-age=3600" {
			t.Errorf("Strict-Transport-Security %q, want max-age=3600", have)
		}
		if have := proto.Load().(string); have != "https" {
			t.Errorf("backend saw X-Forwarded-Proto %q, want https", have)
		}
		// HTTP/1.1 when the client offers only that.
		resp, err = httpsClient(httpsAddr, "x.b.test", edge.Pool(), false).Get("https://x.b.test/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 1 || resp.StatusCode != 200 {
			t.Fatalf("have %s %d, want HTTP/1.1 200", resp.Proto, resp.StatusCode)
		}
		// curl, as an operator would check it.
		if _, err := exec.LookPath("curl"); err == nil {
			out, err := exec.Command("curl", "-sS", "--http2", "--cacert", edge.File,
				"--resolve", "a.test:"+httpsPort+":127.0.0.1", "-w", " %{http_version}",
				"https://a.test:"+httpsPort+"/").CombinedOutput()
			if err != nil || string(out) != "web 2" {
				t.Errorf("curl --http2: %q, %v; want \"web 2\"", out, err)
			}
		}
		// A plain listener sends no HSTS.
		resp, err = http.Get("http://" + s.Front + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Strict-Transport-Security") != "" || proto.Load().(string) != "http" {
			t.Errorf("plain listener: HSTS %q, proto %q", resp.Header.Get("Strict-Transport-Security"), proto.Load())
		}
	})

	t.Run("mutual TLS", func(t *testing.T) {
		// Without a certificate the handshake fails (with TLS 1.3 the
		// client sees the alert on its first read).
		resp, err := httpsClient(mtlsAddr, "a.test", edge.Pool(), false).Get("https://a.test/")
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a client without a certificate got %s", resp.Status)
		}
		// A certificate from another CA is refused too.
		other := edge.issue("other-client", "intruder")
		if resp, err := httpsClient(mtlsAddr, "a.test", edge.Pool(), false, other.tls).Get("https://a.test/"); err == nil {
			resp.Body.Close()
			t.Fatalf("a client with a certificate of another CA got %s", resp.Status)
		}
		resp, err = httpsClient(mtlsAddr, "a.test", edge.Pool(), false, clientCert.tls).Get("https://a.test/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("with a client certificate: %s", resp.Status)
		}
	})

	t.Run("redirect to HTTPS", func(t *testing.T) {
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		req, _ := http.NewRequest("GET", "http://"+redirectAddr+"/shop/cart?item=1&q=a%20b", nil)
		req.Host = "a.test:8080"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := "https://a.test:" + httpsPort + "/shop/cart?item=1&q=a%20b"
		if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
			t.Fatalf("have %d Location %q, want 308 %q", resp.StatusCode, resp.Header.Get("Location"), want)
		}
	})

	t.Run("HTTPS to a backend with its own CA", func(t *testing.T) {
		resp, err := httpsClient(httpsAddr, "a.test", edge.Pool(), false).Get("https://a.test/secure")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "secure" {
			t.Fatalf("have %d %q, want 200 secure", resp.StatusCode, b)
		}
		// The HTTPS probe passes (rise 1 every 200 ms).
		waitFor(t, 5*time.Second, "secure-1 probed passing", func() bool {
			in, ok := s.instance("secure", "secure-1")
			return ok && in.Probe == "passing" && in.Eligible
		})
	})

	t.Run("TCP with TLS terminated", func(t *testing.T) {
		conn, err := tlsDial(tcpTLSAddr, "a.test", edge.Pool())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "ping\n")
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo: %q, %v", line, err)
		}
	})

	t.Run("SNI routing without termination", func(t *testing.T) {
		for _, tc := range []struct{ addr, sni, want string }{
			{sniAddr, "a.test", "pass-a"},
			{sniAddr, "other.test", "pass-b"},
			{strictAddr, "a.test", "pass-a"},
		} {
			// The client verifies the backend's own certificate (by the
			// internal CA, which sluice never holds): the bytes went through
			// untouched.
			conn, err := tlsDial(tc.addr, tc.sni, internal.Pool())
			if err != nil {
				t.Fatalf("%s as %s: %v", tc.addr, tc.sni, err)
			}
			resp, body, err := rawGet(conn, bufio.NewReader(conn), tc.sni, "/")
			conn.Close()
			if err != nil || resp.StatusCode != 200 || body != tc.want {
				t.Fatalf("%s as %s: %v %q, want %s", tc.addr, tc.sni, err, body, tc.want)
			}
		}
		// No route for the name and no default: closed.
		if conn, err := tlsDial(strictAddr, "other.test", internal.Pool()); err == nil {
			conn.Close()
			t.Fatal("an unknown name without a default route was let through")
		}
	})

	t.Run("certificate expiry in metrics and status", func(t *testing.T) {
		m := s.scrape()
		for _, l := range []leaf{certA, certB} {
			have := m.value(t, "sluice_tls_cert_not_after_seconds", map[string]string{"listener": "https", "cert": l.certFile})
			if int64(have) != l.cert.NotAfter.Unix() {
				t.Errorf("%s: not_after %v, want %d", l.certFile, have, l.cert.NotAfter.Unix())
			}
		}
		st := s.status().TLSCertificates
		found := false
		for _, c := range st {
			if c.Listener == "https" && c.CertFile == certB.certFile {
				found = true
				if !c.NotAfter.Equal(certB.cert.NotAfter) || len(c.Names) != 1 || c.Names[0] != "*.b.test" {
					t.Errorf("status of %s: %+v", certB.certFile, c)
				}
			}
		}
		if !found {
			t.Errorf("certificate %s not in /v1/status: %+v", certB.certFile, st)
		}
	})

	t.Run("reload swaps a certificate, keeps connections", func(t *testing.T) {
		old, err := tlsDial(httpsAddr, "a.test", edge.Pool())
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		br := bufio.NewReader(old)
		if resp, _, err := rawGet(old, br, "a.test", "/"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("before reload: %v", err)
		}
		renewed := edge.issue("a", "a.test", "127.0.0.1") // same files, new content
		s.reload(body)
		if resp, _, err := rawGet(old, br, "a.test", "/"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("the connection from before the reload: %v", err)
		}
		serial := func() string {
			conn, err := tlsDial(httpsAddr, "a.test", edge.Pool())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
		}
		if have := serial(); have != renewed.cert.SerialNumber.String() {
			t.Fatalf("new connection got serial %s, want the renewed %s", have, renewed.cert.SerialNumber)
		}
		// A broken certificate file fails that reload only.
		if err := os.WriteFile(certB.certFile, []byte("not a certificate"), 0o600); err != nil {
			t.Fatal(err)
		}
		st := s.reloadFailing(body)
		if !strings.Contains(strings.Join(st.LastReload.Diagnostics, "\n"), certB.certFile) {
			t.Errorf("failed reload does not name %s: %q", certB.certFile, st.LastReload.Diagnostics)
		}
		if have := serial(); have != renewed.cert.SerialNumber.String() {
			t.Fatalf("after a failed reload: serial %s, want %s", have, renewed.cert.SerialNumber)
		}
		if resp, _, err := rawGet(old, br, "a.test", "/"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("the connection after a failed reload: %v", err)
		}
	})
}

// certStatus is one certificate in /v1/status.
type certStatus struct {
	Listener string    `json:"listener"`
	CertFile string    `json:"cert_file"`
	Names    []string  `json:"names"`
	NotAfter time.Time `json:"not_after"`
}

// TestListenerLimits: max_connections holds under twice as many clients,
// each served in turn (idle keep-alive connections make room);
// max_header_bytes answers 431 and a route's max_body_bytes 413, each
// counted.
func TestListenerLimits(t *testing.T) {
	c := startConsul(t)
	b := startBackend(t, "b1")
	c.register("web", "b1", b.addr(), nil)
	s := startSluiceConfig(t, c.Addr, `
listener "public" {
  address          = "FRONT"
  max_connections  = 4
  max_header_bytes = 8192
  route "/upload" {
    service        = "web"
    max_body_bytes = "1KiB"
  }
  route "/" {
    service = "web"
  }
}
`)
	open := func() float64 {
		return s.scrape().sum("sluice_open_connections", map[string]string{"listener": "public"})
	}
	// Eight clients with a keep-alive connection each, 25 requests apiece.
	const clients, requests = 8, 25
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	stop, polled := make(chan struct{}), make(chan struct{})
	var peak atomic.Int64
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := int64(open()); n > peak.Load() {
				peak.Store(n)
			}
		}
	}()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			for j := 0; j < requests; j++ {
				resp, err := client.Get("http://" + s.Front + "/")
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, resp.Status)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-polled
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d requests failed, first: %v", n, clients*requests, firstErr.Load())
	}
	if p := peak.Load(); p > 4 {
		t.Errorf("%d client connections open at once, want at most 4", p)
	}
	m := s.scrape()
	if m.sum("sluice_limit_hits_total", map[string]string{"listener": "public", "limit": "max_connections"}) == 0 {
		t.Errorf("max_connections hits not counted")
	}

	// 431 for a head over max_header_bytes.
	req, _ := http.NewRequest("GET", "http://"+s.Front+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 9000))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("9000-byte header: %s, want 431", resp.Status)
	}
	// 413 for a body over the route's max_body_bytes, whether declared
	// (the instance is not contacted) or chunked (the instance may have
	// seen its start, and is not blamed).
	hits := b.hits.Load()
	resp, err = http.Post("http://"+s.Front+"/upload", "text/plain", strings.NewReader(strings.Repeat("x", 2048)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("2048-byte body: %s, want 413", resp.Status)
	}
	if have := b.hits.Load() - hits; have != 0 {
		t.Errorf("the instance got %d requests with a declared body over the limit, want 0", have)
	}
	resp, err = http.Post("http://"+s.Front+"/upload", "text/plain", io.MultiReader(strings.NewReader(strings.Repeat("x", 2048))))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("2048-byte chunked body: %s, want 413", resp.Status)
	}
	if resp, err := http.Post("http://"+s.Front+"/upload", "text/plain", strings.NewReader("small")); err != nil || resp.StatusCode != 200 {
		t.Fatalf("small body: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if in, ok := s.instance("web", "b1"); !ok || !in.Eligible || in.Ejected {
		t.Errorf("after the client's 413s the instance is %+v", in)
	}
	if have := s.scrape().sum("sluice_upstream_errors_total", map[string]string{"service": "web"}); have != 0 {
		t.Errorf("%v instance errors counted for the client's 413s", have)
	}
	m = s.scrape()
	for _, limit := range []string{"max_header_bytes", "max_body_bytes"} {
		if m.sum("sluice_limit_hits_total", map[string]string{"listener": "public", "limit": limit}) == 0 {
			t.Errorf("%s hits not counted", limit)
		}
	}
}
