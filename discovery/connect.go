package discovery

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// ConnectHealthAPI is a MultiTagHealthAPI that can list a service's
// Consul Connect instances (/v1/health/connect/<name>); a Watcher with
// Options.Connect uses it.
type ConnectHealthAPI interface {
	MultiTagHealthAPI
	Connect(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
	ConnectMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

var _ ConnectHealthAPI = (*api.Health)(nil)

// connect asks Consul for the Connect instances of the service carrying
// every tag in tags.
func (w *Watcher) connect(tags []string, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ch, ok := w.h.(ConnectHealthAPI)
	if !ok {
		return nil, nil, errors.New("the Consul client cannot list Connect instances")
	}
	if len(tags) > 1 {
		return ch.ConnectMultipleTags(w.opts.Service, tags, false, q)
	}
	tag := ""
	if len(tags) == 1 {
		tag = tags[0]
	}
	return ch.Connect(w.opts.Service, tag, false, q)
}

// FollowOptions configure Follow. Zero values take the Watcher's defaults.
type FollowOptions struct {
	// What names the watch in log messages ("connect leaf").
	What string
	// Wait is the blocking query wait; default 60s.
	Wait time.Duration
	// WatchdogMargin: a query open for Wait + Wait/16 + WatchdogMargin is
	// cancelled and re-issued; default 5s.
	WatchdogMargin time.Duration
	// BackoffMin and BackoffMax bound the backoff after an error;
	// defaults 50ms and 10s.
	BackoffMin, BackoffMax time.Duration
	Logger                 hclog.Logger // default: discard
}

// Follow runs the blocking-query loop of one Consul endpoint until ctx is
// done, with the Watcher's policy: the index of the last answer is sent
// as WaitIndex, an unchanged index is a no-op, an index that went
// backwards starts over from 0, errors back off exponentially (capped
// while Consul has no leader), are logged once while they last and reset
// the index. query runs one query with q (its context bounded by the
// watchdog) and must honour q's context; got receives each answer whose
// index moved (and the first); failed, when not nil, each error. Both
// run on Follow's goroutine.
func Follow[T any](ctx context.Context, opts FollowOptions, query func(q *api.QueryOptions) (T, *api.QueryMeta, error),
	got func(v T, index uint64), failed func(error)) {
	w := NewWatcher(nil, Options{Wait: opts.Wait, WatchdogMargin: opts.WatchdogMargin, BackoffMin: opts.BackoffMin,
		BackoffMax: opts.BackoffMax, Logger: opts.Logger})
	o := w.opts
	var (
		index     uint64
		published bool
		fails     failures
	)
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeoutCause(ctx, watchdogLimit(o.Wait, o.WatchdogMargin), errWatchdog)
		q := &api.QueryOptions{WaitIndex: index, WaitTime: o.Wait}
		v, meta, err := query(q.WithContext(qctx))
		watchdog := err != nil && ctx.Err() == nil && context.Cause(qctx) == errWatchdog
		cancel()
		if ctx.Err() != nil {
			return
		}
		if watchdog {
			o.Logger.Warn(opts.What+" query overran, re-issuing", "index", index)
			continue
		}
		if err == nil && meta == nil {
			err = errors.New("consul answered without query metadata")
		}
		if err != nil {
			wait := fails.failed(err, o.BackoffMin, o.BackoffMax, o.Logger, opts.What)
			published, index = false, 0
			if failed != nil {
				failed(err)
			}
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		fails.ok(o.Logger, opts.What)
		var changed bool
		if index, changed = nextIndex(published, index, meta.LastIndex); !changed {
			continue
		}
		published = true
		got(v, meta.LastIndex)
	}
}
