package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsFiles writes, in a new directory, a self-signed certificate and its
// key (ca.pem, key.pem), a second key (other-key.pem), a token file, an
// empty file, a file that is not PEM, and a directory holding ca.pem.
type tlsFiles struct {
	dir, ca, key, otherKey, token, empty, notPEM, caDir string
}

func writeTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	f := tlsFiles{
		dir: dir, ca: filepath.Join(dir, "ca.pem"), key: filepath.Join(dir, "key.pem"),
		otherKey: filepath.Join(dir, "other-key.pem"), token: filepath.Join(dir, "token"),
		empty: filepath.Join(dir, "empty"), notPEM: filepath.Join(dir, "not.pem"), caDir: filepath.Join(dir, "cas"),
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := func(k *ecdsa.PrivateKey) []byte {
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})
	}
	if err := os.Mkdir(f.caDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		f.ca: certPEM, f.key: keyPEM(key), f.otherKey: keyPEM(other), f.token: []byte("  s3cret-token\n"),
		f.empty: nil, f.notPEM: []byte("hello"), filepath.Join(f.caDir, "ca.pem"): certPEM,
	} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestConsulSettingsPrecedence(t *testing.T) {
	f := writeTLSFiles(t)
	fullEnv := map[string]string{
		"CONSUL_HTTP_ADDR": "127.0.0.9:8501", "CONSUL_HTTP_TOKEN": "env-token", "CONSUL_HTTP_SSL": "true",
		"CONSUL_HTTP_SSL_VERIFY": "false", "CONSUL_CACERT": f.ca, "CONSUL_CAPATH": f.caDir,
		"CONSUL_CLIENT_CERT": f.ca, "CONSUL_CLIENT_KEY": f.key, "CONSUL_TLS_SERVER_NAME": "env.consul",
		"CONSUL_NAMESPACE": "env-ns", "CONSUL_PARTITION": "env-part",
	}
	fullFile := `consul {
  address     = "http://127.0.0.1:8500"
  token       = "file-token"
  datacenter  = "dc2"
  namespace   = "file-ns"
  partition   = "file-part"
  stale       = false
  tls {
    ca_file              = "` + f.ca + `"
    ca_path              = ""
    cert_file            = "` + f.ca + `"
    key_file             = "` + f.key + `"
    server_name          = "file.consul"
    insecure_skip_verify = false
  }
}
` + okListener
	for _, tc := range []struct {
		name string
		src  string
		env  map[string]string
		want Consul
	}{
		{"built-in defaults", okListener, nil, Consul{Address: "127.0.0.1:8500", Stale: true}},
		{"environment over defaults", okListener, fullEnv, Consul{
			Address: "https://127.0.0.9:8501", Token: "env-token", Namespace: "env-ns", Partition: "env-part", Stale: true,
			TLS: ConsulTLS{CAFile: f.ca, CAPath: f.caDir, CertFile: f.ca, KeyFile: f.key, ServerName: "env.consul", InsecureSkipVerify: true},
		}},
		// ca_path = "" in the file wins over CONSUL_CAPATH.
		{"file over environment", fullFile, fullEnv, Consul{
			Address: "http://127.0.0.1:8500", Token: "file-token", Datacenter: "dc2", Namespace: "file-ns", Partition: "file-part",
			TLS: ConsulTLS{CAFile: f.ca, CertFile: f.ca, KeyFile: f.key, ServerName: "file.consul"},
		}},
		{"CONSUL_HTTP_SSL adds https to a file address without a scheme", "consul {\n  address = \"127.0.0.1:8501\"\n}\n" + okListener,
			map[string]string{"CONSUL_HTTP_SSL": "1"}, Consul{Address: "https://127.0.0.1:8501", Stale: true}},
		{"CONSUL_HTTP_SSL false", okListener, map[string]string{"CONSUL_HTTP_SSL": "false", "CONSUL_HTTP_SSL_VERIFY": "true"},
			Consul{Address: "127.0.0.1:8500", Stale: true}},
		{"token file from the environment over CONSUL_HTTP_TOKEN", okListener,
			map[string]string{"CONSUL_HTTP_TOKEN_FILE": f.token, "CONSUL_HTTP_TOKEN": "env-token"},
			Consul{Address: "127.0.0.1:8500", Token: "s3cret-token", TokenFile: f.token, Stale: true}},
		{"token in the file over CONSUL_HTTP_TOKEN_FILE", "consul {\n  token = \"file-token\"\n}\n" + okListener,
			map[string]string{"CONSUL_HTTP_TOKEN_FILE": f.token},
			Consul{Address: "127.0.0.1:8500", Token: "file-token", Stale: true}},
		{"token_file in the file over CONSUL_HTTP_TOKEN", "consul {\n  token_file = \"" + f.token + "\"\n}\n" + okListener,
			map[string]string{"CONSUL_HTTP_TOKEN": "env-token"},
			Consul{Address: "127.0.0.1:8500", Token: "s3cret-token", TokenFile: f.token, Stale: true}},
		{"insecure_skip_verify in the file over CONSUL_HTTP_SSL_VERIFY", "consul {\n  tls {\n    insecure_skip_verify = true\n  }\n}\n" + okListener,
			map[string]string{"CONSUL_HTTP_SSL_VERIFY": "true"},
			Consul{Address: "127.0.0.1:8500", Stale: true, TLS: ConsulTLS{InsecureSkipVerify: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(tc.env)})
			if diags.HasErrors() {
				t.Fatalf("Parse: %v", FormatDiagnostics(diags))
			}
			have := cfg.Consul
			named := have.TLS.CAFile != "" || have.TLS.CAPath != "" || have.TLS.CertFile != ""
			if zero := have.TLS.Files == [32]byte{}; zero == named {
				t.Errorf("TLS.Files: want a digest exactly when files are named (%t), have %x", named, have.TLS.Files)
			}
			have.TLS.Files = [32]byte{}
			if have != tc.want {
				t.Errorf("consul:\nwant %+v\nhave %+v", tc.want, have)
			}
		})
	}
}

