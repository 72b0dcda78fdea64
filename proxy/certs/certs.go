// Package certs holds the TLS material of sluice's listeners and of its
// connections to instances: it loads certificates, keys and certificate
// authorities from PEM files into immutable values, chooses a listener's
// certificate by the client's server name (SNI), and lets a listener swap
// its material on reload without touching established connections.
//
// Files are read only by LoadServer, LoadClient and CheckPair; a handshake
// never touches the file system. Each file must be a regular file (after
// symbolic links) of at most MaxFileSize bytes, so that a FIFO or a device
// cannot block or flood a load.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// MaxFileSize is the most bytes read from one certificate, key or CA file;
// a larger file is refused.
const MaxFileSize = 1 << 20

// DefaultMinVersion is the lowest TLS version a listener accepts when
// ServerOptions.MinVersion is 0, and the lowest one LoadClient's configs
// speak.
const DefaultMinVersion = tls.VersionTLS12

// Pair names a PEM certificate chain file (leaf first) and the PEM file of
// its private key.
type Pair struct{ CertFile, KeyFile string }

// ServerOptions say what a listener's TLS material is made of.
type ServerOptions struct {
	// Pairs are the listener's certificates; at least one. The first is
	// the default, presented to a client whose server name matches no
	// certificate or that sends none (no SNI, such as a client that
	// connects to an IP address).
	Pairs []Pair
	// MinVersion is tls.VersionTLS12 or tls.VersionTLS13; 0 means
	// DefaultMinVersion.
	MinVersion uint16
	// ClientCAFile is a PEM file of the authorities that issue client
	// certificates; it must hold at least one certificate. "" means no
	// client certificate is asked for.
	ClientCAFile string
	// RequireClientCert, with ClientCAFile, refuses a client without a
	// certificate that verifies against ClientCAFile; without it, a
	// client certificate is optional but verified when given. It is an
	// error without ClientCAFile.
	RequireClientCert bool
	// NextProtos are the ALPN protocols offered, in order of preference,
	// such as {"h2", "http/1.1"}; nil offers none.
	NextProtos []string
}

// CertInfo describes one loaded certificate, for metrics and status.
type CertInfo struct {
	// CertFile is the file the certificate was read from.
	CertFile string
	// Names are the leaf's DNS subject alternative names, lowercased, or
	// its common name when it has none; empty when it has neither.
	Names []string
	// NotAfter is when the leaf expires.
	NotAfter time.Time
}

// Set is loaded, immutable TLS material for one listener. It is safe for
// concurrent use.
//
// Certificate choice: the client's server name, lowercased and without a
// trailing dot, is looked up among the exact names of every certificate
// (Names), then, when it has more than one label, "*." followed by
// everything after its first label is looked up among the wildcard names,
// so "*.example.com" matches "a.example.com" but neither "example.com" nor
// "a.b.example.com" (nor a server name that itself starts with "*"). When several certificates claim a name, the first in
// Pairs wins. Anything else, and a ClientHello without a server name, gets
// the first certificate. The names are indexed at load, so a handshake
// does two map lookups at most.
type Set struct {
	config   *tls.Config
	certs    []*tls.Certificate // in Pairs order; certs[0] is the default
	exact    map[string]*tls.Certificate
	wildcard map[string]*tls.Certificate // keyed by the part after "*."
	infos    []CertInfo
}

