package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-lb/sluice/proxy/certs/certstest"
)

// result is one side's view of a handshake.
type result struct {
	state tls.ConnectionState
	err   error
}

// handshake runs a TLS handshake over loopback TCP between a server using
// srvCfg and a client using cliCfg, and returns both sides' results. A
// generous deadline catches hangs.
func handshake(t *testing.T, srvCfg, cliCfg *tls.Config) (srv, cli result) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(c, srvCfg)
		err = s.Handshake()
		if err == nil {
			// TLS 1.3 servers check a client certificate after the
			// client's handshake returned; one byte confirms both.
			_, err = s.Write([]byte{'x'})
		}
		done <- result{state: s.ConnectionState(), err: err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cliCfg)
	cli.err = tc.Handshake()
	if cli.err == nil {
		var b [1]byte
		_, cli.err = tc.Read(b[:])
	}
	cli.state = tc.ConnectionState()
	if cli.err != nil {
		c.Close()
	}
	return <-done, cli
}

// served is the leaf the client saw.
func served(t *testing.T, cli result) *x509.Certificate {
	t.Helper()
	if cli.err != nil {
		t.Fatalf("client handshake: %v", cli.err)
	}
	return cli.state.PeerCertificates[0]
}

func TestSNIChoice(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t, "test CA")
	leaves := map[string]*certstest.Leaf{
		"default":   ca.Issue(t, certstest.LeafOptions{Names: []string{"default.test", "127.0.0.1"}}),
		"wildcard":  ca.Issue(t, certstest.LeafOptions{Names: []string{"*.example.com", "shared.test"}}),
		"exact":     ca.Issue(t, certstest.LeafOptions{Names: []string{"A.Example.COM"}}),
		"wildcard2": ca.Issue(t, certstest.LeafOptions{Names: []string{"*.example.com", "shared.test", "*.b.example.com"}}),
		"cn":        ca.Issue(t, certstest.LeafOptions{CommonName: "CN.test"}),
		"cnIgnored": ca.Issue(t, certstest.LeafOptions{CommonName: "ignored.test", Names: []string{"other.test"}}),
	}
	order := []string{"default", "wildcard", "exact", "wildcard2", "cn", "cnIgnored"}
	var pairs []Pair
	for _, k := range order {
		c, key := leaves[k].Write(t, dir)
		pairs = append(pairs, Pair{c, key})
	}
	set, err := LoadServer(ServerOptions{Pairs: pairs})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(set)
	for _, tc := range []struct{ sni, want string }{
		{"", "default"},
		{"unknown.test", "default"},
		{"a.example.com", "exact"}, // exact beats an earlier wildcard
		{"A.EXAMPLE.COM", "exact"},
		{"a.example.com.", "exact"},
		{"b.example.com", "wildcard"}, // the first certificate with the name wins
		{"B.Example.Com", "wildcard"},
		{"x.b.example.com", "wildcard2"},
		{"x.y.example.com", "default"}, // a wildcard matches one label
		{"example.com", "default"},
		{".example.com", "default"},
		{"shared.test", "wildcard"},
		{"cn.test", "cn"},
		{"ignored.test", "default"}, // CN only counts without SANs
		{"other.test", "cnIgnored"},
		{"*.example.com", "default"}, // a literal star is no name
	} {
		want := leaves[tc.want].Cert
		if have := set.choose(tc.sni); !have.Leaf.Equal(want) {
			t.Errorf("choose(%q): want %s, have %v", tc.sni, tc.want, have.Leaf.DNSNames)
		}
		if tc.sni == "" || strings.Contains(tc.sni, "*") || strings.HasPrefix(tc.sni, ".") {
			continue // clients refuse to send these
		}
		_, cli := handshake(t, srv.Config(), &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true})
		if have := served(t, cli); !have.Equal(want) {
			t.Errorf("handshake with SNI %q: want %s, have %v", tc.sni, tc.want, have.DNSNames)
		}
	}
	// Without SNI (the client dials an IP address): the default.
	_, cli := handshake(t, srv.Config(), &tls.Config{ServerName: "127.0.0.1", RootCAs: ca.Pool()})
	if have := served(t, cli); !have.Equal(leaves["default"].Cert) {
		t.Errorf("without SNI: have %v", have.DNSNames)
	}

	infos := set.Certificates()
	if len(infos) != len(order) {
		t.Fatalf("Certificates: want %d, have %d", len(order), len(infos))
	}
	for i, k := range order {
		if infos[i].CertFile != pairs[i].CertFile || !infos[i].NotAfter.Equal(leaves[k].Cert.NotAfter) {
			t.Errorf("Certificates[%d]: have %+v", i, infos[i])
		}
	}
	for i, want := range [][]string{{"default.test"}, {"*.example.com", "shared.test"}, {"a.example.com"}, nil, {"cn.test"}, {"other.test"}} {
		if i == 3 {
			continue
		}
		if have := infos[i].Names; !slices.Equal(want, have) {
			t.Errorf("Certificates[%d].Names: want %v, have %v", i, want, have)
		}
	}
}

