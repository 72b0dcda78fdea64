// Package admin serves sluice's status API: GET /v1/services and GET /healthz.
package admin

import (
	"encoding/json"
	"net/http"

	"github.com/sluice-lb/sluice/balance"
)

// ServicesResponse is the body of GET /v1/services.
type ServicesResponse struct {
	Services []Service `json:"services"`
}

// Service is the status of one service's pool.
type Service struct {
	Name        string     `json:"name"`
	Strategy    string     `json:"strategy"`
	Synced      bool       `json:"synced"`
	ConsulIndex uint64     `json:"consul_index"`
	ConsulError string     `json:"consul_error,omitempty"`
	Instances   []Instance `json:"instances"`
}

// Instance is the status of one instance.
type Instance struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Weight  int    `json:"weight"`
	Consul  string `json:"consul"`
	// Invalid says why the instance's Consul entry cannot be used (bad
	// address or port, duplicate ID); such an instance is never eligible.
	Invalid  string `json:"invalid,omitempty"`
	Probe    string `json:"probe"`
	Ejected  bool   `json:"ejected"`
	Eligible bool   `json:"eligible"`
	Inflight int64  `json:"inflight"`
	Requests uint64 `json:"requests"`
}

// NewHandler serves the status of pools, in the order given.
//
//	GET /v1/services  JSON status of every service and instance
//	GET /healthz      200 once every pool has had its first Consul answer, else 503
func NewHandler(pools []*balance.Pool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		resp := ServicesResponse{Services: make([]Service, 0, len(pools))}
		for _, p := range pools {
			resp.Services = append(resp.Services, serviceStatus(p.Load()))
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		var waiting []string
		for _, p := range pools {
			if !p.Load().Synced {
				waiting = append(waiting, p.Service())
			}
		}
		if len(waiting) > 0 {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "waiting for consul", "services": waiting})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	return mux
}

func serviceStatus(s *balance.Snapshot) Service {
	out := Service{
		Name: s.Service, Strategy: s.Strategy, Synced: s.Synced,
		ConsulIndex: s.ConsulIndex, ConsulError: s.ConsulError,
		Instances: make([]Instance, 0, len(s.Members)),
	}
	for _, m := range s.Members {
		out.Instances = append(out.Instances, Instance{
			ID: m.ID, Address: m.Addr, Weight: m.Weight, Consul: string(m.Consul), Invalid: m.Invalid,
			Probe: string(m.Probe), Ejected: m.Ejected, Eligible: m.Eligible,
			Inflight: m.Stats.Inflight(), Requests: m.Stats.Requests(),
		})
	}
	return out
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
