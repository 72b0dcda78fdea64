package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"

	"github.com/sluice-lb/sluice/cmd/sluice/config"
	"github.com/sluice-lb/sluice/discovery"
)

// newConsulHealth is env.newHealth for a real Consul agent: the health
// API of newConsulClient, whose TLS failures name the setting to look at.
func newConsulHealth(c config.Consul) (discovery.HealthAPI, error) {
	client, err := newConsulClient(c)
	if err != nil {
		return nil, err
	}
	return tlsExplained{h: client.Health(), tls: c.TLS}, nil
}

// newConsulCatalog is env.newCatalog for a real Consul agent: the catalog
// API of newConsulClient, its TLS failures explained like the health
// API's.
func newConsulCatalog(c config.Consul) (discovery.CatalogAPI, error) {
	client, err := newConsulClient(c)
	if err != nil {
		return nil, err
	}
	return catalogExplained{c: client.Catalog(), tls: c.TLS}, nil
}

// catalogExplained is tlsExplained for the catalog API.
type catalogExplained struct {
	c   discovery.CatalogAPI
	tls config.ConsulTLS
}

var _ discovery.CatalogAPI = catalogExplained{}

func (t catalogExplained) Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
	services, meta, err := t.c.Services(q)
	if err != nil {
		err = explainTLS(err, t.tls)
	}
	return services, meta, err
}

// newConsulClient makes the Consul API client of a consul block, for the
// watches and the self-registration. Every setting comes from c alone,
// which config resolved from the file and the environment; the api
// package's own fallbacks to the process environment are overridden (TLS
// and scheme here, token, namespace and partition by pinned). The token
// goes in as a value: config read the token file at load.
func newConsulClient(c config.Consul) (*api.Client, error) {
	scheme := "http"
	if strings.HasPrefix(c.Address, "https://") {
		scheme = "https"
	}
	tlsConfig := api.TLSConfig{
		Address:            c.TLS.ServerName,
		CAFile:             c.TLS.CAFile,
		CAPath:             c.TLS.CAPath,
		CertFile:           c.TLS.CertFile,
		KeyFile:            c.TLS.KeyFile,
		InsecureSkipVerify: c.TLS.InsecureSkipVerify,
	}
	transport := cleanhttp.DefaultPooledTransport() // what api.DefaultConfig uses, without reading the environment
	// HTTP/1.1 over TLS as over plain http: over HTTP/2 an agent that
	// refuses the client certificate shows only as "http2: client conn
	// could not be established", without the TLS alert.
	transport.ForceAttemptHTTP2 = false
	// A loopback agent's answers are not worth compressing: gzip would
	// cost the agent and sluice more CPU than the bytes it saves.
	transport.DisableCompression = isLocalAgent(c.Address)
	// Watch answers of big services run to megabytes, sent in chunks of
	// a few KiB: a larger buffer reads many chunks per system call.
	transport.ReadBufferSize = 64 << 10
	httpClient, err := api.NewHttpClient(transport, tlsConfig)
	if err != nil {
		return nil, fmt.Errorf("consul TLS: %w", err)
	}
	httpClient.Transport = discovery.RawTransport(pinned{next: transport, token: c.Token, namespace: c.Namespace, partition: c.Partition})
	// api.NewClient reads $CONSUL_HTTP_TOKEN_FILE when given no token (or
	// the one in $CONSUL_HTTP_TOKEN): a file the consul block turned off,
	// never checked at load, that may be missing or a FIFO that blocks.
	// A placeholder it cannot match keeps it from looking; pinned sends
	// the real token, or none.
	token := c.Token
	if token == "" {
		token = noTokenPlaceholder
	}
	client, err := api.NewClient(&api.Config{
		Address:    c.Address,
		Scheme:     scheme,
		Datacenter: c.Datacenter,
		Token:      token,
		Namespace:  c.Namespace,
		Partition:  c.Partition,
		Transport:  transport,
		HttpClient: httpClient,
		TLSConfig:  tlsConfig,
	})
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return client, nil
}

