package config

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// maxSecretFile is the most bytes read from a token, certificate or key
// file; a larger file is refused.
const maxSecretFile = 1 << 20

// origin is where one consul setting came from, for diagnostics about it:
// an attribute of the file, or else an environment variable. Both are
// empty for a built-in default.
type origin struct {
	attr *hcl.Attribute
	env  string // the variable, when attr is nil and the value came from it
	path string // the attribute's path in the file, such as "consul.tls.ca_file"
}

// set reports whether the value came from the file or the environment.
func (o origin) set() bool { return o.attr != nil || o.env != "" }

// problem records a diagnostic about the value that came from o: at the
// attribute's value ("Invalid NAME: NAME PROBLEM; got VALUE"), or else
// naming the variable ("Invalid VAR: environment variable VAR PROBLEM; got
// VALUE (set PATH to override it)"). got is shown as written; callers never
// pass a secret.
func (d *decoder) problem(o origin, problem, got string) {
	if o.attr != nil {
		d.invalid(o.attr, problem, got)
		return
	}
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Invalid " + o.env,
		Detail: fmt.Sprintf("environment variable %s %s; got %s (set %s to override it)",
			o.env, problem, got, o.path),
		Context: &hcl.Range{Filename: d.filename},
	})
}

// envStr decodes the string attribute name of as into dst or, when it is
// absent, takes the variable envVar when that is set (non-empty). Checks
// run on either. ok is false when a diagnostic was recorded.
func (d *decoder) envStr(as hcl.Attributes, name, path, envVar string, dst *string, checks ...check[string]) (o origin, ok bool) {
	o.path = path
	if a := as[name]; a != nil {
		o.attr = a
		return o, d.str(as, name, dst, checks...)
	}
	v := d.opts.Getenv(envVar)
	if envVar == "" || v == "" {
		return origin{path: path}, true
	}
	o.env = envVar
	for _, c := range checks {
		if problem := c(v); problem != "" {
			d.problem(o, problem, quote(v))
			return o, false
		}
	}
	*dst = v
	return o, true
}

// envBool is envStr for a bool attribute; the variable is parsed with
// strconv.ParseBool. When neither is set, *dst keeps its default.
func (d *decoder) envBool(as hcl.Attributes, name, path, envVar string, dst *bool) (o origin, ok bool) {
	o.path = path
	if a := as[name]; a != nil {
		o.attr = a
		return o, d.boolean(as, name, dst)
	}
	v := d.opts.Getenv(envVar)
	if v == "" {
		return origin{path: path}, true
	}
	o.env = envVar
	b, err := strconv.ParseBool(v)
	if err != nil {
		d.problem(o, "must be true or false", quote(v))
		return o, false
	}
	*dst = b
	return o, true
}

// consul decodes the consul block, if any, over the environment's
// defaults (see Consul for the precedence).
func (d *decoder) consul(b *hcl.Block) Consul {
	c := Consul{Address: defaultConsulAddress, Stale: true}
	as := hcl.Attributes{}
	tlsAs := hcl.Attributes{}
	if b != nil {
		content := d.content(b.Body, consulSchema)
		as = content.Attributes
		if tb := d.first(content.Blocks, "tls"); tb != nil {
			tlsAs = d.content(tb.Body, consulTLSSchema).Attributes
		}
	}

	if _, ok := d.envStr(as, "address", "consul.address", "CONSUL_HTTP_ADDR", &c.Address, consulAddress); ok &&
		!strings.Contains(c.Address, "://") {
		// CONSUL_HTTP_SSL only matters for an address without a scheme.
		var ssl bool
		if _, ok := d.envBool(nil, "", "consul.address", "CONSUL_HTTP_SSL", &ssl); ok && ssl {
			c.Address = "https://" + c.Address
		}
	}
	d.token(as, &c)
	d.str(as, "datacenter", &c.Datacenter)
	d.envStr(as, "namespace", "consul.namespace", "CONSUL_NAMESPACE", &c.Namespace)
	d.envStr(as, "partition", "consul.partition", "CONSUL_PARTITION", &c.Partition)
	d.boolean(as, "stale", &c.Stale)
	c.TLS = d.consulTLS(tlsAs)
	return c
}

// token decodes token and token_file, which exclude each other and
// override CONSUL_HTTP_TOKEN_FILE and CONSUL_HTTP_TOKEN (the file
// variable first, as Consul's CLI does). A token file is read now.
// token_file = "" in the file means no token.
func (d *decoder) token(as hcl.Attributes, c *Consul) {
	tok, file := as["token"], as["token_file"]
	switch {
	case tok != nil && file != nil:
		d.errorf(file.NameRange, "Conflicting token settings",
			"token and token_file are both set (token at %s); set only one", pos(tok.NameRange))
	case tok != nil:
		d.str(as, "token", &c.Token)
	default:
		o, ok := d.envStr(as, "token_file", "consul.token_file", "CONSUL_HTTP_TOKEN_FILE", &c.TokenFile)
		switch {
		case !ok, o.attr != nil && c.TokenFile == "":
		case o.set():
			data, problem := readSmall(c.TokenFile)
			if problem == "" && strings.TrimSpace(string(data)) == "" {
				problem = "must name a file that holds a token (it is empty)"
			}
			if problem != "" {
				d.problem(o, problem, quote(c.TokenFile))
				return
			}
			c.Token = strings.TrimSpace(string(data))
		default:
			c.Token = d.opts.Getenv("CONSUL_HTTP_TOKEN")
		}
	}
}