// LoadServer reads every file opts names and builds a Set. An error names
// the file (a *FileError) or the pair of files (a *PairError) at fault.
func LoadServer(opts ServerOptions) (*Set, error) {
	if len(opts.Pairs) == 0 {
		return nil, errors.New("certs: no certificate")
	}
	minVersion := opts.MinVersion
	switch minVersion {
	case 0:
		minVersion = DefaultMinVersion
	case tls.VersionTLS12, tls.VersionTLS13:
	default:
		return nil, fmt.Errorf("certs: unsupported minimum TLS version %#04x", minVersion)
	}
	s := &Set{
		exact:    map[string]*tls.Certificate{},
		wildcard: map[string]*tls.Certificate{},
	}
	for _, p := range opts.Pairs {
		cert, err := loadPair(p.CertFile, p.KeyFile)
		if err != nil {
			return nil, err
		}
		names := certNames(cert.Leaf)
		for _, n := range names {
			m, key := s.exact, n
			if rest, ok := strings.CutPrefix(n, "*."); ok {
				m, key = s.wildcard, rest
			}
			if _, taken := m[key]; !taken {
				m[key] = cert
			}
		}
		s.certs = append(s.certs, cert)
		s.infos = append(s.infos, CertInfo{CertFile: p.CertFile, Names: names, NotAfter: cert.Leaf.NotAfter})
	}
	s.config = &tls.Config{
		MinVersion:     minVersion,
		GetCertificate: s.getCertificate,
		NextProtos:     append([]string(nil), opts.NextProtos...),
	}
	switch {
	case opts.ClientCAFile != "":
		pool, err := loadPool(opts.ClientCAFile)
		if err != nil {
			return nil, err
		}
		s.config.ClientCAs = pool
		s.config.ClientAuth = tls.VerifyClientCertIfGiven
		if opts.RequireClientCert {
			s.config.ClientAuth = tls.RequireAndVerifyClientCert
		}
	case opts.RequireClientCert:
		return nil, errors.New("certs: RequireClientCert needs a ClientCAFile")
	}
	return s, nil
}

// Certificates describes the Set's certificates in Pairs order. The slice
// is the caller's; the Names slices are shared and must not be modified.
func (s *Set) Certificates() []CertInfo {
	return append([]CertInfo(nil), s.infos...)
}

// getCertificate is the Set's tls.Config.GetCertificate; see Set for the
// rule.
func (s *Set) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.choose(hello.ServerName), nil
}

// choose returns the certificate for serverName; it allocates only when
// serverName has upper-case letters.
func (s *Set) choose(serverName string) *tls.Certificate {
	name := strings.TrimSuffix(serverName, ".")
	if name == "" {
		return s.certs[0]
	}
	name = strings.ToLower(name)
	if c := s.exact[name]; c != nil {
		return c
	}
	if dot := strings.IndexByte(name, '.'); dot > 0 && dot < len(name)-1 && name[0] != '*' {
		if c := s.wildcard[name[dot+1:]]; c != nil {
			return c
		}
	}
	return s.certs[0]
}

// Server gives a listener a stable *tls.Config whose material can be
// swapped while it serves. It is safe for concurrent use.
type Server struct {
	cur    atomic.Pointer[Set]
	config *tls.Config
}

// NewServer returns a Server that serves s (not nil) until the next Swap.
func NewServer(s *Set) *Server {
	srv := &Server{}
	srv.cur.Store(s)
	srv.config = &tls.Config{
		MinVersion:         s.config.MinVersion,
		NextProtos:         s.config.NextProtos,
		GetConfigForClient: srv.configForClient,
	}
	return srv
}

// Swap makes new handshakes use s (not nil). Connections already established, and
// handshakes that already received their ClientHello, keep the Set they
// started with. Session tickets stay valid across swaps (the stable
// config's keys encrypt them); a resumed session is checked again against
// the new Set's client CAs by crypto/tls.
func (srv *Server) Swap(s *Set) { srv.cur.Store(s) }

// Current returns the Set new handshakes use.
func (srv *Server) Current() *Set { return srv.cur.Load() }

// Config returns the same *tls.Config for the Server's whole life, for
// tls.NewListener, tls.Server or http.Server.TLSConfig. Its
// GetConfigForClient hands each handshake the current Set's config, which
// decides the certificate, minimum version, client authentication and
// ALPN; MinVersion and NextProtos on the returned config are those of the
// Set given to NewServer, for callers that inspect them. It must not be
// modified.
func (srv *Server) Config() *tls.Config { return srv.config }

func (srv *Server) configForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	return srv.cur.Load().config, nil
}

// ClientOptions say how sluice speaks TLS to a service's instances.
type ClientOptions struct {
	// CAFile is a PEM file of the authorities trusted to sign instance
	// certificates; it must hold at least one certificate. "" means the
	// system's roots.
	CAFile string
	// ServerName is the name checked against every instance's
	// certificate and sent as SNI. "" leaves tls.Config.ServerName empty:
	// the caller must then set it per connection to the instance's host
	// (a clone of the config) unless InsecureSkipVerify is set.
	ServerName string
	// InsecureSkipVerify turns off checking the instances' certificates.
	InsecureSkipVerify bool
	// CertFile and KeyFile are the client certificate sluice presents
	// and its private key; both or neither.
	CertFile, KeyFile string
}