func TestChooseDoesNotAllocate(t *testing.T) {
	ca := certstest.NewCA(t, "test CA")
	c, k := ca.WriteLeaf(t, t.TempDir(), "*.example.com")
	set, err := LoadServer(ServerOptions{Pairs: []Pair{{c, k}}})
	if err != nil {
		t.Fatal(err)
	}
	hello := &tls.ClientHelloInfo{ServerName: "a.example.com"}
	if n := testing.AllocsPerRun(100, func() { _, _ = set.getCertificate(hello) }); n != 0 {
		t.Errorf("getCertificate allocates %v times", n)
	}
}

func TestALPNAndMinVersion(t *testing.T) {
	ca := certstest.NewCA(t, "test CA")
	c, k := ca.WriteLeaf(t, t.TempDir(), "a.test")
	set, err := LoadServer(ServerOptions{Pairs: []Pair{{c, k}}, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(set)
	if srv.Config().MinVersion != tls.VersionTLS12 {
		t.Errorf("default MinVersion: have %#x", srv.Config().MinVersion)
	}
	_, cli := handshake(t, srv.Config(), &tls.Config{ServerName: "a.test", RootCAs: ca.Pool(), NextProtos: []string{"http/1.1", "h2"}})
	served(t, cli)
	if have := cli.state.NegotiatedProtocol; have != "h2" {
		t.Errorf("ALPN: want h2, have %q", have)
	}
	_, cli = handshake(t, srv.Config(), &tls.Config{ServerName: "a.test", RootCAs: ca.Pool(), MaxVersion: tls.VersionTLS12})
	if served(t, cli); cli.state.Version != tls.VersionTLS12 {
		t.Errorf("version: have %#x", cli.state.Version)
	}
	_, cli = handshake(t, srv.Config(), &tls.Config{ServerName: "a.test", RootCAs: ca.Pool(), MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10})
	if cli.err == nil {
		t.Error("TLS 1.1 client accepted")
	}

	set13, err := LoadServer(ServerOptions{Pairs: []Pair{{c, k}}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	_, cli = handshake(t, NewServer(set13).Config(), &tls.Config{ServerName: "a.test", RootCAs: ca.Pool(), MaxVersion: tls.VersionTLS12})
	if cli.err == nil {
		t.Error("TLS 1.2 client accepted with MinVersion 1.3")
	}
	_, cli = handshake(t, NewServer(set13).Config(), &tls.Config{ServerName: "a.test", RootCAs: ca.Pool()})
	if served(t, cli); cli.state.NegotiatedProtocol != "" {
		t.Errorf("ALPN without NextProtos: have %q", cli.state.NegotiatedProtocol)
	}
}

// TestSwapConcurrent swaps the material while handshakes run: each
// handshake gets one of the two sets whole, an established connection
// keeps working across swaps, and once swapping stops new handshakes get
// the last set.
func TestSwapConcurrent(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t, "test CA")
	leafA := ca.Issue(t, certstest.LeafOptions{Names: []string{"a.test"}})
	leafB := ca.Issue(t, certstest.LeafOptions{Names: []string{"a.test"}})
	load := func(l *certstest.Leaf) *Set {
		c, k := l.Write(t, dir)
		s, err := LoadServer(ServerOptions{Pairs: []Pair{{c, k}}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	setA, setB := load(leafA), load(leafB)
	srv := NewServer(setA)
	cfg := srv.Config()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var served sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Add(1)
			go func() { // echo over TLS until the client closes
				defer served.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				s := tls.Server(c, cfg)
				buf := make([]byte, 64)
				for {
					n, err := s.Read(buf)
					if err != nil {
						return
					}
					if _, err := s.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	dial := func() (*tls.Conn, error) {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "a.test", RootCAs: ca.Pool()})
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		return c, nil
	}
	echo := func(c *tls.Conn) error {
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		for n := 0; n < 4; {
			m, err := c.Read(buf[n:])
			if err != nil {
				return err
			}
			n += m
		}
		if string(buf) != "ping" {
			return errors.New("echo mismatch")
		}
		return nil
	}

	old, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if !old.ConnectionState().PeerCertificates[0].Equal(leafA.Cert) {
		t.Fatal("first connection did not get set A")
	}

	stop := make(chan struct{})
	swapped := make(chan struct{})
	go func() {
		defer close(swapped)
		for i := 0; ; i++ {
			select {
			case <-stop:
				srv.Swap(setB)
				return
			default:
			}
			if i%2 == 0 {
				srv.Swap(setB)
			} else {
				srv.Swap(setA)
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				c, err := dial()
				if err != nil {
					errs <- err
					return
				}
				leaf := c.ConnectionState().PeerCertificates[0]
				if !leaf.Equal(leafA.Cert) && !leaf.Equal(leafB.Cert) {
					errs <- errors.New("handshake got neither set's certificate")
				}
				err = echo(c)
				c.Close()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-swapped
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := echo(old); err != nil {
		t.Errorf("connection established before the swaps: %v", err)
	}
	if !old.ConnectionState().PeerCertificates[0].Equal(leafA.Cert) {
		t.Error("established connection changed certificate")
	}
	if srv.Current() != setB {
		t.Error("Current is not the last set swapped in")
	}
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.ConnectionState().PeerCertificates[0].Equal(leafB.Cert) {
		t.Error("new handshake after the last swap did not get set B")
	}
	if srv.Config() != cfg {
		t.Error("Config changed pointer")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t, "test CA")
	certA, keyA := ca.WriteLeaf(t, dir, "a.test")
	_, keyB := ca.WriteLeaf(t, dir, "b.test")
	caFile := ca.WriteCA(t, dir)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge.pem")
	if err := os.WriteFile(huge, make([]byte, MaxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	for _, tc := range []struct {
		name string
		opts ServerOptions
		want []string // substrings of the error
	}{
		{"no pairs", ServerOptions{}, []string{"no certificate"}},
		{"mismatched pair", ServerOptions{Pairs: []Pair{{certA, keyB}}}, []string{certA, keyB, "does not match"}},
		{"missing cert", ServerOptions{Pairs: []Pair{{missing, keyA}}}, []string{missing, "no such file"}},
		{"empty name", ServerOptions{Pairs: []Pair{{"", keyA}}}, []string{"no file name"}},
		{"missing key", ServerOptions{Pairs: []Pair{{certA, missing}}}, []string{missing}},
		{"directory", ServerOptions{Pairs: []Pair{{dir, keyA}}}, []string{dir, "not a regular file"}},
		{"too large", ServerOptions{Pairs: []Pair{{huge, keyA}}}, []string{huge, "larger than"}},
		{"garbage cert", ServerOptions{Pairs: []Pair{{garbage, keyA}}}, []string{garbage, keyA}},
		{"second pair bad", ServerOptions{Pairs: []Pair{{certA, keyA}, {certA, keyB}}}, []string{keyB}},
		{"CA without certificates", ServerOptions{Pairs: []Pair{{certA, keyA}}, ClientCAFile: garbage}, []string{garbage, "no PEM certificate"}},
		{"CA missing", ServerOptions{Pairs: []Pair{{certA, keyA}}, ClientCAFile: missing}, []string{missing}},
		{"require without CA", ServerOptions{Pairs: []Pair{{certA, keyA}}, RequireClientCert: true}, []string{"ClientCAFile"}},
		{"bad version", ServerOptions{Pairs: []Pair{{certA, keyA}}, MinVersion: tls.VersionTLS11}, []string{"version"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := LoadServer(tc.opts)
			if err == nil {
				t.Fatalf("LoadServer: want an error, have a set %v", s)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	if err := CheckPair(certA, keyA); err != nil {
		t.Errorf("CheckPair good pair: %v", err)
	}
	if err := CheckPair(certA, keyB); err == nil || !strings.Contains(err.Error(), certA) || !strings.Contains(err.Error(), keyB) {
		t.Errorf("CheckPair mismatched pair: %v", err)
	}
	if err := CheckCAFile(caFile); err != nil {
		t.Errorf("CheckCAFile: %v", err)
	}
	if err := CheckCAFile(garbage); err == nil || !strings.Contains(err.Error(), garbage) {
		t.Errorf("CheckCAFile garbage: %v", err)
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t, "server CA")
	clientCA := certstest.NewCA(t, "client CA")
	otherCA := certstest.NewCA(t, "other CA")
	c, k := ca.WriteLeaf(t, dir, "a.test")
	good := clientCA.Issue(t, certstest.LeafOptions{CommonName: "client"}).TLS(t)
	bad := otherCA.Issue(t, certstest.LeafOptions{CommonName: "intruder"}).TLS(t)
	clientCAFile := clientCA.WriteCA(t, dir)

	for _, require := range []bool{true, false} {
		set, err := LoadServer(ServerOptions{Pairs: []Pair{{c, k}}, ClientCAFile: clientCAFile, RequireClientCert: require})
		if err != nil {
			t.Fatal(err)
		}
		srvCfg := NewServer(set).Config()
		for _, tc := range []struct {
			name   string
			certs  []tls.Certificate
			wantOK bool
		}{
			{"no certificate", nil, !require},
			{"good certificate", []tls.Certificate{good}, true},
			{"certificate from another CA", []tls.Certificate{bad}, false},
		} {
			for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
				// GetClientCertificate sends the certificate even when its
				// issuer is not among the server's acceptable CAs.
				srv, cli := handshake(t, srvCfg, &tls.Config{
					ServerName: "a.test", RootCAs: ca.Pool(), MaxVersion: version,
					GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
						if len(tc.certs) == 0 {
							return &tls.Certificate{}, nil
						}
						return &tc.certs[0], nil
					},
				})
				if ok := srv.err == nil && cli.err == nil; ok != tc.wantOK {
					t.Errorf("require=%t, %s, version %#x: want ok %t; server error %v, client error %v",
						require, tc.name, version, tc.wantOK, srv.err, cli.err)
				}
				if tc.wantOK && len(tc.certs) > 0 && (srv.err != nil || len(srv.state.VerifiedChains) == 0) {
					t.Errorf("require=%t, %s: client certificate not verified", require, tc.name)
				}
			}
		}
	}
}

func TestLoadClient(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t, "instance CA")
	otherCA := certstest.NewCA(t, "other CA")
	clientCA := certstest.NewCA(t, "client CA")
	c, k := ca.WriteLeaf(t, dir, "backend.test")
	caFile := ca.WriteCA(t, dir)
	otherCAFile := otherCA.WriteCA(t, dir)
	clientCert, clientKey := clientCA.WriteLeaf(t, dir, "sluice.test")
	set, err := LoadServer(ServerOptions{Pairs: []Pair{{c, k}}})
	if err != nil {
		t.Fatal(err)
	}
	srvCfg := NewServer(set).Config()

	for _, tc := range []struct {
		name   string
		opts   ClientOptions
		wantOK bool
	}{
		{"CA and name", ClientOptions{CAFile: caFile, ServerName: "backend.test"}, true},
		{"wrong name", ClientOptions{CAFile: caFile, ServerName: "other.test"}, false},
		{"other CA", ClientOptions{CAFile: otherCAFile, ServerName: "backend.test"}, false},
		{"system roots", ClientOptions{ServerName: "backend.test"}, false},
		{"skip verify", ClientOptions{CAFile: otherCAFile, InsecureSkipVerify: true}, true},
	} {
		cfg, err := LoadClient(tc.opts)
		if err != nil {
			t.Fatalf("%s: LoadClient: %v", tc.name, err)
		}
		_, cli := handshake(t, srvCfg, cfg)
		if ok := cli.err == nil; ok != tc.wantOK {
			t.Errorf("%s: want ok %t, have error %v", tc.name, tc.wantOK, cli.err)
		}
	}

	// A client certificate for an instance that asks for one.
	mset, err := LoadServer(ServerOptions{Pairs: []Pair{{c, k}}, ClientCAFile: clientCA.WriteCA(t, dir), RequireClientCert: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadClient(ClientOptions{CAFile: caFile, ServerName: "backend.test", CertFile: clientCert, KeyFile: clientKey})
	if err != nil {
		t.Fatal(err)
	}
	if srv, cli := handshake(t, NewServer(mset).Config(), cfg); srv.err != nil || cli.err != nil {
		t.Errorf("client certificate: server error %v, client error %v", srv.err, cli.err)
	}

	for _, tc := range []struct {
		name string
		opts ClientOptions
		want string
	}{
		{"cert without key", ClientOptions{CertFile: clientCert}, clientCert},
		{"key without cert", ClientOptions{KeyFile: clientKey}, clientKey},
		{"mismatched", ClientOptions{CertFile: clientCert, KeyFile: k}, k},
		{"CA missing", ClientOptions{CAFile: filepath.Join(dir, "nope.pem")}, "nope.pem"},
		{"CA is a key", ClientOptions{CAFile: clientKey}, clientKey},
	} {
		if _, err := LoadClient(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want an error naming %q, have %v", tc.name, tc.want, err)
		}
	}
}

func TestErrorTypes(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t, "test CA")
	certA, _ := ca.WriteLeaf(t, dir, "a.test")
	_, keyB := ca.WriteLeaf(t, dir, "b.test")
	missing := filepath.Join(dir, "missing.pem")

	var fe *FileError
	if err := CheckPair(certA, missing); !errors.As(err, &fe) || fe.File != missing || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing key: want a *FileError naming %s, have %#v", missing, err)
	} else if strings.Count(err.Error(), missing) != 1 {
		t.Errorf("file named more than once: %v", err)
	}
	var pe *PairError
	if err := CheckPair(certA, keyB); !errors.As(err, &pe) || pe.CertFile != certA || pe.KeyFile != keyB {
		t.Errorf("mismatch: want a *PairError, have %#v", err)
	}
	if err := CheckPair(keyB, certA); !errors.As(err, &pe) {
		t.Errorf("switched files: want a *PairError, have %#v", err)
	}
	if err := CheckCAFile(keyB); !errors.As(err, &fe) || fe.File != keyB {
		t.Errorf("CA file holding a key: want a *FileError, have %#v", err)
	}
}