// consulTLS decodes the consul block's tls block (as is empty without
// one) and checks every file it names. A path written as "" in the file
// means none, whatever the environment says.
func (d *decoder) consulTLS(as hcl.Attributes) ConsulTLS {
	var t ConsulTLS
	sum := sha256.New() // of every file read, for t.Files
	if o, ok := d.envStr(as, "ca_file", "consul.tls.ca_file", "CONSUL_CACERT", &t.CAFile); ok && t.CAFile != "" {
		if data, problem := readSmall(t.CAFile); problem != "" {
			d.problem(o, problem, quote(t.CAFile))
		} else {
			sum.Write(data)
			if !x509.NewCertPool().AppendCertsFromPEM(data) {
				d.problem(o, "must name a PEM file with at least one certificate", quote(t.CAFile))
			}
		}
	}
	if o, ok := d.envStr(as, "ca_path", "consul.tls.ca_path", "CONSUL_CAPATH", &t.CAPath); ok && t.CAPath != "" {
		if problem := checkCAPath(t.CAPath, sum); problem != "" {
			d.problem(o, problem, quote(t.CAPath))
		}
	}
	certO, certOK := d.envStr(as, "cert_file", "consul.tls.cert_file", "CONSUL_CLIENT_CERT", &t.CertFile)
	keyO, keyOK := d.envStr(as, "key_file", "consul.tls.key_file", "CONSUL_CLIENT_KEY", &t.KeyFile)
	var cert, key []byte
	if certOK && t.CertFile != "" {
		var problem string
		if cert, problem = readSmall(t.CertFile); problem != "" {
			d.problem(certO, problem, quote(t.CertFile))
			certOK = false
		}
	}
	if keyOK && t.KeyFile != "" {
		var problem string
		if key, problem = readSmall(t.KeyFile); problem != "" {
			d.problem(keyO, problem, quote(t.KeyFile))
			keyOK = false
		}
	}
	sum.Write(cert)
	sum.Write(key)
	if t.CAFile != "" || t.CAPath != "" || t.CertFile != "" || t.KeyFile != "" {
		sum.Sum(t.Files[:0])
	}
	switch {
	case !certOK || !keyOK:
	case t.CertFile != "" && t.KeyFile == "":
		d.problem(certO, "needs a key_file (or CONSUL_CLIENT_KEY) with the certificate's private key", quote(t.CertFile))
	case t.KeyFile != "" && t.CertFile == "":
		d.problem(keyO, "needs a cert_file (or CONSUL_CLIENT_CERT) with the client certificate", quote(t.KeyFile))
	case t.CertFile != "":
		if _, err := tls.X509KeyPair(cert, key); err != nil {
			d.problem(certO, fmt.Sprintf("and key_file %s must form a key pair (%v)", quote(t.KeyFile), err), quote(t.CertFile))
		}
	}
	d.envStr(as, "server_name", "consul.tls.server_name", "CONSUL_TLS_SERVER_NAME", &t.ServerName)
	verify := true
	if a := as["insecure_skip_verify"]; a != nil {
		d.boolean(as, "insecure_skip_verify", &t.InsecureSkipVerify)
	} else if _, ok := d.envBool(nil, "", "consul.tls.insecure_skip_verify", "CONSUL_HTTP_SSL_VERIFY", &verify); ok {
		t.InsecureSkipVerify = !verify
	}
	return t
}

// readSmall reads a regular file of at most maxSecretFile bytes; problem
// describes why it cannot, phrased to follow an attribute name. Anything
// but a regular file (after symbolic links) is refused before it is
// opened, so that a FIFO or a device cannot block or flood validation.
func readSmall(name string) (data []byte, problem string) {
	fi, err := os.Stat(name)
	if err == nil && !fi.Mode().IsRegular() {
		return nil, "must name a regular file"
	}
	if err == nil {
		data, err = readAtMost(name, maxSecretFile+1)
	}
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Sprintf("must name a readable file (%v)", err)
	}
	if len(data) > maxSecretFile {
		return nil, fmt.Sprintf("must name a file of at most %d bytes", maxSecretFile)
	}
	return data, ""
}

// checkCAPath checks a CA directory the way the Consul client loads it:
// every file under it must be a PEM file with at least one certificate.
// Each file's content is written to sum.
func checkCAPath(dir string, sum io.Writer) string {
	fi, err := os.Stat(dir)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Sprintf("must name a readable directory (%v)", err)
	}
	if !fi.IsDir() {
		return "must name a directory"
	}
	var problem string
	err = filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		data, p := readSmall(path)
		sum.Write(data)
		if p == "" && !x509.NewCertPool().AppendCertsFromPEM(data) {
			p = "must name a PEM file with at least one certificate"
		}
		if p != "" {
			problem = fmt.Sprintf("must hold only PEM certificate files (%s %s)", quote(path), p)
			return fs.SkipAll
		}
		return nil
	})
	if err != nil {
		return fmt.Sprintf("must name a readable directory (%v)", err)
	}
	return problem
}
