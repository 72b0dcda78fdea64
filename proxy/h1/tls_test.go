package h1

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testPKI is a self-signed ECDSA CA and a leaf it signed for "localhost",
// 127.0.0.1 and ::1.
type testPKI struct {
	roots *x509.CertPool
	leaf  tls.Certificate
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sluice test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return &testPKI{roots: roots, leaf: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}}
}

// serverConfig is what sluice's listener would give Server.TLSConfig.
func (p *testPKI) serverConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.leaf}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
}

func (p *testPKI) clientConfig(protos ...string) *tls.Config {
	return &tls.Config{RootCAs: p.roots, ServerName: "localhost", NextProtos: protos}
}

// httpsClient speaks HTTP/1.1 only, or HTTP/2 when h2 is set, over TLS.
func (p *testPKI) httpsClient(h2 bool) *http.Client {
	var protocols http.Protocols
	if h2 {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: p.clientConfig(), Protocols: &protocols}}
}

// tlsInfo answers with the protocol and what r.TLS says.
func tlsInfo(w http.ResponseWriter, r *http.Request) {
	a := r.Proto + " plain"
	if r.TLS != nil {
		a = r.Proto + " tls " + r.TLS.ServerName + " alpn=" + r.TLS.NegotiatedProtocol
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(a)))
	io.WriteString(w, a)
}

func get(t *testing.T, c *http.Client, url string) (string, *http.Response) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp
}

// TestTLSHTTP1: HTTP/1.1 over TLS is answered, on one keep-alive
// connection, and every request carries r.TLS; a plain connection's
// requests (HTTP/1.1 and h2c) carry none.
func TestTLSHTTP1(t *testing.T) {
	pki := newPKI(t)
	var conns countConns
	addr := serve(t, &Server{Handler: http.HandlerFunc(tlsInfo), TLSConfig: pki.serverConfig(), ConnCounter: &conns})
	c := pki.httpsClient(false)
	defer c.CloseIdleConnections()
	for i := range 3 {
		have, resp := get(t, c, "https://"+addr+"/")
		if want := "HTTP/1.1 tls localhost alpn="; !strings.HasPrefix(have, want) || resp.TLS == nil {
			t.Fatalf("request %d: want %q, have %q", i, want, have)
		}
	}
	if n := conns.opened.Load(); n != 1 {
		t.Errorf("3 keep-alive requests took %d connections, want 1", n)
	}
	// Without ALPN: HTTP/1.1 all the same.
	tc, err := tls.Dial("tcp", addr, pki.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	io.WriteString(tc, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(tc)
	if !strings.HasPrefix(string(b), "HTTP/1.1 200 ") || !strings.HasSuffix(string(b), "HTTP/1.1 tls localhost alpn=") {
		t.Errorf("no ALPN: %q", b)
	}

	plain := serve(t, &Server{Handler: http.HandlerFunc(tlsInfo)})
	if have := raw(t, plain, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); !strings.HasSuffix(have, "HTTP/1.1 plain") {
		t.Errorf("plain HTTP/1.1: %q", have)
	}
	h2c := h2cClient()
	defer h2c.CloseIdleConnections()
	if have, _ := get(t, h2c, "http://"+plain+"/"); have != "HTTP/2.0 plain" {
		t.Errorf("h2c: %q", have)
	}
}

// TestTLSH2: a client that offers h2 by ALPN gets HTTP/2, served by the
// HTTP/2 server, and its streams carry r.TLS; a stream body and answer
// pass whole.
func TestTLSH2(t *testing.T) {
	pki := newPKI(t)
	var conns countConns
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			echo(w, r)
			return
		}
		tlsInfo(w, r)
	}), TLSConfig: pki.serverConfig(), ConnCounter: &conns})
	c := pki.httpsClient(true)
	for i := range 3 {
		have, resp := get(t, c, "https://"+addr+"/")
		if want := "HTTP/2.0 tls localhost alpn=h2"; have != want || resp.ProtoMajor != 2 {
			t.Fatalf("request %d: want %q, have %q (%s)", i, want, have, resp.Proto)
		}
	}
	resp, err := c.Post("https://"+addr+"/up", "text/plain", strings.NewReader(strings.Repeat("x", 100<<10)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "POST /up " + strings.Repeat("x", 100<<10); string(b) != want {
		t.Errorf("h2 POST: answer of %d bytes, want %d", len(b), len(want))
	}
	c.CloseIdleConnections()
	waitUntil(t, "the h2 connection counted closed", func() bool { return conns.opened.Load() == 1 && conns.closed.Load() == 1 })
}

// TestTLSH2PriorKnowledgeRefused: over TLS without ALPN h2 the HTTP/2
// preface is no h2c hand-off: it is refused as an HTTP/1.1 request.
func TestTLSH2PriorKnowledgeRefused(t *testing.T) {
	pki := newPKI(t)
	var served atomic.Int64
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { served.Add(1) }), TLSConfig: pki.serverConfig()})
	tc, err := tls.Dial("tcp", addr, pki.clientConfig("http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.Write(h2Preface)
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(tc)
	if !strings.HasPrefix(string(b), "HTTP/1.1 505 ") && !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
		t.Errorf("want a 4xx/505 HTTP/1.1 answer, have %q", firstLine(string(b)))
	}
	if served.Load() != 0 {
		t.Error("the handler ran")
	}
}

