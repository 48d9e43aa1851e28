package syncer

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// changeTracker records which Services changed since the last sync and
// when their endpoints were asked to change. Any number of events for a
// Service between two syncs amount to one pending change.
type changeTracker struct {
	m     *metrics
	start time.Time

	mu        sync.Mutex
	services  map[types.NamespacedName]struct{} // Service objects changed
	endpoints map[types.NamespacedName]struct{} // their EndpointSlices changed
	triggers  map[proxier.IPFamily]map[types.NamespacedName][]time.Time
}

func newChangeTracker(m *metrics, start time.Time) *changeTracker {
	t := &changeTracker{m: m, start: start}
	t.reset()
	return t
}

func (t *changeTracker) reset() {
	t.services = map[types.NamespacedName]struct{}{}
	t.endpoints = map[types.NamespacedName]struct{}{}
	t.triggers = map[proxier.IPFamily]map[types.NamespacedName][]time.Time{}
}

// serviceChanged records a change of the Service object nn.
func (t *changeTracker) serviceChanged(nn types.NamespacedName) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.services[nn] = struct{}{}
	t.m.serviceChangesTotal.Inc()
	t.m.serviceChangesPending.Set(float64(len(t.services)))
}

// endpointsChanged records a change of an EndpointSlice of Service nn in
// family f, with the slice's last-change-trigger-time (zero when absent).
// Trigger times from before the tracker started are ignored: they describe
// changes that were programmed by an earlier process, if at all.
func (t *changeTracker) endpointsChanged(nn types.NamespacedName, f proxier.IPFamily, trigger time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.endpoints[nn] = struct{}{}
	if !trigger.IsZero() && trigger.After(t.start) {
		byNN := t.triggers[f]
		if byNN == nil {
			byNN = map[types.NamespacedName][]time.Time{}
			t.triggers[f] = byNN
		}
		times := byNN[nn]
		if len(times) == 0 || !times[len(times)-1].Equal(trigger) {
			byNN[nn] = append(times, trigger)
		}
	}
	t.m.endpointChangesTotal.Inc()
	t.m.endpointChangesPending.Set(float64(len(t.endpoints)))
}

// pendingChanges is what a sync takes from the tracker.
type pendingChanges struct {
	// services are the Services to rebuild.
	services map[types.NamespacedName]struct{}
	// triggers are the last-change-trigger-times, per family.
	triggers map[proxier.IPFamily][]time.Time
}

// take returns and clears everything pending.
func (t *changeTracker) take() pendingChanges {
	t.mu.Lock()
	defer t.mu.Unlock()
	pc := pendingChanges{
		services: make(map[types.NamespacedName]struct{}, len(t.services)+len(t.endpoints)),
		triggers: map[proxier.IPFamily][]time.Time{},
	}
	for nn := range t.services {
		pc.services[nn] = struct{}{}
	}
	for nn := range t.endpoints {
		pc.services[nn] = struct{}{}
	}
	for f, byNN := range t.triggers {
		for _, times := range byNN {
			pc.triggers[f] = append(pc.triggers[f], times...)
		}
	}
	t.reset()
	t.m.serviceChangesPending.Set(0)
	t.m.endpointChangesPending.Set(0)
	return pc
}