// isLocalAgent reports whether a consul address names an agent on this
// host: a unix socket, "localhost" or a loopback IP address, with or
// without a scheme and port.
func isLocalAgent(addr string) bool {
	if strings.HasPrefix(addr, "unix://") {
		return true
	}
	addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://")
	addr, _, _ = strings.Cut(addr, "/")
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// noTokenPlaceholder stands for "no token" in api.Config; it is never sent.
const noTokenPlaceholder = "sluice:no-token"

// pinned sends every request with exactly the consul block's token,
// namespace ("ns") and partition, set or absent: api.NewClient fills empty
// ones from the process environment, which the file may have overridden
// with "".
type pinned struct {
	next                        http.RoundTripper
	token, namespace, partition string
}

func (p pinned) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context()) // a RoundTripper must not change its request
	if p.token != "" {
		r.Header.Set("X-Consul-Token", p.token)
	} else {
		r.Header.Del("X-Consul-Token")
	}
	q := r.URL.Query()
	for name, v := range map[string]string{"ns": p.namespace, "partition": p.partition} {
		if v != "" {
			q.Set(name, v)
		} else {
			q.Del(name)
		}
	}
	r.URL.RawQuery = q.Encode()
	return p.next.RoundTrip(r)
}

// tlsExplained is a HealthAPI whose TLS failures say which setting to look
// at: a certificate the agent presented that does not verify names the CA
// file or directory it was checked against, and a handshake the agent
// refused names the client certificate. Other errors pass unchanged; every
// error stays wrapped (%w).
type tlsExplained struct {
	h   discovery.ConnectHealthAPI
	tls config.ConsulTLS
}

var _ discovery.ConnectHealthAPI = tlsExplained{}

func (t tlsExplained) Connect(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	entries, meta, err := t.h.Connect(service, tag, passingOnly, q)
	if err != nil {
		err = explainTLS(err, t.tls)
	}
	return entries, meta, err
}

func (t tlsExplained) ConnectMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	entries, meta, err := t.h.ConnectMultipleTags(service, tags, passingOnly, q)
	if err != nil {
		err = explainTLS(err, t.tls)
	}
	return entries, meta, err
}

func (t tlsExplained) Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	entries, meta, err := t.h.Service(service, tag, passingOnly, q)
	if err != nil {
		err = explainTLS(err, t.tls)
	}
	return entries, meta, err
}

func (t tlsExplained) ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	entries, meta, err := t.h.ServiceMultipleTags(service, tags, passingOnly, q)
	if err != nil {
		err = explainTLS(err, t.tls)
	}
	return entries, meta, err
}

// explainTLS decorates a TLS failure of a request to Consul.
func explainTLS(err error, c config.ConsulTLS) error {
	var (
		unknown  x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		hostname x509.HostnameError
		verify   *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &unknown), errors.As(err, &invalid), errors.As(err, &hostname), errors.As(err, &verify):
		trust := "the system's roots"
		switch {
		case c.CAFile != "" && c.CAPath != "":
			trust = fmt.Sprintf("ca_file %s, ca_path %s", c.CAFile, c.CAPath)
		case c.CAFile != "":
			trust = "ca_file " + c.CAFile
		case c.CAPath != "":
			trust = "ca_path " + c.CAPath
		}
		if c.ServerName != "" {
			trust += ", server_name " + c.ServerName
		}
		return fmt.Errorf("consul TLS: certificate verification failed (%s): %w", trust, err)
	case strings.Contains(err.Error(), "remote error: tls: "):
		cert := "no cert_file"
		if c.CertFile != "" {
			cert = "cert_file " + c.CertFile
		}
		return fmt.Errorf("consul TLS: the agent refused the handshake (%s): %w", cert, err)
	}
	return err
}