// TestTLSHandshakeFailures: a client that sends nothing is closed at
// HeaderTimeout, and a client that does not speak TLS (an HTTP request,
// random bytes) is closed; neither gets an HTTP answer or reaches the
// handler, and every connection is counted closed.
func TestTLSHandshakeFailures(t *testing.T) {
	pki := newPKI(t)
	var conns countConns
	var served atomic.Int64
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { served.Add(1) }),
		TLSConfig: pki.serverConfig(), HeaderTimeout: 200 * time.Millisecond, ConnCounter: &conns})
	for _, tc := range []struct{ name, send string }{
		{"silent", ""},
		{"HTTP request", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"garbage", "\x16\x03\x01\x00\x05hello and more bytes that are no handshake"},
		{"h2 preface", string(h2Preface)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.send)
			c.SetReadDeadline(time.Now().Add(5 * time.Second)) // catches a hang, not a speed
			b, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("the connection was not closed: %v", err)
			}
			if strings.Contains(string(b), "HTTP/") {
				t.Errorf("an HTTP answer: %q", b)
			}
		})
	}
	waitUntil(t, "every connection counted closed", func() bool { return conns.opened.Load() == 4 && conns.closed.Load() == 4 })
	if served.Load() != 0 {
		t.Error("the handler ran")
	}
}

// TestTLSH2InadequateSecurity: ALPN h2 over a TLS 1.2 session with a suite
// that RFC 9113 prohibits ends with GOAWAY INADEQUATE_SECURITY, where the
// same suite serves HTTP/1.1.
func TestTLSH2InadequateSecurity(t *testing.T) {
	pki := newPKI(t)
	cfg := pki.serverConfig()
	cfg.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	addr := serve(t, &Server{Handler: http.HandlerFunc(tlsInfo), TLSConfig: cfg})
	ccfg := pki.clientConfig("h2")
	ccfg.MaxVersion = tls.VersionTLS12
	ccfg.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}
	tc, err := tls.Dial("tcp", addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q", p)
	}
	tc.Write(h2Preface)
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(tc)
	if string(b) != string(h2InadequateSecurity) {
		t.Errorf("want SETTINGS and GOAWAY INADEQUATE_SECURITY, have %x", b)
	}
	ccfg.NextProtos = nil
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: ccfg}}
	defer c.CloseIdleConnections()
	if have, _ := get(t, c, "https://"+addr+"/"); have != "HTTP/1.1 tls localhost alpn=" {
		t.Errorf("HTTP/1.1 with the same suite: %q", have)
	}
}

// h2Settings opens an h2 connection over TLS and returns the values of the
// server's first SETTINGS frame.
func h2Settings(t *testing.T, pki *testPKI, addr string) map[uint16]uint32 {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, pki.clientConfig("h2"))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	tc.Write(h2Preface)
	tc.Write([]byte{0, 0, 0, 0x4, 0, 0, 0, 0, 0}) // empty SETTINGS
	br := bufio.NewReader(tc)
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatalf("no SETTINGS from the server: %v", err)
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			t.Fatal(err)
		}
		if hdr[3] != 0x4 || hdr[4]&0x1 != 0 {
			continue
		}
		settings := map[uint16]uint32{}
		for p := payload; len(p) >= 6; p = p[6:] {
			settings[binary.BigEndian.Uint16(p)] = binary.BigEndian.Uint32(p[2:])
		}
		return settings
	}
}

