package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestDebugStateGolden pins /debug/state's field names: an IPv4 family
// after a sync of Services of every kind, and an IPv6 one not synced yet.
func TestDebugStateGolden(t *testing.T) {
	cfg := pt.Config(pt.NodeIPs("192.168.0.10"), pt.ServiceRange("172.30.0.0/16"), pt.Mode(proxier.NFTablesMode))
	st := pt.State(proxier.IPv4,
		pt.Service("ns/web:http", proxier.TCP, "172.30.0.1", 80, pt.Endpoints(
			pt.Endpoint("10.0.1.1", 8080, pt.Local, pt.Zone("zone-a")),
			pt.Endpoint("10.0.2.1", 8080, pt.OnNode("node-b"), pt.Terminating))),
		pt.Service("ns/local", proxier.UDP, "172.30.0.2", 53, pt.NodePort(30053), pt.ExternalLocal, pt.HealthCheck(31000),
			pt.Endpoints(pt.Endpoint("10.0.2.2", 53, pt.OnNode("node-b")))),
		pt.Service("ns/lb", proxier.TCP, "172.30.0.3", 443, pt.LoadBalancer("203.0.113.7"), pt.SourceRanges("198.51.100.0/24"),
			pt.Affinity(10800), pt.Endpoints(pt.Endpoint("10.0.1.3", 8443, pt.Local))),
		pt.Service("ns/none", proxier.TCP, "172.30.0.4", 80),
	)
	d := &debugState{families: []*familyDebug{{family: proxier.IPv4}, {family: proxier.IPv6}}}
	d.families[0].last.Store(&debugSnapshot{at: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), full: true, operations: 42,
		state: st, plan: proxier.MakePlan(cfg, st)})

	rec := httptest.NewRecorder()
	d.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/state", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, Content-Type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var out bytes.Buffer
	if err := json.Indent(&out, rec.Body.Bytes(), "", "  "); err != nil {
		t.Fatal(err)
	}
	pt.Golden(t, filepath.Join("testdata", "debugstate.json"), out.String())
}

// TestDebugStateMethods: GET and HEAD are served, anything else is 405
// with an Allow header.
func TestDebugStateMethods(t *testing.T) {
	d := &debugState{}
	for _, tc := range []struct {
		method string
		code   int
	}{
		{http.MethodGet, 200},
		{http.MethodHead, 200},
		{http.MethodPost, 405},
		{http.MethodPut, 405},
		{http.MethodDelete, 405},
		{http.MethodPatch, 405},
	} {
		rec := httptest.NewRecorder()
		d.ServeHTTP(rec, httptest.NewRequest(tc.method, "/debug/state", nil))
		if rec.Code != tc.code {
			t.Errorf("%s: status %d, want %d", tc.method, rec.Code, tc.code)
		}
		if allow := rec.Header().Get("Allow"); tc.code == 405 && allow != "GET, HEAD" {
			t.Errorf("%s: Allow %q", tc.method, allow)
		}
	}
}

// debugBody is the part of /debug/state the tests read.
type debugBody struct {
	Families []struct {
		IPFamily   string `json:"ipFamily"`
		Synced     bool   `json:"synced"`
		FullSync   bool   `json:"fullSync"`
		Operations int    `json:"operations"`
		State      struct {
			Services []struct {
				Name      proxier.ServicePortName `json:"name"`
				Endpoints []proxier.Endpoint      `json:"endpoints"`
			} `json:"services"`
		} `json:"state"`
		Plan struct {
			Services []struct {
				Name             proxier.ServicePortName `json:"name"`
				Internal         string                  `json:"internal"`
				InternalPolicy   string                  `json:"internalPolicy"`
				ClusterEndpoints []proxier.Endpoint      `json:"clusterEndpoints"`
			} `json:"services"`
		} `json:"plan"`
	} `json:"families"`
}

func getDebugState(t *testing.T, h http.Handler) debugBody {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/state", nil))
	var b debugBody
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		t.Fatalf("/debug/state: %v: %s", err, rec.Body)
	}
	return b
}

