package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// benchCert is the self-signed ECDSA P-256 certificate (for 127.0.0.1 and
// localhost) that every contender's TLS listener presents, so that the TLS
// rows compare the same handshake and cipher work.
type benchCert struct {
	certFile, keyFile string // PEM, for sluice and nginx
	bundle            string // certificate and key in one PEM file, for HAProxy
}

func writeBenchCert(dir string) (benchCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return benchCert{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return benchCert{}, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return benchCert{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	c := benchCert{certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem"), bundle: filepath.Join(dir, "bundle.pem")}
	for f, b := range map[string][]byte{c.certFile: certPEM, c.keyFile: keyPEM, c.bundle: append(append([]byte{}, certPEM...), keyPEM...)} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return c, err
		}
	}
	return c, nil
}

var (
	h2loadFinished = regexp.MustCompile(`finished in ([0-9.]+)s, ([0-9.]+) req/s`)
	h2loadRequests = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2loadStatus   = regexp.MustCompile(`status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
	h2loadReqTime  = regexp.MustCompile(`time for request:\s+(\S+)\s+(\S+)\s+(\S+)`)
)

// h2Run is h2load over TLS with ALPN h2: 32 connections with up to 10
// streams each, pinned to CPU 1. h2load reports no percentiles: p50 holds
// the mean time per request, p99 and p99.9 the maximum.
func h2Run(path string) func(*options, *env, *contender) (sample, error) {
	return func(o *options, e *env, c *contender) (sample, error) {
		before := procTicks(c)
		secs := strconv.Itoa(max(1, int(o.duration.Seconds())))
		out, err := exec.Command("taskset", "-c", "1", "h2load", "-t1", "-c32", "-m10", "-D", secs,
			"https://"+c.tlsAddr+path).CombinedOutput()
		if err != nil {
			return sample{}, fmt.Errorf("h2load %s: %w: %s", c.name, err, out)
		}
		ticks := procTicks(c) - before
		text := string(out)
		fin, req := h2loadFinished.FindStringSubmatch(text), h2loadRequests.FindStringSubmatch(text)
		if fin == nil || req == nil {
			return sample{}, fmt.Errorf("h2load output: %q", out)
		}
		succeeded, _ := strconv.ParseFloat(req[4], 64)
		rps, _ := strconv.ParseFloat(fin[2], 64)
		s := sample{units: succeeded, throughput: rps}
		for _, i := range []int{5, 6, 7} {
			n, _ := strconv.ParseInt(req[i], 10, 64)
			s.errors += n
		}
		if st := h2loadStatus.FindStringSubmatch(text); st != nil {
			for _, i := range []int{3, 4, 5} {
				n, _ := strconv.ParseInt(st[i], 10, 64)
				s.errors += n
			}
		}
		if s.errors > 0 && s.firstErr == "" {
			s.firstErr = strings.TrimSpace(req[0])
		}
		if rt := h2loadReqTime.FindStringSubmatch(text); rt != nil {
			s.p50 = h2loadMillis(rt[3])
			s.p99, s.p999 = h2loadMillis(rt[2]), h2loadMillis(rt[2])
		}
		if c.proc != nil && succeeded > 0 {
			s.cpuUsPerUnit = float64(ticks) * 1e6 / clockTick / succeeded
		}
		return s, nil
	}
}

// h2loadMillis reads one of h2load's durations ("812us", "1.23ms", "2.5s").
func h2loadMillis(v string) float64 {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 0.001}, {"ms", 1}, {"s", 1000}} {
		if strings.HasSuffix(v, u.suffix) {
			f, err := strconv.ParseFloat(strings.TrimSuffix(v, u.suffix), 64)
			if err != nil {
				return 0
			}
			return f * u.ms
		}
	}
	return 0
}
