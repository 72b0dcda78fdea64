package discovery

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// catalogAnswer is one scripted reply of fakeCatalog.
type catalogAnswer struct {
	services map[string][]string
	index    uint64
	err      error
	filtered bool // the answer says ACLs filtered it
}

// fakeCatalog serves scripted answers: each watch query is reported on
// calls and waits for the next answer. A query without an index (the
// confirmation of an empty list) after the first is answered at once when
// filtered is set: empty, filtered by ACLs.
type fakeCatalog struct {
	calls    chan api.QueryOptions
	answers  chan catalogAnswer
	filtered bool
	seen     bool // a query was answered (the Run goroutine's only)
}

func (f *fakeCatalog) Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
	if q.WaitIndex == 0 && f.filtered && f.seen {
		return map[string][]string{}, &api.QueryMeta{LastIndex: 9, ResultsFilteredByACLs: true}, nil
	}
	f.seen = true
	f.calls <- *q
	select {
	case a := <-f.answers:
		if a.err != nil {
			return nil, nil, a.err
		}
		return a.services, &api.QueryMeta{LastIndex: a.index, ResultsFilteredByACLs: a.filtered}, nil
	case <-q.Context().Done():
		return nil, nil, q.Context().Err()
	}
}

type catalogHarness struct {
	fake *fakeCatalog
	out  chan CatalogUpdate
	logs *syncBuffer
}

