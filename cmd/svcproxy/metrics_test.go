package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/proxier/metricstest"
	"github.com/svcproxy/svcproxy/proxier/nftables"
	"github.com/svcproxy/svcproxy/syncer"
)

// kube-proxy v1.36's metrics (pkg/proxy/metrics, RegisterMetrics) in both
// modes and in each, and client-go's request metrics it serves.
var (
	kubeProxyMetricsBoth = []string{
		"kubeproxy_sync_proxy_rules_duration_seconds",
		"kubeproxy_sync_full_proxy_rules_duration_seconds",
		"kubeproxy_sync_partial_proxy_rules_duration_seconds",
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total",
		"kubeproxy_sync_proxy_rules_service_changes_pending",
		"kubeproxy_sync_proxy_rules_service_changes_total",
		"kubeproxy_proxy_healthz_total",
		"kubeproxy_proxy_livez_total",
		"kubeproxy_network_programming_duration_seconds",
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total",
		"kubeproxy_conntrack_reconciler_sync_duration_seconds",
		"kubeproxy_conntrack_reconciler_deleted_entries_total",
		// client-go's, once a request was made. (component-base does not
		// register rest_client_dns_resolution_duration_seconds: kube-proxy
		// has none.)
		"rest_client_requests_total",
		"rest_client_request_duration_seconds",
		"rest_client_request_size_bytes",
		"rest_client_response_size_bytes",
		"rest_client_rate_limiter_duration_seconds",
		"rest_client_transport_create_calls_total",
		"rest_client_transport_cache_entries",
	}
	kubeProxyMetricsIPTables = []string{
		"kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
		"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
		"kubeproxy_sync_proxy_rules_iptables_total",
		"kubeproxy_sync_proxy_rules_iptables_last",
		"kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
		"kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
	}
	kubeProxyMetricsNFTables = []string{
		"kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
		"kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
	}
	// kubeProxyMetricsAbsent are kube-proxy's that svcproxy does not
	// export, and why (none now).
	kubeProxyMetricsAbsent = map[string]string{}
)

// TestMetricNamesPerMode: after syncs through cmd's wiring (syncer,
// backend on a fake kernel, after-sync steps, registry) and one API
// request, every kube-proxy metric of the mode has a sample; none of the
// other mode's, nor of the absent ones, is there.
func TestMetricNamesPerMode(t *testing.T) {
	for _, tc := range []struct {
		mode        string
		want, other []string
	}{
		{"iptables", kubeProxyMetricsIPTables, kubeProxyMetricsNFTables},
		{"nftables", kubeProxyMetricsNFTables, kubeProxyMetricsIPTables},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			w := newWiring(t, tc.mode, nil)
			w.waitSyncs(t, 1)
			w.changeSlice(t) // a partial sync
			w.waitSyncs(t, 2)
			restRequest(t)
			got := metricstest.Gather(t, w.gatherer)
			for _, name := range append(append([]string(nil), kubeProxyMetricsBoth...), tc.want...) {
				if got[name] == nil {
					t.Errorf("%s mode: no %s", tc.mode, name)
				}
			}
			for _, name := range tc.other {
				if got[name] != nil {
					t.Errorf("%s mode exports %s", tc.mode, name)
				}
			}
			for name, why := range kubeProxyMetricsAbsent {
				if got[name] != nil {
					t.Errorf("%s is exported now: remove it from the absent ones (%s)", name, why)
				}
			}
			// The svc-local Service (internalTrafficPolicy Local, its
			// endpoint elsewhere) is the one without local endpoints.
			if v := metricstest.Value(got, "kubeproxy_sync_proxy_rules_no_local_endpoints_total", "traffic_policy", "internal"); v != 1 {
				t.Errorf("no-local-endpoints internal = %v, want 1", v)
			}
			// One observation per transaction: the full sync and the
			// partial one wrote something; a sync with nothing to write
			// (another trigger) is not observed.
			syncs := metricstest.Value(got, "kubeproxy_sync_full_proxy_rules_duration_seconds") + metricstest.Value(got, "kubeproxy_sync_partial_proxy_rules_duration_seconds")
			if ops := metricstest.Value(got, "svcproxy_sync_operations", "ip_family", "IPv4"); ops < 2 || ops > syncs {
				t.Errorf("svcproxy_sync_operations has %v observations after %v syncs, want 2 or more and at most one a sync", ops, syncs)
			}
		})
	}
}