// A reload compares Consul values: a token file, CA file, certificate or
// key whose content changed under the same name must make them differ.
func TestConsulFileContentIsPartOfTheSettings(t *testing.T) {
	f := writeTLSFiles(t)
	src := []byte(`consul {
  token_file = "` + f.token + `"
  tls {
    ca_file   = "` + f.caDir + `/ca.pem"
    ca_path   = "` + f.caDir + `"
    cert_file = "` + f.ca + `"
    key_file  = "` + f.key + `"
  }
}
` + okListener)
	parse := func() Consul {
		t.Helper()
		cfg, diags := Parse("test.hcl", src, Options{Getenv: env(nil)})
		if diags.HasErrors() {
			t.Fatal(FormatDiagnostics(diags))
		}
		return cfg.Consul
	}
	replace := func(dst, src string) {
		t.Helper()
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	prev := parse()
	if again := parse(); again != prev {
		t.Fatalf("same files, different settings:\n%+v\n%+v", prev, again)
	}
	if err := os.WriteFile(f.token, []byte("rotated\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if have := parse(); have == prev || have.Token != "rotated" {
		t.Errorf("want the new token after the token file changed; have %q then %q", prev.Token, have.Token)
	} else {
		prev = have
	}
	// A new CA (the same certificate under the directory, then a new key
	// pair): every change of content shows.
	other := writeTLSFiles(t)
	replace(filepath.Join(f.caDir, "ca.pem"), other.ca)
	if have := parse(); have == prev {
		t.Error("want a change after the CA file changed")
	} else {
		prev = have
	}
	replace(f.ca, other.ca)
	replace(f.key, other.key)
	if have := parse(); have == prev {
		t.Error("want a change after the certificate and key changed")
	}
}

func TestConsulSettingErrors(t *testing.T) {
	f := writeTLSFiles(t)
	missing := filepath.Join(f.dir, "missing.pem")
	tlsBlock := func(lines ...string) string {
		return "consul {\n  tls {\n    " + strings.Join(lines, "\n    ") + "\n  }\n}\n" + okListener
	}
	q := func(s string) string { return `"` + s + `"` }
	for _, tc := range []struct {
		name   string
		src    string
		env    map[string]string
		wantAt string // LINE,COL, or "" for a diagnostic about the environment
		want   string
	}{
		{"token and token_file", "consul {\n  token      = \"x\"\n  token_file = " + q(f.token) + "\n}\n" + okListener, nil,
			"3,3", "Conflicting token settings: token and token_file are both set (token at test.hcl:2,3); set only one"},
		{"unreadable token_file", "consul {\n  token_file = " + q(missing) + "\n}\n" + okListener, nil,
			"2,16", "Invalid token_file: token_file must name a readable file (no such file or directory); got " + q(missing)},
		{"empty token_file", "consul {\n  token_file = " + q(f.empty) + "\n}\n" + okListener, nil,
			"2,16", "Invalid token_file: token_file must name a file that holds a token (it is empty)"},
		{"unreadable CONSUL_HTTP_TOKEN_FILE", okListener, map[string]string{"CONSUL_HTTP_TOKEN_FILE": missing}, "",
			"Invalid CONSUL_HTTP_TOKEN_FILE: environment variable CONSUL_HTTP_TOKEN_FILE must name a readable file (no such file or directory); got " + q(missing) + " (set consul.token_file to override it)"},
		{"unreadable ca_file", tlsBlock("ca_file = " + q(missing)), nil,
			"3,15", "Invalid ca_file: ca_file must name a readable file (no such file or directory); got " + q(missing)},
		{"ca_file not a regular file", tlsBlock(`ca_file = "/dev/null"`), nil,
			"3,15", `Invalid ca_file: ca_file must name a regular file; got "/dev/null"`},
		{"token_file a directory", "consul {\n  token_file = " + q(f.dir) + "\n}\n" + okListener, nil,
			"2,16", "Invalid token_file: token_file must name a regular file"},
		{"ca_file without a certificate", tlsBlock("ca_file = " + q(f.notPEM)), nil,
			"3,15", "Invalid ca_file: ca_file must name a PEM file with at least one certificate; got " + q(f.notPEM)},
		{"unreadable CONSUL_CACERT", okListener, map[string]string{"CONSUL_CACERT": missing}, "",
			"Invalid CONSUL_CACERT: environment variable CONSUL_CACERT must name a readable file (no such file or directory); got " + q(missing) + " (set consul.tls.ca_file to override it)"},
		{"missing ca_path", tlsBlock("ca_path = " + q(missing)), nil,
			"3,15", "Invalid ca_path: ca_path must name a readable directory (no such file or directory)"},
		{"ca_path is a file", tlsBlock("ca_path = " + q(f.ca)), nil,
			"3,15", "Invalid ca_path: ca_path must name a directory; got " + q(f.ca)},
		{"ca_path with a file that is not PEM", tlsBlock("ca_path = " + q(f.dir)), nil,
			"3,15", "Invalid ca_path: ca_path must hold only PEM certificate files"},
		{"unreadable cert_file", tlsBlock("cert_file = "+q(missing), "key_file = "+q(f.key)), nil,
			"3,17", "Invalid cert_file: cert_file must name a readable file (no such file or directory)"},
		{"unreadable key_file", tlsBlock("cert_file = "+q(f.ca), "key_file = "+q(missing)), nil,
			"4,16", "Invalid key_file: key_file must name a readable file (no such file or directory)"},
		{"cert_file without key_file", tlsBlock("cert_file = " + q(f.ca)), nil,
			"3,17", "Invalid cert_file: cert_file needs a key_file (or CONSUL_CLIENT_KEY)"},
		{"key_file without cert_file", tlsBlock("key_file = " + q(f.key)), nil,
			"3,16", "Invalid key_file: key_file needs a cert_file (or CONSUL_CLIENT_CERT)"},
		{"cert and key do not match", tlsBlock("cert_file = "+q(f.ca), "key_file = "+q(f.otherKey)), nil,
			"3,17", "Invalid cert_file: cert_file and key_file " + q(f.otherKey) + " must form a key pair (tls: private key does not match public key)"},
		{"CONSUL_CLIENT_CERT and key do not match", okListener, map[string]string{"CONSUL_CLIENT_CERT": f.ca, "CONSUL_CLIENT_KEY": f.otherKey}, "",
			"Invalid CONSUL_CLIENT_CERT: environment variable CONSUL_CLIENT_CERT and key_file " + q(f.otherKey) + " must form a key pair"},
		{"CONSUL_HTTP_SSL not a bool", okListener, map[string]string{"CONSUL_HTTP_SSL": "yes"}, "",
			`Invalid CONSUL_HTTP_SSL: environment variable CONSUL_HTTP_SSL must be true or false; got "yes" (set consul.address to override it)`},
		{"CONSUL_HTTP_SSL_VERIFY not a bool", okListener, map[string]string{"CONSUL_HTTP_SSL_VERIFY": "no way"}, "",
			`Invalid CONSUL_HTTP_SSL_VERIFY: environment variable CONSUL_HTTP_SSL_VERIFY must be true or false; got "no way" (set consul.tls.insecure_skip_verify to override it)`},
		{"insecure_skip_verify not a bool", tlsBlock(`insecure_skip_verify = "yes"`), nil,
			"3,28", `Invalid insecure_skip_verify: insecure_skip_verify must be true or false; got string "yes"`},
		{"unknown tls attribute", tlsBlock(`ca = "x"`), nil, "3,5", "Unsupported argument"},
		{"two tls blocks", "consul {\n  tls {}\n  tls {}\n}\n" + okListener, nil, "3,3", "Duplicate tls block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, diags := Parse("test.hcl", []byte(tc.src), Options{Getenv: env(tc.env)})
			have := FormatDiagnostics(diags)
			if len(have) != 1 {
				t.Fatalf("want exactly 1 error, have %d:\n%s", len(have), strings.Join(have, "\n"))
			}
			prefix := "test.hcl:" + tc.wantAt + ": "
			if tc.wantAt == "" {
				prefix = "test.hcl: "
			}
			if !strings.HasPrefix(have[0], prefix) || !strings.Contains(have[0], tc.want) {
				t.Errorf("want %q containing %q, have\n%s", prefix, tc.want, have[0])
			}
			if cfg != nil {
				t.Errorf("want nil config with errors")
			}
		})
	}
}

func TestConsulTokenNeverInDiagnostics(t *testing.T) {
	f := writeTLSFiles(t)
	for _, src := range []string{
		"consul {\n  token = \"s3cret-token\"\n  token_file = \"" + f.token + "\"\n}\n" + okListener,
		"consul {\n  token_file = \"" + f.token + "\"\n  address = \"bad\"\n}\n" + okListener,
	} {
		_, diags := Parse("test.hcl", []byte(src), Options{Getenv: env(nil)})
		if !diags.HasErrors() {
			t.Fatalf("want errors for\n%s", src)
		}
		if all := strings.Join(FormatDiagnostics(diags), "\n"); strings.Contains(all, "s3cret") {
			t.Errorf("diagnostics show the token:\n%s", all)
		}
	}
}
