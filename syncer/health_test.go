package syncer

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

func nn(ns, name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time       { return c.t }
func (c *fakeClock) step(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock            { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func get(t *testing.T, h http.Handler, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if ct := rec.Header().Get("Content-Type"); rec.Code != http.StatusNotFound && ct != "application/json" {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	var body map[string]any
	if rec.Code != http.StatusNotFound {
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: bad JSON %q: %v", path, rec.Body.String(), err)
		}
	}
	return rec.Code, body
}

func TestHealthTimeout(t *testing.T) {
	clk := newFakeClock()
	m := newMetrics()
	h := newHealth(time.Minute, m, nil, []proxier.IPFamily{proxier.IPv4, proxier.IPv6})
	h.now = clk.now

	if code, body := get(t, h, "/livez"); code != 200 || body["healthy"] != true {
		t.Errorf("idle: livez %d %v, want 200 healthy", code, body)
	}

	h.queued(proxier.IPv4)
	clk.step(59 * time.Second)
	if code, _ := get(t, h, "/livez"); code != 200 {
		t.Errorf("pending for 59s of 60: livez %d, want 200", code)
	}
	clk.step(time.Second)
	code, body := get(t, h, "/livez")
	if code != 503 || body["healthy"] != false {
		t.Errorf("pending for 60s: livez %d %v, want 503 unhealthy", code, body)
	}
	status := body["status"].(map[string]any)
	if status["IPv4"].(map[string]any)["healthy"] != false || status["IPv6"].(map[string]any)["healthy"] != true {
		t.Errorf("per-family status = %v", status)
	}

	// More events do not reset the age of the oldest pending update.
	h.queued(proxier.IPv4)
	if code, _ := get(t, h, "/livez"); code != 503 {
		t.Errorf("re-queue made it healthy")
	}

	// A sync that captured its changes after the queue clears it.
	h.updated(proxier.IPv4, clk.now())
	if code, body := get(t, h, "/livez"); code != 200 || body["lastUpdated"] != body["currentTime"] {
		t.Errorf("after sync: livez %d %v, want 200 and lastUpdated=currentTime", code, body)
	}

	// An update queued after the sync captured its changes stays pending.
	taken := clk.now()
	clk.step(time.Second)
	h.queued(proxier.IPv4)
	h.updated(proxier.IPv4, taken)
	clk.step(time.Minute)
	if code, _ := get(t, h, "/livez"); code != 503 {
		t.Errorf("update queued during a sync was forgotten")
	}

	if got := metricValue(t, m.livez.WithLabelValues("503")); got != 3 {
		t.Errorf("livez 503 count = %v, want 3", got)
	}
	if got := metricValue(t, m.livez.WithLabelValues("200")); got != 3 {
		t.Errorf("livez 200 count = %v, want 3", got)
	}

	// Several updates queued during one sync: the wait counts from the
	// first of them, not the last.
	h.updated(proxier.IPv4, clk.now())
	taken = clk.now()
	clk.step(time.Second)
	h.queued(proxier.IPv4)
	clk.step(40 * time.Second)
	h.queued(proxier.IPv4)
	h.updated(proxier.IPv4, taken)
	clk.step(25 * time.Second)
	if code, _ := get(t, h, "/livez"); code != 503 {
		t.Errorf("waiting 66s since the first update queued during a sync: livez %d, want 503", code)
	}
}

func TestHealthzNodeEligible(t *testing.T) {
	var node *v1.Node
	m := newMetrics()
	h := newHealth(time.Minute, m, func() *v1.Node { return node }, []proxier.IPFamily{proxier.IPv4})

	code, body := get(t, h, "/healthz")
	if code != 503 || body["nodeEligible"] != false {
		t.Errorf("no node: healthz %d %v, want 503, nodeEligible false", code, body)
	}
	if code, body := get(t, h, "/livez"); code != 200 || body["nodeEligible"] != nil {
		t.Errorf("livez ignores the node and omits nodeEligible: %d %v", code, body)
	}

	node = &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}
	if code, body := get(t, h, "/healthz"); code != 200 || body["nodeEligible"] != true || body["healthy"] != true {
		t.Errorf("node present: healthz %d %v", code, body)
	}

	node.Spec.Taints = []v1.Taint{{Key: toBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	if code, _ := get(t, h, "/healthz"); code != 503 {
		t.Errorf("tainted node: healthz %d, want 503", code)
	}
	node.Spec.Taints = nil
	node.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if code, _ := get(t, h, "/healthz"); code != 503 {
		t.Errorf("deleting node: healthz %d, want 503", code)
	}
	if code, _ := get(t, h, "/other"); code != 404 {
		t.Errorf("/other: %d, want 404", code)
	}
	if got := metricValue(t, m.healthz.WithLabelValues("503")); got != 3 {
		t.Errorf("healthz 503 count = %v, want 3", got)
	}
	if got := metricValue(t, m.healthz.WithLabelValues("200")); got != 1 {
		t.Errorf("healthz 200 count = %v, want 1", got)
	}
}

func TestTrackerCoalescesAndFiltersTriggerTimes(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	m := newMetrics()
	tr := newChangeTracker(m, start)
	a := nn("ns", "a")
	b := nn("ns", "b")
	for range 10 {
		tr.serviceChanged(a)
	}
	tr.endpointsChanged(a, proxier.IPv4, start.Add(-time.Second)) // before start: ignored
	tr.endpointsChanged(b, proxier.IPv4, start.Add(time.Second))
	tr.endpointsChanged(b, proxier.IPv4, start.Add(time.Second)) // same time twice: once
	tr.endpointsChanged(b, proxier.IPv6, start.Add(2*time.Second))
	tr.endpointsChanged(b, proxier.IPv6, time.Time{})

	if got := metricValue(t, m.serviceChangesPending); got != 1 {
		t.Errorf("service changes pending = %v, want 1", got)
	}
	if got := metricValue(t, m.endpointChangesPending); got != 2 {
		t.Errorf("endpoint changes pending = %v, want 2", got)
	}
	if got := metricValue(t, m.serviceChangesTotal); got != 10 {
		t.Errorf("service changes total = %v, want 10", got)
	}

	pc := tr.take()
	if len(pc.services) != 2 {
		t.Errorf("pending services = %v, want a and b", pc.services)
	}
	if got := pc.triggers[proxier.IPv4]; len(got) != 1 || !got[0].Equal(start.Add(time.Second)) {
		t.Errorf("IPv4 triggers = %v", got)
	}
	if got := pc.triggers[proxier.IPv6]; len(got) != 1 || !got[0].Equal(start.Add(2*time.Second)) {
		t.Errorf("IPv6 triggers = %v", got)
	}
	if metricValue(t, m.serviceChangesPending) != 0 || metricValue(t, m.endpointChangesPending) != 0 {
		t.Errorf("pending gauges not reset")
	}
	if pc2 := tr.take(); len(pc2.services) != 0 || len(pc2.triggers) != 0 {
		t.Errorf("second take not empty: %+v", pc2)
	}
}
