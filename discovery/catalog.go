package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// CatalogAPI is the slice of *api.Catalog a CatalogWatcher uses; tests use
// a fake.
type CatalogAPI interface {
	Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error)
}

var _ CatalogAPI = (*api.Catalog)(nil)

// CatalogUpdate is one event of a CatalogWatcher: the full list of the
// datacenter's services with their tags, or an error.
type CatalogUpdate struct {
	// Services maps every service name to the union of its instances'
	// tags, sorted and without duplicates (never nil, possibly empty);
	// nil when Err != nil.
	Services map[string][]string
	Index    uint64 // Consul's index of this answer; 0 with Err
	Err      error  // the query failed; keep the last good list
}

// CatalogOptions configure a CatalogWatcher. Zero values take the defaults
// of the health Watcher (see Options): the two share the blocking-query,
// backoff and watchdog rules.
type CatalogOptions struct {
	Datacenter string // default: the agent's
	// Stale allows any server to answer. Unlike the health watcher, the
	// catalog watcher never uses the agent's cache: Consul 1.14's cache
	// of /v1/catalog/services answered blocking queries at once with an
	// outdated list that no registration refreshed (verified with 1.14.11).
	Stale          bool
	Wait           time.Duration
	WatchdogMargin time.Duration
	BackoffMin     time.Duration
	BackoffMax     time.Duration
	Logger         hclog.Logger
}

// CatalogWatcher watches /v1/catalog/services with blocking queries, for
// routes made from service tags. Consul moves that endpoint's index only
// when a service or its tags are registered, changed or deregistered,
// never on a check's change (verified against Consul 1.14), so a watch
// costs nothing while checks flap. An answer whose content equals the
// last one published (a new index for an unrelated write) is not
// published again. An answer with an unchanged index is followed by a
// pause of BackoffMin, so that a server that stops blocking cannot make
// the loop spin.
type CatalogWatcher struct {
	c    CatalogAPI
	opts CatalogOptions
}

// NewCatalogWatcher returns a watcher of the catalog's service list over c.
func NewCatalogWatcher(c CatalogAPI, opts CatalogOptions) *CatalogWatcher {
	// The health watcher owns the defaults.
	d := NewWatcher(nil, Options{Wait: opts.Wait, WatchdogMargin: opts.WatchdogMargin,
		BackoffMin: opts.BackoffMin, BackoffMax: opts.BackoffMax, Logger: opts.Logger}).opts
	opts.Wait, opts.WatchdogMargin, opts.BackoffMin, opts.BackoffMax, opts.Logger =
		d.Wait, d.WatchdogMargin, d.BackoffMin, d.BackoffMax, d.Logger
	return &CatalogWatcher{c: c, opts: opts}
}

// Run issues blocking queries until ctx is done and sends every update on
// out (a blocking send, abandoned when ctx is done). It returns when ctx
// is done; cancellation is not reported as an error. The first update is
// the first answer (or error).
func (w *CatalogWatcher) Run(ctx context.Context, out chan<- CatalogUpdate) {
	w.catalogLoop(ctx, out)
}

func (w *CatalogWatcher) catalogLoop(ctx context.Context, out chan<- CatalogUpdate) {
	var (
		index uint64
		last  map[string][]string // published and no error since; nil otherwise
		fails failures
	)
	send := func(u CatalogUpdate) bool {
		select {
		case out <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for ctx.Err() == nil {
		services, meta, err := w.query(ctx, index)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errWatchdog) {
			w.opts.Logger.Warn("catalog watch query overran, re-issuing", "index", index)
			continue
		}
		if err == nil && len(services) == 0 && (len(last) > 0 || meta.ResultsFilteredByACLs) {
			err = w.confirmEmpty(ctx, meta)
			if ctx.Err() != nil {
				return
			}
		}
		if err != nil {
			wait := fails.failed(err, w.opts.BackoffMin, w.opts.BackoffMax, w.opts.Logger, "catalog watch")
			last, index = nil, 0
			if !send(CatalogUpdate{Err: err}) || !sleep(ctx, wait) {
				return
			}
			continue
		}
		fails.ok(w.opts.Logger, "catalog watch")
		var changed bool
		if index, changed = nextIndex(last != nil, index, meta.LastIndex); !changed {
			if !sleep(ctx, w.opts.BackoffMin) {
				return
			}
			continue
		}
		set := normalize(services)
		if last != nil && maps.EqualFunc(last, set, slices.Equal) {
			continue // an unrelated write moved the index
		}
		last = set
		if !send(CatalogUpdate{Services: set, Index: meta.LastIndex}) {
			return
		}
	}
}

// query runs one query, blocking on index, bounded by the watchdog.
func (w *CatalogWatcher) query(ctx context.Context, index uint64) (map[string][]string, *api.QueryMeta, error) {
	qctx, cancel := context.WithTimeoutCause(ctx, watchdogLimit(w.opts.Wait, w.opts.WatchdogMargin), errWatchdog)
	defer cancel()
	q := &api.QueryOptions{
		Datacenter: w.opts.Datacenter,
		WaitIndex:  index,
		WaitTime:   w.opts.Wait,
		AllowStale: w.opts.Stale,
	}
	services, meta, err := w.c.Services(q.WithContext(qctx))
	if err != nil && ctx.Err() == nil && context.Cause(qctx) == errWatchdog {
		return nil, nil, errWatchdog
	}
	if err == nil && meta == nil {
		err = errors.New("consul answered without query metadata")
	}
	return services, meta, (*Watcher)(nil).aclError(err) // aclError does not use its receiver
}

// confirmEmpty returns an error wrapping ErrACL when an empty list was
// emptied by ACL filtering: the first answer for a token that may read no
// service, or a later one after the token lost its rights (so that the
// routes made from the last list keep serving); nil when the catalog is
// really empty. Like the health watcher's, it asks again (without an
// index) when the answer does not say it filtered.
func (w *CatalogWatcher) confirmEmpty(ctx context.Context, meta *api.QueryMeta) error {
	if !meta.ResultsFilteredByACLs {
		_, m, err := w.query(ctx, 0)
		if err != nil {
			return err
		}
		if !m.ResultsFilteredByACLs {
			return nil
		}
	}
	return fmt.Errorf("%w: catalog results filtered: the token lacks service:read", ErrACL)
}

// normalize copies a catalog answer with every tag list sorted and
// without duplicates; Consul's order is not part of the content.
func normalize(in map[string][]string) map[string][]string {
	out := make(map[string][]string, len(in))
	for name, tags := range in {
		t := slices.Clone(tags)
		slices.Sort(t)
		out[name] = slices.Compact(t)
		if out[name] == nil {
			out[name] = []string{}
		}
	}
	return out
}
