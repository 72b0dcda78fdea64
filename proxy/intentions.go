package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// Intentions tells a denial by the service mesh's intentions from a
// failure of a Consul Connect instance. A sidecar refuses a connection
// whose source the intentions deny with a TLS alert (with TLS 1.3 on the
// first read, not the handshake); a sidecar that does not yet trust a
// freshly rotated leaf sends the same alert, so the alert alone proves
// nothing.
type Intentions interface {
	// Denied returns a *DenialError when err, the failure of a
	// connection to an instance of the service (dial, handshake or
	// exchange), carries a TLS alert from the instance (IsTLSAlert) and
	// the intentions deny sluice's identity this service; else nil, and
	// err is the instance's failure. It is called on failures only, may
	// ask the local Consul agent (bounded by ctx and its own timeout) and
	// counts the denials it returns.
	Denied(ctx context.Context, err error) *DenialError
}

// DenialError is a connection the mesh's intentions refused: not the
// instance's failure (no retry on another instance of the service, no
// passive ejection count, a probe neither passes nor fails) nor the
// client's; an HTTP client gets 403.
type DenialError struct {
	Source      string // sluice's identity
	Destination string // the service dialled
	Reason      string // the agent's explanation, e.g. the matching intention
	Err         error  // the connection's failure
}

func (e *DenialError) Error() string {
	return "intention denies " + e.Source + " => " + e.Destination + ": " + e.Err.Error()
}

func (e *DenialError) Unwrap() error { return e.Err }

// IsTLSAlert reports whether err carries a TLS alert that the peer sent
// ("remote error: tls: ...").
func IsTLSAlert(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if op, ok := e.(*net.OpError); ok && op.Op == "remote error" {
			return true
		}
	}
	return err != nil && strings.Contains(err.Error(), "remote error: tls: ")
}

// denied asks in, when set, whether err is a denial.
func denied(ctx context.Context, in Intentions, err error) *DenialError {
	if in == nil || err == nil || !IsTLSAlert(err) {
		return nil
	}
	return in.Denied(ctx, err)
}

// writeDenial answers 403 with a JSON body naming the intention's source
// and destination.
func writeDenial(w http.ResponseWriter, d *DenialError, service string) {
	body, _ := json.Marshal(struct {
		Error       string `json:"error"`
		Service     string `json:"service,omitempty"`
		Source      string `json:"source"`
		Destination string `json:"destination"`
		Reason      string `json:"reason,omitempty"`
	}{"denied by Consul intentions", service, d.Source, d.Destination, d.Reason})
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusForbidden)
	w.Write(body)
}
