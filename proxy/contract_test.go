package proxy

import (
	"context"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// transportOf returns the balancing transport of svc as NewHTTPHandler
// builds it.
func transportOf(svc ServiceOptions) *balancingTransport {
	opts := HTTPOptions{Transport: NewUpstream(), Pressure: NewPressure(nil), MaxReplayBody: DefaultMaxReplayBody}
	return newServiceProxy(svc, &opts, &bufferPool{}, nil, &forwarding{}, nil, nil, 0, nil).rp.Transport.(*balancingTransport)
}

// TestRoundTripLeavesRequestAlone: RoundTrip does not modify the request
// it was given (its URL and body stay those of the caller), over a failed
// try and a replayed body as well; the response body may be closed twice,
// and the second Close changes nothing.
func TestRoundTripLeavesRequestAlone(t *testing.T) {
	good := backend(t, "good")
	p := pool(t, "round_robin", m("a-dead", deadAddr(t), 1), m("b-good", hostOf(good), 1))
	bt := transportOf(ServiceOptions{Name: "web", Pool: p, Attempts: 2})
	for _, tc := range []struct {
		name, method, body string
	}{
		{"get", http.MethodGet, ""},
		{"replayed put", http.MethodPut, "replayed"},
		{"streamed post", http.MethodPost, "streamed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 { // round robin: one of the two meets the dead instance first
				var body io.ReadCloser = http.NoBody
				if tc.body != "" {
					body = io.NopCloser(strings.NewReader(tc.body))
				}
				req, _ := http.NewRequestWithContext(context.Background(), tc.method, "http://web/x?q=1", body)
				req.ContentLength = int64(len(tc.body))
				req.RemoteAddr = "127.0.0.1:1234"
				u := req.URL
				wantURL := *req.URL
				wantHost := req.Host
				wantHeader := req.Header.Clone()
				resp, err := bt.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				have, _ := io.ReadAll(resp.Body)
				if want := "good /x " + tc.body; string(have) != want {
					t.Errorf("answer: want %q, have %q", want, have)
				}
				if err := resp.Body.Close(); err != nil {
					t.Errorf("first Close: %v", err)
				}
				if err := resp.Body.Close(); err != nil {
					t.Errorf("second Close: %v", err)
				}
				if req.URL != u || !reflect.DeepEqual(*req.URL, wantURL) {
					t.Errorf("URL changed: want %+v, have %+v", wantURL, *req.URL)
				}
				if req.Body != body {
					t.Errorf("Body replaced: %T", req.Body)
				}
				if req.Host != wantHost || !reflect.DeepEqual(req.Header, wantHeader) {
					t.Errorf("Host or Header changed: %q %v", req.Host, req.Header)
				}
			}
			// A second Close that ended the pick again would take the
			// in-flight count below zero.
			for _, mem := range p.Load().Members {
				if n := mem.Stats.Inflight(); n != 0 {
					t.Errorf("%s: in flight %d after every body was closed twice", mem.ID, n)
				}
			}
		})
	}
}