// TestDebugStateFollowsSyncs: through cmd's wiring in each mode,
// /debug/state shows the State and plan of the last sync (the endpoint a
// change added, a partial sync), while requests run alongside the syncs
// (run with -race to check that they do not race).
func TestDebugStateFollowsSyncs(t *testing.T) {
	for _, mode := range []string{"iptables", "nftables"} {
		t.Run(mode, func(t *testing.T) {
			w := newWiring(t, mode, nil)
			ctx, cancel := context.WithCancel(context.Background())
			var readers sync.WaitGroup
			for range 2 {
				readers.Add(1)
				go func() {
					defer readers.Done()
					for ctx.Err() == nil {
						rec := httptest.NewRecorder()
						w.debug.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/state", nil))
						if rec.Code != 200 || !json.Valid(rec.Body.Bytes()) {
							t.Errorf("concurrent GET: %d %s", rec.Code, rec.Body)
							return
						}
					}
				}()
			}
			defer func() { cancel(); readers.Wait() }()

			w.waitSyncs(t, 1)
			check := func(what string, full bool, wantEndpoints []string) {
				t.Helper()
				b := getDebugState(t, w.debug)
				if len(b.Families) != 1 {
					t.Fatalf("%s: %d families, want 1", what, len(b.Families))
				}
				f := b.Families[0]
				if f.IPFamily != "IPv4" || !f.Synced || f.FullSync != full || f.Operations == 0 {
					t.Errorf("%s: ipFamily %q synced %v fullSync %v operations %d; want IPv4, true, %v, >0",
						what, f.IPFamily, f.Synced, f.FullSync, f.Operations, full)
				}
				inState, inPlan := webEndpoints(b)
				var wantPlan []string
				for _, ip := range wantEndpoints {
					wantPlan = append(wantPlan, ip+":8080")
				}
				if !slices.Equal(inState, wantEndpoints) || !slices.Equal(inPlan, wantPlan) {
					t.Errorf("%s: svc-web's endpoints in the State %v, in the plan %v; want %v at port 8080", what, inState, inPlan, wantEndpoints)
				}
				for _, s := range f.Plan.Services {
					switch s.Name.Name {
					case "svc-web":
						if s.Internal != "forward" || s.InternalPolicy != "Cluster" {
							t.Errorf("%s: svc-web internal %q policy %q, want forward, Cluster", what, s.Internal, s.InternalPolicy)
						}
					case "svc-local":
						if s.Internal != "drop" || s.InternalPolicy != "Local" {
							t.Errorf("%s: svc-local internal %q policy %q, want drop, Local", what, s.Internal, s.InternalPolicy)
						}
					}
				}
			}
			check("after the first sync", true, []string{"10.0.0.1", "10.0.0.2"})
			w.changeSlice(t)
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, inPlan := webEndpoints(getDebugState(t, w.debug)); slices.Contains(inPlan, "10.0.1.2:8080") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the added endpoint did not show in /debug/state within 10s")
				}
				time.Sleep(10 * time.Millisecond)
			}
			check("after an endpoint was added", false, []string{"10.0.0.1", "10.0.0.2", "10.0.1.2"})
		})
	}
}

// webEndpoints are the IPs of ns/svc-web:http's endpoints in b's first
// family: in the State, and the cluster endpoints ("ip:port") of its
// plan.
func webEndpoints(b debugBody) (inState, inPlan []string) {
	if len(b.Families) == 0 {
		return nil, nil
	}
	web := proxier.ServicePortName{Namespace: "ns", Name: "svc-web", Port: "http", Protocol: proxier.TCP}
	f := b.Families[0]
	for _, s := range f.State.Services {
		if s.Name == web {
			for _, e := range s.Endpoints {
				inState = append(inState, e.IP.String())
			}
		}
	}
	for _, s := range f.Plan.Services {
		if s.Name == web {
			for _, e := range s.ClusterEndpoints {
				inPlan = append(inPlan, e.String())
			}
		}
	}
	return inState, inPlan
}