// TestH2MaxConcurrentStreams: the server advertises MaxConcurrentStreams
// (default DefaultMaxConcurrentStreams), and LimitHit is told when a
// connection's streams reach it.
func TestH2MaxConcurrentStreams(t *testing.T) {
	pki := newPKI(t)
	const maxConcurrentStreams = 0x3
	addr := serve(t, &Server{Handler: http.HandlerFunc(tlsInfo), TLSConfig: pki.serverConfig()})
	if have := h2Settings(t, pki, addr)[maxConcurrentStreams]; have != DefaultMaxConcurrentStreams {
		t.Errorf("default: SETTINGS_MAX_CONCURRENT_STREAMS %d, want %d", have, DefaultMaxConcurrentStreams)
	}

	hits := make(chan string, 10)
	arrived := make(chan struct{}, 10)
	release := make(chan struct{})
	addr = serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			arrived <- struct{}{}
			<-release
		}
		tlsInfo(w, r)
	}), TLSConfig: pki.serverConfig(), MaxConcurrentStreams: 2, LimitHit: func(l string) { hits <- l }})
	if have := h2Settings(t, pki, addr)[maxConcurrentStreams]; have != 2 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want 2", have)
	}
	c := pki.httpsClient(true)
	defer c.CloseIdleConnections()
	get(t, c, "https://"+addr+"/") // one connection, then two streams on it
	done := make(chan error, 2)
	for range 2 {
		go func() {
			resp, err := c.Get("https://" + addr + "/block")
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
	}
	<-arrived
	<-arrived
	select {
	case l := <-hits:
		if l != LimitMaxConcurrentStreams {
			t.Errorf("LimitHit(%q)", l)
		}
	case <-time.After(5 * time.Second):
		t.Error("LimitHit not called at the stream limit")
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if len(hits) != 0 {
		t.Errorf("LimitHit called again: %q", <-hits)
	}
}

// TestH2HeaderBound: HTTP/2 streams over TLS are bounded by MaxHeaderBytes
// too: the server advertises it (with net/http's per-field allowance) as
// SETTINGS_MAX_HEADER_LIST_SIZE, and Go's client refuses to send a
// larger head.
func TestH2HeaderBound(t *testing.T) {
	pki := newPKI(t)
	const maxHeaderListSize = 0x6
	addr := serve(t, &Server{Handler: http.HandlerFunc(tlsInfo), TLSConfig: pki.serverConfig()})
	have := h2Settings(t, pki, addr)[maxHeaderListSize]
	if have < DefaultMaxHeaderBytes || have > DefaultMaxHeaderBytes+4<<10 {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want about %d", have, DefaultMaxHeaderBytes)
	}
	c := pki.httpsClient(true)
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("b", DefaultMaxHeaderBytes))
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("a head over the bound: %s", resp.Status)
		}
	} else if !strings.Contains(err.Error(), "header list larger than peer's advertised limit") {
		t.Errorf("a head over the bound: %v", err)
	}
}

// TestTLSShutdown: Shutdown closes idle TLS connections (HTTP/1.1 and
// h2), lets requests in flight on both finish, and returns nil.
func TestTLSShutdown(t *testing.T) {
	pki := newPKI(t)
	var conns countConns
	arrived := make(chan struct{}, 2)
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			arrived <- struct{}{}
			<-release
		}
		tlsInfo(w, r)
	}), TLSConfig: pki.serverConfig(), ConnCounter: &conns}
	addr := serve(t, s)
	h1c, h2c := pki.httpsClient(false), pki.httpsClient(true)
	defer h1c.CloseIdleConnections()
	defer h2c.CloseIdleConnections()
	get(t, h1c, "https://"+addr+"/") // an idle keep-alive connection
	idle, err := tls.Dial("tcp", addr, pki.clientConfig("http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	idleBr := bufio.NewReader(idle)
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(idleBr, nil); err != nil {
		t.Fatal(err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	answers := make(chan string, 2)
	for _, c := range []*http.Client{h1c, h2c} {
		go func() {
			resp, err := c.Get("https://" + addr + "/block")
			if err != nil {
				answers <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers <- string(b)
		}()
	}
	<-arrived
	<-arrived
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	// The idle connection is closed without an answer.
	if _, err := idleBr.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: want EOF, have %v", err)
	}
	close(release)
	for range 2 {
		if a := <-answers; !strings.Contains(a, " tls localhost") {
			t.Errorf("request in flight: %q", a)
		}
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	waitUntil(t, "every connection counted closed", func() bool { return conns.opened.Load() == conns.closed.Load() })
}

// TestTLSWriteTimeout: over TLS a client that stops reading fails the
// handler's writes (WriteTimeout per record) and its connection closes.
func TestTLSWriteTimeout(t *testing.T) {
	pki := newPKI(t)
	var conns countConns
	failed := make(chan error, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 32<<10)
		for range 64 << 20 / len(buf) {
			if _, err := w.Write(buf); err != nil {
				failed <- err
				return
			}
		}
		failed <- nil
	}), TLSConfig: pki.serverConfig(), WriteTimeout: 200 * time.Millisecond, ConnCounter: &conns})
	tc, err := tls.Dial("tcp", addr, pki.clientConfig("http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	io.WriteString(tc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case err := <-failed:
		if err == nil {
			t.Fatal("64 MiB written to a client that reads nothing")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write to a client that reads nothing never failed")
	}
	waitUntil(t, "the connection counted closed", func() bool { return conns.closed.Load() == 1 })
}

// waitUntil polls cond for up to 5 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