// TestIPTablesMetricValues: the rules per table owned and written, and a
// failed partial restore counted in both failure counters.
func TestIPTablesMetricValues(t *testing.T) {
	w := newWiring(t, "iptables", func(n int) bool { return n == 2 })
	got := w.waitSyncs(t, 1)
	total := metricstest.Value(got, "kubeproxy_sync_proxy_rules_iptables_total", "table", "nat")
	if last := metricstest.Value(got, "kubeproxy_sync_proxy_rules_iptables_last", "table", "nat"); total == 0 || last != total {
		t.Errorf("after the full sync: nat rules %v, written %v; want equal and not 0", total, last)
	}
	// A change: the partial restore fails, the full retry succeeds.
	w.changeSlice(t)
	got = w.waitSyncs(t, 2)
	for _, name := range []string{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
		"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total"} {
		if v := metricstest.Value(got, name); v != 1 {
			t.Errorf("%s = %v, want 1", name, v)
		}
	}
	// Another change: a partial sync writes a few nat rules of many.
	w.changeSlice(t)
	got = w.waitSyncs(t, 3)
	total = metricstest.Value(got, "kubeproxy_sync_proxy_rules_iptables_total", "table", "nat")
	if last := metricstest.Value(got, "kubeproxy_sync_proxy_rules_iptables_last", "table", "nat"); last == 0 || last >= total {
		t.Errorf("after a partial sync: nat rules %v, written %v; want 0 < written < rules", total, last)
	}
	if v := metricstest.Value(got, "kubeproxy_sync_proxy_rules_iptables_last", "table", "filter"); v != 0 {
		t.Errorf("filter rules written by a partial sync of one endpoint: %v, want 0", v)
	}
}