func startCatalog(t *testing.T, opts CatalogOptions, filtered bool) *catalogHarness {
	t.Helper()
	h := &catalogHarness{fake: &fakeCatalog{calls: make(chan api.QueryOptions, 16), answers: make(chan catalogAnswer), filtered: filtered},
		out: make(chan CatalogUpdate), logs: &syncBuffer{}}
	opts.Logger = hclog.New(&hclog.LoggerOptions{Output: h.logs, Level: hclog.Debug})
	opts.BackoffMin, opts.BackoffMax = time.Millisecond, 2*time.Millisecond
	w := NewCatalogWatcher(h.fake, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx, h.out); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// answer waits for the next query, returns it, and answers it with a.
func (h *catalogHarness) answer(t *testing.T, a catalogAnswer) api.QueryOptions {
	t.Helper()
	select {
	case q := <-h.fake.calls:
		select {
		case h.fake.answers <- a:
		case <-time.After(5 * time.Second):
			t.Fatal("query abandoned")
		}
		return q
	case <-time.After(5 * time.Second):
		t.Fatal("no query")
	}
	return api.QueryOptions{}
}

func (h *catalogHarness) next(t *testing.T) CatalogUpdate {
	t.Helper()
	select {
	case u := <-h.out:
		return u
	case <-time.After(5 * time.Second):
		t.Fatal("no update")
	}
	return CatalogUpdate{}
}

// nothing checks that no update is pending once the watcher has issued its
// next query.
func (h *catalogHarness) nothing(t *testing.T) {
	t.Helper()
	select {
	case u := <-h.out:
		t.Fatalf("unexpected update %+v", u)
	case q := <-h.fake.calls:
		h.fake.calls <- q // put it back for answer
	case <-time.After(5 * time.Second):
		t.Fatal("no query")
	}
}

func TestCatalogWatchIndexAndDedupe(t *testing.T) {
	h := startCatalog(t, CatalogOptions{Datacenter: "dc9", Stale: true}, false)
	q := h.answer(t, catalogAnswer{services: map[string][]string{"web": {"b", "a", "b"}, "db": nil}, index: 5})
	if q.WaitIndex != 0 || q.Datacenter != "dc9" || !q.AllowStale || q.UseCache || q.WaitTime != 60*time.Second {
		t.Fatalf("first query %+v", q)
	}
	u := h.next(t)
	want := map[string][]string{"web": {"a", "b"}, "db": {}}
	if u.Err != nil || u.Index != 5 || !reflect.DeepEqual(u.Services, want) {
		t.Fatalf("have %+v, want %v", u, want)
	}
	// Same index: nothing. New index, same content (tag order aside):
	// nothing either.
	if q := h.answer(t, catalogAnswer{services: map[string][]string{"web": {"a", "b"}, "db": {}}, index: 5}); q.WaitIndex != 5 {
		t.Fatalf("second query index %d, want 5", q.WaitIndex)
	}
	h.nothing(t)
	h.answer(t, catalogAnswer{services: map[string][]string{"web": {"b", "a"}, "db": {}}, index: 7})
	h.nothing(t)
	if q := h.answer(t, catalogAnswer{services: map[string][]string{"web": {"a"}}, index: 8}); q.WaitIndex != 7 {
		t.Fatalf("query index %d, want 7", q.WaitIndex)
	}
	if u := h.next(t); !reflect.DeepEqual(u.Services, map[string][]string{"web": {"a"}}) || u.Index != 8 {
		t.Fatalf("have %+v", u)
	}
	// Backwards: start over from 0.
	h.answer(t, catalogAnswer{services: map[string][]string{"web": {"c"}}, index: 3})
	h.next(t)
	if q := h.answer(t, catalogAnswer{services: map[string][]string{"web": {"c"}}, index: 3}); q.WaitIndex != 0 {
		t.Fatalf("after a backwards index the query index is %d, want 0", q.WaitIndex)
	}
}

func TestCatalogWatchErrorsInBand(t *testing.T) {
	h := startCatalog(t, CatalogOptions{}, false)
	h.answer(t, catalogAnswer{services: map[string][]string{"web": {"a"}}, index: 5})
	h.next(t)
	boom := errors.New("boom")
	h.answer(t, catalogAnswer{err: boom})
	if u := h.next(t); !errors.Is(u.Err, boom) || u.Services != nil {
		t.Fatalf("have %+v", u)
	}
	h.answer(t, catalogAnswer{err: boom}) // logged once while it lasts
	h.next(t)
	// After an error the list is published again even when unchanged.
	if q := h.answer(t, catalogAnswer{services: map[string][]string{"web": {"a"}}, index: 5}); q.WaitIndex != 0 {
		t.Fatalf("after an error the query index is %d, want 0", q.WaitIndex)
	}
	if u := h.next(t); u.Err != nil || u.Index != 5 {
		t.Fatalf("have %+v", u)
	}
	if n := strings.Count(h.logs.String(), "catalog watch failed"); n != 1 {
		t.Fatalf("error logged %d times, want 1:\n%s", n, h.logs)
	}
	if !strings.Contains(h.logs.String(), "catalog watch recovered") {
		t.Fatalf("no recovery logged:\n%s", h.logs)
	}
}

func TestCatalogWatchEmptyByACL(t *testing.T) {
	h := startCatalog(t, CatalogOptions{Stale: true}, true)
	h.answer(t, catalogAnswer{services: map[string][]string{"web": {"a"}}, index: 5})
	h.next(t)
	h.answer(t, catalogAnswer{services: map[string][]string{}, index: 6})
	if u := h.next(t); !errors.Is(u.Err, ErrACL) {
		t.Fatalf("have %+v, want an ACL error", u)
	}
}

// TestCatalogWatchFirstEmptyByACL: a first answer that ACLs emptied (the
// token may read no service) is an ACL error, not an empty catalog.
func TestCatalogWatchFirstEmptyByACL(t *testing.T) {
	h := startCatalog(t, CatalogOptions{}, false)
	h.answer(t, catalogAnswer{services: map[string][]string{}, index: 5, filtered: true})
	if u := h.next(t); !errors.Is(u.Err, ErrACL) {
		t.Fatalf("have %+v, want an ACL error", u)
	}
	// A first answer that is empty and not filtered is an empty catalog.
	h.answer(t, catalogAnswer{services: map[string][]string{}, index: 6})
	if u := h.next(t); u.Err != nil || len(u.Services) != 0 || u.Services == nil {
		t.Fatalf("have %+v, want an empty list", u)
	}
}

func TestCatalogWatchEmptyForReal(t *testing.T) {
	h := startCatalog(t, CatalogOptions{}, false)
	h.answer(t, catalogAnswer{services: map[string][]string{"web": {"a"}}, index: 5})
	h.next(t)
	h.answer(t, catalogAnswer{services: map[string][]string{}, index: 6})
	// The confirmation (no index, no cache) gets an empty list too.
	h.answer(t, catalogAnswer{services: map[string][]string{}, index: 6})
	if u := h.next(t); u.Err != nil || len(u.Services) != 0 || u.Services == nil {
		t.Fatalf("have %+v, want an empty list", u)
	}
}
