package main

import (
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"
)

// TestIntentionChanges: the destinations whose intentions changed, a
// wildcard one included, and nothing for an unchanged answer.
func TestIntentionChanges(t *testing.T) {
	ixn := func(id, dest, action string, modify uint64) *api.Intention {
		return &api.Intention{ID: id, SourceName: "sluice", DestinationName: dest, Action: api.IntentionAction(action), ModifyIndex: modify}
	}
	base := []*api.Intention{ixn("1", "web", "allow", 1), ixn("2", "api", "deny", 2), nil}
	for _, tc := range []struct {
		name string
		next []*api.Intention
		want []string
	}{
		{"unchanged", []*api.Intention{ixn("2", "api", "deny", 2), ixn("1", "web", "allow", 1)}, nil},
		{"action", []*api.Intention{ixn("1", "web", "deny", 3), ixn("2", "api", "deny", 2)}, []string{"web"}},
		{"removed", []*api.Intention{ixn("1", "web", "allow", 1)}, []string{"api"}},
		{"wildcard added", append(slices.Clone(base), ixn("3", "*", "deny", 4)), []string{"*"}},
		{"new destination", append(slices.Clone(base), ixn("4", "db", "allow", 5)), []string{"db"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			have := changedDestinations(intentionDigests(base), intentionDigests(tc.next))
			if !slices.Equal(have, tc.want) {
				t.Errorf("want %v, have %v", tc.want, have)
			}
		})
	}
}