// TestNFAcctMetrics: the nfacct counters a Proxier's rules feed are read
// at each scrape; one that cannot be read, or that the rules do not feed
// (a kernel without nfacct), has no sample.
func TestNFAcctMetrics(t *testing.T) {
	const invalid, localhost = "kubeproxy_iptables_ct_state_invalid_dropped_packets_total", "kubeproxy_iptables_localhost_nodeports_accepted_packets_total"
	for _, tc := range []struct {
		name   string
		objs   []string
		counts []fakeAcct // per scrape
		want   []map[string]float64
	}{
		{"both", iptables.NFAccts, []fakeAcct{{iptables.NFAcctInvalidDropped: 2, iptables.NFAcctLocalhostNodePorts: 0}, {iptables.NFAcctInvalidDropped: 9, iptables.NFAcctLocalhostNodePorts: 4}},
			[]map[string]float64{{invalid: 2, localhost: 0}, {invalid: 9, localhost: 4}}},
		{"one unreadable", iptables.NFAccts, []fakeAcct{{iptables.NFAcctLocalhostNodePorts: 1}}, []map[string]float64{{localhost: 1}}},
		{"INVALID only", []string{iptables.NFAcctInvalidDropped}, []fakeAcct{{iptables.NFAcctInvalidDropped: 1, iptables.NFAcctLocalhostNodePorts: 1}}, []map[string]float64{{invalid: 1}}},
		{"no nfacct", nil, []fakeAcct{{iptables.NFAcctInvalidDropped: 1, iptables.NFAcctLocalhostNodePorts: 1}}, []map[string]float64{{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg, gatherer := newRegistry()
			m := proxier.NewMetrics(reg, proxier.IPTablesBackend)
			var now fakeAcct
			read := func(ctx context.Context, object string) (uint64, error) { return now.read(ctx, object) }
			p := iptables.New(proxier.Config{Family: proxier.IPv4}, iptables.Options{NFAcct: tc.objs}, &fakeRunner{})
			useNFAcct(p, m, func() (acctReader, error) { return read, nil })
			for i, counts := range tc.counts {
				now = counts
				got := metricstest.Gather(t, gatherer)
				for _, name := range []string{invalid, localhost} {
					want, ok := tc.want[i][name]
					if (got[name] != nil) != ok || metricstest.Value(got, name) != want {
						t.Errorf("scrape %d: %s: present %v, %v; want present %v, %v", i, name, got[name] != nil, metricstest.Value(got, name), ok, want)
					}
					if mf := got[name]; mf != nil && mf.GetType() != dto.MetricType_COUNTER {
						t.Errorf("%s is a %v, want a counter", name, mf.GetType())
					}
				}
			}
		})
	}
}

// fakeAcct is the kernel's nfacct objects: their packet counts.
type fakeAcct map[string]uint64

func (f fakeAcct) read(_ context.Context, object string) (uint64, error) {
	n, ok := f[object]
	if !ok {
		return 0, fmt.Errorf("nfacct object %s: no such object", object)
	}
	return n, nil
}

// wiring is cmd's wiring of one IPv4 backend on a fake kernel, synced from
// a fake API.
type wiring struct {
	client   *fake.Clientset
	gatherer prometheus.Gatherer
	health   http.Handler
	slice    *discovery.EndpointSlice
	debug    *debugState
}

// newWiring starts it; in iptables mode, restores whose number fail gives
// fail (nil: none).
func newWiring(t *testing.T, mode string, fail func(n int) bool) *wiring {
	t.Helper()
	reg, gatherer := newRegistry()
	metrics := proxier.NewMetrics(reg, proxier.Backend(mode))
	fc := familyConfig{Config: proxier.Config{Family: proxier.IPv4, MasqueradeBit: 14}}
	var b backend
	if mode == "nftables" {
		fc.Mode = proxier.NFTablesMode
		b = measureNFTables(nftables.New(fc.Config, knftables.NewFake(knftables.IPv4Family, nftables.TableName)), metrics)
	} else {
		p := iptables.New(fc.Config, iptables.Options{NFAcct: iptables.NFAccts}, &fakeRunner{fail: fail})
		useNFAcct(p, metrics, func() (acctReader, error) {
			return fakeAcct{iptables.NFAcctInvalidDropped: 3, iptables.NFAcctLocalhostNodePorts: 5}.read, nil
		})
		b = measureIPTables(p, metrics)
	}
	debug := &debugState{}
	b = debug.track(b)
	rec := &eventRecorder{EventRecorder: &capture{}, node: "node-a"}
	hc := afterSync(b, fc, metrics, rec, &fakeCleaner{})
	t.Cleanup(hc.Close)

	w := &wiring{gatherer: gatherer, debug: debug}
	local := service("svc-local", "172.30.0.2")
	local.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	w.slice = slice("svc-web", "10.0.0.1", "10.0.0.2")
	w.client = fake.NewClientset(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}},
		service("svc-web", "172.30.0.1"), w.slice, local, slice("svc-local", "10.0.0.3"))
	s, err := syncer.New(w.client, syncer.Options{NodeName: "node-a", MinSyncPeriod: 10 * time.Millisecond,
		SyncPeriod: time.Hour, Registerer: reg, Recorder: rec}, b)
	if err != nil {
		t.Fatal(err)
	}
	w.health = s.HealthHandler()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// waitSyncs waits until n syncs succeeded, asks /healthz and /livez once,
