package discovery

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestFollow: Follow sends the last index, publishes the first answer and
// each one whose index moved, skips repeats, starts over from 0 when the
// index goes backwards and after an error (reported to failed).
func TestFollow(t *testing.T) {
	type step struct {
		index uint64
		err   error
	}
	steps := []step{{5, nil}, {5, nil}, {7, nil}, {3, nil}, {0, errors.New("boom")}, {9, nil}}
	var (
		mu      sync.Mutex
		asked   []uint64
		got     []uint64
		failed  []string
		i       int
		ctx, cf = context.WithCancel(context.Background())
	)
	defer cf()
	done := make(chan struct{})
	go func() {
		defer close(done)
		Follow(ctx, FollowOptions{What: "test", BackoffMin: time.Millisecond, BackoffMax: time.Millisecond},
			func(q *api.QueryOptions) (string, *api.QueryMeta, error) {
				mu.Lock()
				defer mu.Unlock()
				asked = append(asked, q.WaitIndex)
				if i >= len(steps) {
					cf()
					<-q.Context().Done()
					return "", nil, q.Context().Err()
				}
				s := steps[i]
				i++
				if s.err != nil {
					return "", nil, s.err
				}
				return "v", &api.QueryMeta{LastIndex: s.index}, nil
			},
			func(_ string, index uint64) { got = append(got, index) },
			func(err error) { failed = append(failed, err.Error()) })
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Follow did not end")
	}
	mu.Lock()
	defer mu.Unlock()
	wantAsked := []uint64{0, 5, 5, 7, 0, 0, 9}
	wantGot := []uint64{5, 7, 3, 9}
	if !equal(asked, wantAsked) || !equal(got, wantGot) || len(failed) != 1 {
		t.Errorf("asked %v (want %v), got %v (want %v), failed %v", asked, wantAsked, got, wantGot, failed)
	}
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
