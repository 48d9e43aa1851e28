package main

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
)

// This file serves /debug/state on the metrics address: per family, the
// State the last successful sync applied and the plan the backend used
// for it, as JSON.

// debugState keeps each tracked family's last successful sync. A sync
// stores a new snapshot with one atomic pointer swap, and a request reads
// one, so requests never wait on a sync nor see half of one.
type debugState struct {
	families []*familyDebug
}

// familyDebug is one family's last successful sync (nil before the first).
type familyDebug struct {
	family proxier.IPFamily
	last   atomic.Pointer[debugSnapshot]
}

// debugSnapshot is one successful sync. The State and the plan are
// immutable once the sync is done, so the snapshot may be read while
// later syncs run.
type debugSnapshot struct {
	at         time.Time
	full       bool
	operations int
	state      *proxier.State
	plan       *proxier.Plan
}

// track makes d record b's successful syncs; use the returned backend in
// b's place.
func (d *debugState) track(b backend) backend {
	t := &tracked{backend: b, fd: &familyDebug{family: b.Family()}}
	d.families = append(d.families, t.fd)
	// After-sync steps run inside Sync, on its goroutine: plan is only
	// ever touched there.
	b.OnSynced(func(p *proxier.Plan) error {
		t.plan = p
		return nil
	})
	return t
}

// tracked is a backend whose successful syncs are recorded for
// /debug/state.
type tracked struct {
	backend
	fd   *familyDebug
	plan *proxier.Plan // the plan of the Sync under way
}

func (t *tracked) Sync(ctx context.Context, st *proxier.State) error {
	t.plan = nil
	err := t.backend.Sync(ctx, st)
	if err == nil && t.plan != nil {
		t.fd.last.Store(&debugSnapshot{at: time.Now(), full: t.LastSyncFull(), operations: t.LastSyncOperations(),
			state: st, plan: t.plan})
	}
	t.plan = nil
	return err
}

// debugStateJSON is the body of /debug/state.
type debugStateJSON struct {
	Families []familyJSON `json:"families"`
}

// familyJSON is one family: Synced is false (and the rest absent) until
// its first successful sync. Operations is 0 after a sync that had
// nothing to write.
type familyJSON struct {
	IPFamily   proxier.IPFamily `json:"ipFamily"`
	Synced     bool             `json:"synced"`
	SyncedAt   *time.Time       `json:"syncedAt,omitempty"`
	FullSync   *bool            `json:"fullSync,omitempty"`
	Operations *int             `json:"operations,omitempty"`
	State      *proxier.State   `json:"state,omitempty"`
	Plan       *planJSON        `json:"plan,omitempty"`
}

// planJSON is a plan whose service ports carry their names (a
// ServicePlan leaves its Service to the State).
type planJSON struct {
	*proxier.Plan
	Services []servicePlanJSON `json:"services"`
}

type servicePlanJSON struct {
	Name proxier.ServicePortName `json:"name"`
	*proxier.ServicePlan
}

// body is what /debug/state serves now.
func (d *debugState) body() debugStateJSON {
	out := debugStateJSON{Families: make([]familyJSON, 0, len(d.families))}
	for _, fd := range d.families {
		f := familyJSON{IPFamily: fd.family}
		if s := fd.last.Load(); s != nil {
			at, full, ops := s.at, s.full, s.operations
			f.Synced, f.SyncedAt, f.FullSync, f.Operations, f.State = true, &at, &full, &ops, s.state
			f.Plan = &planJSON{Plan: s.plan, Services: make([]servicePlanJSON, len(s.plan.Services))}
			for i := range s.plan.Services {
				sp := &s.plan.Services[i]
				f.Plan.Services[i] = servicePlanJSON{Name: sp.Svc.Name, ServicePlan: sp}
			}
		}
		out.Families = append(out.Families, f)
	}
	return out
}

// ServeHTTP serves the body as JSON to GET (and HEAD); other methods get
// 405.
func (d *debugState) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "only GET is served", http.StatusMethodNotAllowed)
		return
	}
	b, err := json.Marshal(d.body())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeBody(w, "application/json", append(b, '\n'))
}