// and returns the metrics then.
func (w *wiring) waitSyncs(t *testing.T, n int) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := metricstest.Gather(t, w.gatherer)
		done := metricstest.Value(got, "kubeproxy_sync_full_proxy_rules_duration_seconds") + metricstest.Value(got, "kubeproxy_sync_partial_proxy_rules_duration_seconds")
		if int(done) >= n {
			for _, path := range []string{"/healthz", "/livez"} {
				w.health.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil))
			}
			return metricstest.Gather(t, w.gatherer)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v of %d syncs after 10s", done, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// changeSlice adds an endpoint to svc-web, with a trigger time.
func (w *wiring) changeSlice(t *testing.T) {
	t.Helper()
	w.slice = w.slice.DeepCopy()
	w.slice.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().Format(time.RFC3339Nano)}
	w.slice.Endpoints = append(w.slice.Endpoints, discovery.Endpoint{Addresses: []string{fmt.Sprintf("10.0.1.%d", len(w.slice.Endpoints))}})
	if _, err := w.client.DiscoveryV1().EndpointSlices("ns").Update(context.Background(), w.slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func service(name, ip string) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Spec: v1.ServiceSpec{
		Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip}, IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
		Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
	}}
}

func slice(svc string, ips ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svc + "-1", Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To("node-b"),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	return s
}

// restRequest makes one request through client-go.
func restRequest(t *testing.T) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"major":"1","minor":"36","gitVersion":"v1.36.3"}`)
	}))
	defer srv.Close()
	o, err := parseFlags([]string{"--master", srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	client, err := newClient(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Discovery().ServerVersion(); err != nil {
		t.Fatal(err)
	}
}

// fakeRunner is a kernel without rules; restores whose number fail
// gives fail.
type fakeRunner struct {
	mu       sync.Mutex
	restores int
	fail     func(n int) bool
}

func (r *fakeRunner) Save(context.Context, string) ([]byte, error)     { return nil, nil }
func (r *fakeRunner) Chains(context.Context, string) ([]string, error) { return nil, nil }
func (r *fakeRunner) Rules(context.Context, string, string) ([]string, bool, error) {
	return nil, false, nil
}

func (r *fakeRunner) Restore(context.Context, []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restores++
	if r.fail != nil && r.fail(r.restores) {
		return errors.New("iptables-restore: exit status 1")
	}
	return nil
}

// TestTimedClean: a cleanup run is timed; a sync that leaves the cleaner
// nothing to do is no run.
func TestTimedClean(t *testing.T) {
	boom := errors.New("conntrack dump: boom")
	for _, tc := range []struct {
		name      string
		c         *fakeCleaner
		runs, obs int
		err       error
	}{
		{"work", &fakeCleaner{}, 1, 1, nil},
		{"nothing to do", &fakeCleaner{idle: true}, 0, 0, nil},
		{"failed", &fakeCleaner{err: boom}, 1, 1, boom},
	} {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h"})
		err := timedClean(tc.c, h)(&proxier.Plan{})
		var d dto.Metric
		if werr := h.Write(&d); werr != nil {
			t.Fatal(werr)
		}
		if tc.c.runs != tc.runs || int(d.GetHistogram().GetSampleCount()) != tc.obs || err != tc.err {
			t.Errorf("%s: %d runs, %d observations, error %v; want %d, %d, %v", tc.name, tc.c.runs, d.GetHistogram().GetSampleCount(), err, tc.runs, tc.obs, tc.err)
		}
	}
}

// fakeCleaner is a conntrack cleaner with work after every sync, unless
// idle; its runs fail with err.
type fakeCleaner struct {
	idle bool
	err  error
	runs int
}

func (c *fakeCleaner) Needed(*proxier.Plan) bool { return !c.idle }
func (c *fakeCleaner) Clean(*proxier.Plan) error { c.runs++; return c.err }

// capture records Events.
type capture struct {
	mu     sync.Mutex
	events []event
}

type event struct {
	regarding                 *v1.ObjectReference
	typ, reason, action, note string
}

func (c *capture) Eventf(regarding, _ runtime.Object, typ, reason, action, note string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, event{regarding.(*v1.ObjectReference), typ, reason, action, fmt.Sprintf(note, args...)})
}
