package main

import (
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/proxy/certs"
)

// httpNextProtos are the ALPN protocols an http listener with TLS offers:
// HTTP/2 first, so that clients that speak it get it.
var httpNextProtos = []string{"h2", "http/1.1"}

// terminates reports whether a listener decrypts TLS itself.
func terminates(lc *config.Listener) bool {
	return lc.TLS != nil && lc.TLS.Mode == config.TLSTerminate
}

// tlsShape is what of a listener's TLS a running listener cannot change in
// place: whether it has TLS, and in which mode. (Certificates, versions and
// client CAs change in place; see listener.update.)
func tlsShape(lc *config.Listener) string {
	if lc.TLS == nil {
		return "none"
	}
	return string(lc.TLS.Mode)
}

// loadListenerTLS reads the certificates (and client CAs) of a terminating
// listener; start and every reload read them again, so that a file
// replaced under the same name is picked up.
func loadListenerTLS(lc *config.Listener) (*certs.Set, error) {
	var protos []string
	if lc.Protocol == config.ProtocolHTTP {
		protos = httpNextProtos
	}
	set, err := certs.LoadServer(lc.TLS.ServerOptions(protos))
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
	}
	return set, nil
}

// clientTLS is a service's TLS to its instances, as loaded: the config and
// a digest of the block and of its files' content, so that a reload that
// changes neither keeps the config (and with it the pooled connections).
type clientTLS struct {
	cfg    *tls.Config
	digest [sha256.Size]byte
}

// loadClientTLS reads the files of a service's tls block.
func loadClientTLS(name string, t *config.ServiceTLS) (*clientTLS, error) {
	cfg, err := certs.LoadClient(t.ClientOptions())
	if err != nil {
		return nil, fmt.Errorf("service %q: %w", name, err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q %q %t\n", t.CAFile, t.ServerName, t.CertFile, t.KeyFile, t.InsecureSkipVerify)
	for _, f := range []string{t.CAFile, t.CertFile, t.KeyFile} {
		if f == "" {
			continue
		}
		if err := hashFile(h, f); err != nil {
			return nil, fmt.Errorf("service %q: %w", name, err)
		}
	}
	c := &clientTLS{cfg: cfg}
	h.Sum(c.digest[:0])
	return c, nil
}

func hashFile(w io.Writer, name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, io.LimitReader(f, certs.MaxFileSize+1))
	return err
}

// config returns the tls.Config; nil for a nil clientTLS (plain).
func (c *clientTLS) config() *tls.Config {
	if c == nil {
		return nil
	}
	return c.cfg
}

// certStatus is one certificate of a listener in /v1/status.
type certStatus struct {
	Listener string    `json:"listener"`
	CertFile string    `json:"cert_file"`
	Names    []string  `json:"names"`
	NotAfter time.Time `json:"not_after"`
}
