package discovery

import (
	"errors"
	"io"
	"net/http"
	"testing"
)

// sized is a body of n bytes that costs no memory.
type sized struct{ n int64 }

func (s *sized) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	k := min(int64(len(p)), s.n)
	s.n -= k
	return int(k), nil
}

func (s *sized) Close() error { return nil }

type bodyOf int64

func (n bodyOf) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Body: &sized{n: int64(n)}, ContentLength: -1}, nil
}

// TestAnswersAreBounded: any answer that RawTransport passes on (the
// catalog's, Connect's, the agent's) fails once it is longer than
// MaxAnswerBytes, so a hostile or broken agent cannot make sluice hold an
// answer of any size; one of exactly MaxAnswerBytes reads whole.
func TestAnswersAreBounded(t *testing.T) {
	for _, tc := range []struct {
		size int64
		want error
	}{{MaxAnswerBytes, nil}, {MaxAnswerBytes + 1, errAnswerTooLarge}, {4 * MaxAnswerBytes, errAnswerTooLarge}} {
		req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:8500/v1/catalog/services", nil)
		resp, err := RawTransport(bodyOf(tc.size)).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		if !errors.Is(err, tc.want) {
			t.Errorf("a %d-byte answer: %v after %d bytes, want %v", tc.size, err, n, tc.want)
		}
		if want := min(tc.size, MaxAnswerBytes); n != want {
			t.Errorf("a %d-byte answer: %d bytes read, want %d", tc.size, n, want)
		}
		// The error stays.
		if _, err := resp.Body.Read(make([]byte, 1)); tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("a %d-byte answer, read after the error: %v", tc.size, err)
		}
	}
}