// LoadClient reads every file opts names and returns a new config for
// connections to instances, speaking TLS 1.2 or later, without ALPN
// (the caller sets NextProtos if it wants them). An error names the file
// at fault.
func LoadClient(opts ClientOptions) (*tls.Config, error) {
	c := &tls.Config{
		MinVersion:         DefaultMinVersion,
		ServerName:         opts.ServerName,
		InsecureSkipVerify: opts.InsecureSkipVerify,
	}
	if opts.CAFile != "" {
		pool, err := loadPool(opts.CAFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	switch {
	case opts.CertFile != "" && opts.KeyFile != "":
		cert, err := loadPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{*cert}
	case opts.CertFile != "":
		return nil, fmt.Errorf("certs: certificate %s needs a key file", opts.CertFile)
	case opts.KeyFile != "":
		return nil, fmt.Errorf("certs: key %s needs a certificate file", opts.KeyFile)
	}
	return c, nil
}

// CheckPair loads certFile and keyFile and checks that they form a key
// pair, as LoadServer and LoadClient do. The error is a *FileError naming
// the file at fault or a *PairError naming both.
func CheckPair(certFile, keyFile string) error {
	_, err := loadPair(certFile, keyFile)
	return err
}

// CheckCAFile loads a PEM file of certificate authorities and checks that
// it holds at least one certificate, as LoadServer and LoadClient do; the
// error is a *FileError.
func CheckCAFile(name string) error {
	_, err := loadPool(name)
	return err
}

// FileError is a file that cannot be used: missing, unreadable, not a
// regular file, too large, or without the PEM content it should hold.
type FileError struct {
	File string
	Err  error // the cause, without the file name
}

func (e *FileError) Error() string { return "certs: " + e.File + ": " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// PairError is a certificate file and a key file, both readable, that do
// not form a key pair (either holds the wrong PEM content, or the key
// does not match the certificate).
type PairError struct {
	CertFile, KeyFile string
	Err               error // from tls.X509KeyPair
}

func (e *PairError) Error() string {
	return "certs: certificate " + e.CertFile + " and key " + e.KeyFile + ": " + e.Err.Error()
}
func (e *PairError) Unwrap() error { return e.Err }

// loadPair reads a certificate chain and its key, with the leaf parsed.
func loadPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := readFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(keyFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &PairError{CertFile: certFile, KeyFile: keyFile, Err: err}
	}
	if cert.Leaf == nil { // GODEBUG x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, &FileError{File: certFile, Err: err}
		}
	}
	return &cert, nil
}

// loadPool reads a PEM file that must hold at least one certificate.
func loadPool(name string) (*x509.CertPool, error) {
	data, err := readFile(name)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, &FileError{File: name, Err: errors.New("no PEM certificate in it")}
	}
	return pool, nil
}

// readFile reads a regular file of at most MaxFileSize bytes. Anything
// but a regular file is refused before it is opened.
func readFile(name string) ([]byte, error) {
	if name == "" {
		return nil, &FileError{File: name, Err: errors.New("no file name")}
	}
	fi, err := os.Stat(name)
	if err != nil {
		return nil, &FileError{File: name, Err: bare(err)}
	}
	if !fi.Mode().IsRegular() {
		return nil, &FileError{File: name, Err: errors.New("not a regular file")}
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, &FileError{File: name, Err: bare(err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &FileError{File: name, Err: bare(err)}
	}
	if len(data) > MaxFileSize {
		return nil, &FileError{File: name, Err: fmt.Errorf("larger than %d bytes", MaxFileSize)}
	}
	return data, nil
}

// bare strips the path from a *fs.PathError, which FileError names anyway.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// certNames returns leaf's DNS names, else its common name, lowercased
// and without a trailing dot.
func certNames(leaf *x509.Certificate) []string {
	names := leaf.DNSNames
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = []string{leaf.Subject.CommonName}
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		if n = strings.ToLower(strings.TrimSuffix(n, ".")); n != "" {
			out = append(out, n)
		}
	}
	return out
}
