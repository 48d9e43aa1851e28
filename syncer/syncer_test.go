package syncer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/svcproxy/svcproxy/proxier"
)

// fakeProxier records every State it is given. fail, when set, decides the
// result of the nth call (1-based).
type fakeProxier struct {
	family proxier.IPFamily
	fail   func(n int) error

	mu     sync.Mutex
	states []*proxier.State
}

func (p *fakeProxier) Family() proxier.IPFamily { return p.family }

func (p *fakeProxier) Sync(_ context.Context, st *proxier.State) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.states = append(p.states, st)
	if p.fail != nil {
		return p.fail(len(p.states))
	}
	return nil
}

func (p *fakeProxier) calls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.states)
}

func (p *fakeProxier) last() *proxier.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.states) == 0 {
		return nil
	}
	return p.states[len(p.states)-1]
}

// waitState waits until the last State satisfies cond and returns it.
func (p *fakeProxier) waitState(t *testing.T, what string, cond func(*proxier.State) bool) *proxier.State {
	t.Helper()
	var st *proxier.State
	waitFor(t, fmt.Sprintf("%v state: %s", p.family, what), func() bool {
		st = p.last()
		return st != nil && cond(st)
	})
	return st
}

func find(st *proxier.State, ns, name, port string) *proxier.Service {
	for _, s := range st.Services {
		if s.Name.Namespace == ns && s.Name.Name == name && s.Name.Port == port {
			return s
		}
	}
	return nil
}

func testService(ns, name string, clusterIPs ...string) *v1.Service {
	fams := []v1.IPFamily{}
	for _, c := range clusterIPs {
		if a, _ := parseAddr(c); a.Is6() {
			fams = append(fams, v1.IPv6Protocol)
		} else {
			fams = append(fams, v1.IPv4Protocol)
		}
	}
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIPs[0],
			ClusterIPs: clusterIPs,
			IPFamilies: fams,
			Ports:      []v1.ServicePort{{Name: "p80", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
}

func testSlice(ns, name, svcName string, at discovery.AddressType, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	labels := map[string]string{}
	if svcName != "" {
		labels[discovery.LabelServiceName] = svcName
	}
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		AddressType: at,
		Ports:       []discovery.EndpointPort{port("p80", 8080, v1.ProtocolTCP)},
		Endpoints:   eps,
	}
}

func testObjects() []runtime.Object {
	other := testService("ns1", "other-proxy", "172.30.0.3")
	other.Labels = map[string]string{labelServiceProxyName: "someone-else"}
	foreignSlice := testSlice("ns1", "svc1-foreign", "svc1", discovery.AddressTypeIPv4, ep("10.0.9.9"))
	foreignSlice.Labels[labelServiceProxyName] = "someone-else"
	headlessSlice := testSlice("ns1", "svc1-headless", "svc1", discovery.AddressTypeIPv4, ep("10.0.8.8"))
	headlessSlice.Labels[v1.IsHeadlessService] = ""
	return []runtime.Object{
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "zone-1"}}},
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b", Labels: map[string]string{v1.LabelTopologyZone: "zone-9"}}},
		testService("ns1", "svc1", "172.30.0.1"),
		testService("ns1", "svc2", "172.30.0.2"),
		testService("ns2", "dual", "172.30.0.4", "fd00::4"),
		other,
		testSlice("ns1", "svc1-abc", "svc1", discovery.AddressTypeIPv4, ep("10.0.0.1", onNode("node-a"))),
		foreignSlice,
		headlessSlice,
		testSlice("ns1", "svc2-abc", "svc2", discovery.AddressTypeIPv4, ep("10.0.0.2", onNode("node-b"))),
		testSlice("ns2", "dual-v4", "dual", discovery.AddressTypeIPv4, ep("10.0.0.4")),
		testSlice("ns2", "dual-v6", "dual", discovery.AddressTypeIPv6, ep("fd00::44")),
		testSlice("ns2", "orphan", "", discovery.AddressTypeIPv4, ep("10.0.0.5")),
	}
}

// startRun starts s.Run; errc gets what it returns, and cancel ends its
// context.
func startRun(t *testing.T, s *Syncer) (errc <-chan error, cancel func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- s.Run(ctx) }()
	return ch, cancel
}

// runSyncer starts s.Run and returns a function that stops it and checks
// that Run returned nil.
func runSyncer(t *testing.T, s *Syncer) (stop func()) {
	t.Helper()
	errc, cancel := startRun(t, s)
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestRunEndToEnd(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	v4 := &fakeProxier{family: proxier.IPv4}
	v6 := &fakeProxier{family: proxier.IPv6}
	reg := prometheus.NewRegistry()
	s, err := New(client, Options{
		NodeName:      "node-a",
		MinSyncPeriod: 10 * time.Millisecond,
		SyncPeriod:    time.Hour,
		Registerer:    reg,
	}, v4, v6)
	if err != nil {
		t.Fatal(err)
	}
	stop := runSyncer(t, s)
	ctx := context.Background()

	// The first sync already sees every cached object.
	st := v4.waitState(t, "initial", func(*proxier.State) bool { return true })
	if got := v4.calls(); got != 1 {
		t.Errorf("%d IPv4 syncs before any change, want 1", got)
	}
	var names []string
	for _, s := range st.Services {
		names = append(names, s.Name.String())
	}
	if fmt.Sprint(names) != "[ns1/svc1:p80 ns1/svc2:p80 ns2/dual:p80]" {
		t.Errorf("initial IPv4 services = %v", names)
	}
	if st.NodeName != "node-a" || st.NodeZone != "zone-1" || st.Family != proxier.IPv4 {
		t.Errorf("initial state header = %v %q %q", st.Family, st.NodeName, st.NodeZone)
	}
	svc1 := find(st, "ns1", "svc1", "p80")
	if svc1 == nil || len(svc1.Endpoints) != 1 || svc1.Endpoints[0].IP != ip("10.0.0.1") || !svc1.Endpoints[0].IsLocal {
		t.Fatalf("svc1 = %+v, want one local endpoint 10.0.0.1 (slices of other proxies and headless ignored)", svc1)
	}
	if e := find(st, "ns1", "svc2", "p80").Endpoints; len(e) != 1 || e[0].IsLocal {
		t.Errorf("svc2 endpoints = %+v, want one remote", e)
	}
	st6 := v6.waitState(t, "initial", func(*proxier.State) bool { return true })
	if len(st6.Services) != 1 || st6.Services[0].ClusterIP != ip("fd00::4") ||
		len(st6.Services[0].Endpoints) != 1 || st6.Services[0].Endpoints[0].IP != ip("fd00::44") {
		t.Errorf("initial IPv6 state = %+v", st6.Services)
	}
	if got := metricValue(t, s.m.invalidObjects.WithLabelValues(kindEndpointSlice, reasonMissingServiceName)); got != 1 {
		t.Errorf("MissingServiceName reports = %v, want 1", got)
	}

	// An endpoint change with a trigger time: only svc1 is rebuilt and the
	// latency is observed.
	sl := testSlice("ns1", "svc1-abc", "svc1", discovery.AddressTypeIPv4, ep("10.0.0.1", onNode("node-a")), ep("10.0.0.11"))
	sl.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().Format(time.RFC3339Nano)}
	if _, err := client.DiscoveryV1().EndpointSlices("ns1").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	st2 := v4.waitState(t, "svc1 has two endpoints", func(st *proxier.State) bool {
		s := find(st, "ns1", "svc1", "p80")
		return s != nil && len(s.Endpoints) == 2
	})
	if find(st2, "ns1", "svc2", "p80") != find(st, "ns1", "svc2", "p80") {
		t.Errorf("unchanged svc2 got a new pointer")
	}
	if find(st2, "ns1", "svc1", "p80") == svc1 || len(svc1.Endpoints) != 1 {
		t.Errorf("changed svc1 reused or mutated its old value")
	}
	// Observed right after Sync returns, so maybe not yet.
	waitFor(t, "latency observation", func() bool {
		return metricValue(t, s.m.programmingLatency.WithLabelValues("IPv4").(prometheus.Histogram)) >= 1
	})
	if got := metricValue(t, s.m.programmingLatency.WithLabelValues("IPv4").(prometheus.Histogram)); got != 1 {
		t.Errorf("IPv4 network programming observations = %v, want 1", got)
	}

	// The node's zone changes.
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "zone-2"}}}
	if _, err := client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	v4.waitState(t, "zone-2", func(st *proxier.State) bool { return st.NodeZone == "zone-2" })

	// A Service goes away; a new one, changed to ExternalName, is skipped.
	if err := client.CoreV1().Services("ns1").Delete(ctx, "svc2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ext := testService("ns1", "ext", "172.30.0.9")
	ext.Spec.Type = v1.ServiceTypeExternalName
	if _, err := client.CoreV1().Services("ns1").Create(ctx, ext, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st3 := v4.waitState(t, "svc2 gone", func(st *proxier.State) bool { return find(st, "ns1", "svc2", "p80") == nil })
	if len(st3.Services) != 2 || find(st3, "ns1", "ext", "p80") != nil {
		t.Errorf("after delete: %d services", len(st3.Services))
	}

	code, body := get(t, s.HealthHandler(), "/healthz")
	if code != http.StatusOK || body["nodeEligible"] != true {
		t.Errorf("healthz = %d %v", code, body)
	}
	waitFor(t, "four IPv4 sync duration observations", func() bool {
		return metricValue(t, s.m.syncDuration.WithLabelValues("IPv4").(prometheus.Histogram)) >= 4
	})
	if got := metricValue(t, s.m.lastSync.WithLabelValues("IPv6")); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("IPv6 last sync timestamp = %v", got)
	}
	if got := metricValue(t, s.m.syncFailures.WithLabelValues("IPv4")); got != 0 {
		t.Errorf("sync failures = %v", got)
	}
	// Metrics are on the given registry.
	if mfs, err := reg.Gather(); err != nil || len(mfs) < 5 {
		t.Errorf("registry has %d families (err %v)", len(mfs), err)
	}

	stop()
	n := v4.calls()
	time.Sleep(50 * time.Millisecond)
	if v4.calls() != n {
		t.Errorf("syncs after Run returned")
	}
}

// fullFake is a fakeProxier that reports the syncs of full as full ones.
type fullFake struct {
	fakeProxier
	full map[int]bool
}

func (p *fullFake) LastSyncFull() bool { return p.full[p.calls()] }

// TestRunFullAndPartialDurations: a sync counts in the full or the partial
// duration as the proxier reports it (the first always full); a failed one
// in the total only.
func TestRunFullAndPartialDurations(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	p := &fullFake{fakeProxier: fakeProxier{family: proxier.IPv4, fail: func(n int) error {
		if n == 2 {
			return errors.New("iptables-restore failed")
		}
		return nil
	}}, full: map[int]bool{3: true}}
	s, err := New(client, Options{MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: time.Hour}, p)
	if err != nil {
		t.Fatal(err)
	}
	runSyncer(t, s)
	h := func(v *prometheus.HistogramVec) float64 {
		return metricValue(t, v.WithLabelValues("IPv4").(prometheus.Histogram))
	}
	waitFor(t, "the first sync", func() bool { return h(s.m.syncDuration) == 1 })
	s.resyncNow() // fails, and is retried: a full sync
	waitFor(t, "the retried sync", func() bool { return h(s.m.syncDuration) == 3 })
	s.resyncNow() // partial
	waitFor(t, "the fourth sync", func() bool { return h(s.m.syncDuration) == 4 })
	if full, partial := h(s.m.syncFullDuration), h(s.m.syncPartialDuration); full != 2 || partial != 1 {
		t.Errorf("full %v, partial %v sync observations; want 2 and 1 (and the failed one in neither)", full, partial)
	}
}

func TestRunRetriesFailedFamily(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	v4 := &fakeProxier{family: proxier.IPv4, fail: func(n int) error {
		if n <= 2 {
			return errors.New("iptables-restore failed")
		}
		return nil
	}}
	v6 := &fakeProxier{family: proxier.IPv6}
	s, err := New(client, Options{NodeName: "node-a", SyncPeriod: time.Hour}, v4, v6)
	if err != nil {
		t.Fatal(err)
	}
	s.runner.retryMin, s.runner.retryMax = 10*time.Millisecond, 20*time.Millisecond
	runSyncer(t, s)

	waitFor(t, "third IPv4 sync", func() bool { return v4.calls() >= 3 })
	time.Sleep(50 * time.Millisecond)
	if n := v4.calls(); n != 3 {
		t.Errorf("%d IPv4 syncs, want 3 (two failures, one success, then quiet)", n)
	}
	if got := metricValue(t, s.m.syncFailures.WithLabelValues("IPv4")); got != 2 {
		t.Errorf("IPv4 failures = %v, want 2", got)
	}
	if got := metricValue(t, s.m.syncFailures.WithLabelValues("IPv6")); got != 0 {
		t.Errorf("IPv6 failures = %v, want 0", got)
	}
	// Each retry carries the full, current state.
	v4.mu.Lock()
	for i, st := range v4.states {
		if len(st.Services) != 3 {
			t.Errorf("sync %d had %d services, want 3", i+1, len(st.Services))
		}
	}
	v4.mu.Unlock()
	if code, _ := get(t, s.HealthHandler(), "/livez"); code != http.StatusOK {
		t.Errorf("livez after recovery = %d", code)
	}
}

func TestRunUnhealthyWhileFailing(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	v4 := &fakeProxier{family: proxier.IPv4, fail: func(int) error { return errors.New("always") }}
	s, err := New(client, Options{NodeName: "node-a", SyncPeriod: 25 * time.Millisecond}, v4)
	if err != nil {
		t.Fatal(err)
	}
	s.runner.retryMin, s.runner.retryMax = 5*time.Millisecond, 5*time.Millisecond
	runSyncer(t, s)
	waitFor(t, "a few failed syncs", func() bool { return v4.calls() >= 3 })
	waitFor(t, "livez 503", func() bool {
		code, _ := get(t, s.HealthHandler(), "/livez")
		return code == http.StatusServiceUnavailable
	})
	if got := metricValue(t, s.m.programmingLatency.WithLabelValues("IPv4").(prometheus.Histogram)); got != 0 {
		t.Errorf("latency observed for failed syncs: %v", got)
	}
}

func TestNewValidates(t *testing.T) {
	client := fake.NewClientset()
	for name, tc := range map[string]struct {
		opts     Options
		proxiers []Proxier
	}{
		"no proxiers":     {Options{}, nil},
		"same family":     {Options{}, []Proxier{&fakeProxier{family: proxier.IPv4}, &fakeProxier{family: proxier.IPv4}}},
		"bad family":      {Options{}, []Proxier{&fakeProxier{family: 5}}},
		"negative period": {Options{MinSyncPeriod: -1}, []Proxier{&fakeProxier{family: proxier.IPv4}}},
		"node, no name":   {Options{Node: &NodeInfo{}}, []Proxier{&fakeProxier{family: proxier.IPv4}}},
	} {
		if _, err := New(client, tc.opts, tc.proxiers...); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	s, err := New(client, Options{}, &fakeProxier{family: proxier.IPv6})
	if err != nil {
		t.Fatal(err)
	}
	if s.opts.SyncPeriod != DefaultSyncPeriod || s.health.timeout != 2*DefaultSyncPeriod {
		t.Errorf("defaults: sync period %v, health timeout %v", s.opts.SyncPeriod, s.health.timeout)
	}
	if s.runner.retryMin != time.Second || s.runner.retryMax != DefaultSyncPeriod {
		t.Errorf("retry backoff %v..%v, want 1s..30s", s.runner.retryMin, s.runner.retryMax)
	}
}

func TestSnapshot(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	states, err := Snapshot(ctx, client, "node-b", proxier.IPv4, proxier.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := states[proxier.IPv4], states[proxier.IPv6]
	if v4 == nil || v6 == nil || len(states) != 2 {
		t.Fatalf("states = %v", states)
	}
	if len(v4.Services) != 3 || len(v6.Services) != 1 {
		t.Errorf("IPv4 %d services, IPv6 %d; want 3 and 1", len(v4.Services), len(v6.Services))
	}
	if v4.NodeZone != "zone-9" || v4.NodeName != "node-b" {
		t.Errorf("node %q zone %q", v4.NodeName, v4.NodeZone)
	}
	if e := find(v4, "ns1", "svc2", "p80").Endpoints; len(e) != 1 || !e[0].IsLocal {
		t.Errorf("svc2 endpoints on node-b = %+v, want local", e)
	}

	if _, err := Snapshot(ctx, client, "", proxier.IPFamily(0)); err == nil {
		t.Errorf("invalid family accepted")
	}
}

// TestPreferList: PreferList turns client-go's WatchListClient gate off,
// unless the environment sets it.
func TestPreferList(t *testing.T) {
	t.Setenv(watchListEnv, "true")
	if PreferList() {
		t.Error("PreferList overrode KUBE_FEATURE_WatchListClient=true")
	}
	if !clientfeatures.FeatureGates().Enabled(clientfeatures.WatchListClient) {
		t.Error("WatchListClient off although the environment turns it on")
	}
	os.Unsetenv(watchListEnv)
	if !PreferList() {
		t.Error("PreferList left WatchListClient on")
	}
	if clientfeatures.FeatureGates().Enabled(clientfeatures.WatchListClient) {
		t.Error("WatchListClient still on")
	}
}

// A guard's signal syncs at once, even inside MinSyncPeriod, and counts as
// a repair of its family.
func TestRunFollowsTriggers(t *testing.T) {
	client := fake.NewClientset(testObjects()...)
	v4 := &fakeProxier{family: proxier.IPv4}
	sig := proxier.NewSignal()
	s, err := New(client, Options{
		NodeName:      "node-a",
		MinSyncPeriod: time.Hour,
		SyncPeriod:    time.Hour,
		Triggers:      []Trigger{{Family: proxier.IPv4, C: sig}},
	}, v4)
	if err != nil {
		t.Fatal(err)
	}
	runSyncer(t, s)
	waitFor(t, "first sync", func() bool { return v4.calls() >= 1 })
	sig.Raise()
	waitFor(t, "sync after the guard's signal", func() bool { return v4.calls() >= 2 })
	if got := metricValue(t, s.m.rulesRepaired.WithLabelValues("IPv4")); got != 1 {
		t.Errorf("IPv4 repairs = %v, want 1", got)
	}
}

// TestRunEndsOnNodeChange: like kube-proxy's NodeManager, Run ends with a
// *NodeChangedError naming the cause when this node's IPs change, when its
// pod CIDRs change and they matter, or when the Node is deleted; a Node
// without addresses, a label change, or any change without Options.Node
// does not end it.
func TestRunEndsOnNodeChange(t *testing.T) {
	node := func() *v1.Node {
		return &v1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "zone-1"}},
			Spec:       v1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24", "fd00:244:1::/64"}},
			Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
				{Type: v1.NodeInternalIP, Address: "192.168.1.2"}, {Type: v1.NodeInternalIP, Address: "fd00::2"}}},
		}
	}
	start := NodeInfoOf(node())
	for _, tc := range []struct {
		name     string
		noWatch  bool // Options.Node unset
		podCIDRs bool // Options.WatchPodCIDRs
		change   func(*v1.Node)
		deleted  bool
		wantErr  string // "" means Run keeps running
	}{
		{name: "label change", change: func(n *v1.Node) { n.Labels["team"] = "x" }},
		{name: "IP change", change: func(n *v1.Node) { n.Status.Addresses[0].Address = "192.168.1.3" },
			wantErr: "node node-a: IPs changed from [192.168.1.2 fd00::2] to [192.168.1.3 fd00::2]"},
		{name: "IP change without Options.Node", noWatch: true,
			change: func(n *v1.Node) { n.Status.Addresses[0].Address = "192.168.1.3" }},
		{name: "IPv6 address gone", change: func(n *v1.Node) { n.Status.Addresses = n.Status.Addresses[:1] },
			wantErr: "IPs changed"},
		{name: "no addresses: logged only", change: func(n *v1.Node) { n.Status.Addresses = nil }},
		{name: "pod CIDR change, NodeCIDR", podCIDRs: true, change: func(n *v1.Node) { n.Spec.PodCIDRs[0] = "10.244.2.0/24" },
			wantErr: "node node-a: pod CIDRs changed from [10.244.1.0/24 fd00:244:1::/64] to [10.244.2.0/24 fd00:244:1::/64]"},
		{name: "pod CIDR change, other detection", change: func(n *v1.Node) { n.Spec.PodCIDRs[0] = "10.244.2.0/24" }},
		{name: "deleted", deleted: true, wantErr: "node node-a: deleted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(node())
			v4 := &fakeProxier{family: proxier.IPv4}
			opts := Options{NodeName: "node-a", MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: time.Hour, WatchPodCIDRs: tc.podCIDRs}
			if !tc.noWatch {
				opts.Node = &start
			}
			s, err := New(client, opts, v4)
			if err != nil {
				t.Fatal(err)
			}
			errc, cancel := startRun(t, s)
			defer cancel()
			v4.waitState(t, "first sync", func(*proxier.State) bool { return true })
			ctx := context.Background()
			if tc.deleted {
				err = client.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{})
			} else {
				// The zone moves too: once the State has it, the informer
				// has handled the change.
				n := node()
				tc.change(n)
				n.Labels[v1.LabelTopologyZone] = "zone-2"
				_, err = client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantErr == "" {
				v4.waitState(t, "zone-2", func(st *proxier.State) bool { return st.NodeZone == "zone-2" })
				select {
				case err := <-errc:
					t.Fatalf("Run ended: %v", err)
				default:
				}
				return
			}
			select {
			case err := <-errc:
				var nc *NodeChangedError
				if !errors.As(err, &nc) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Run = %v, want a *NodeChangedError containing %q", err, tc.wantErr)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not end")
			}
		})
	}
}

// TestNodeInfoOf: InternalIPs (one per family), else ExternalIPs; pod CIDRs
// from spec.podCIDRs, else spec.podCIDR.
func TestNodeInfoOf(t *testing.T) {
	addr := func(typ v1.NodeAddressType, a string) v1.NodeAddress { return v1.NodeAddress{Type: typ, Address: a} }
	for _, tc := range []struct {
		name      string
		addrs     []v1.NodeAddress
		spec      v1.NodeSpec
		wantIPs   string
		wantCIDRs string
	}{
		{"internal first of each family", []v1.NodeAddress{addr(v1.NodeExternalIP, "203.0.113.1"), addr(v1.NodeInternalIP, "192.168.1.2"),
			addr(v1.NodeInternalIP, "192.168.1.9"), addr(v1.NodeInternalIP, "fd00::0002")}, v1.NodeSpec{}, "[192.168.1.2 fd00::2]", "[]"},
		{"external when no internal", []v1.NodeAddress{addr(v1.NodeHostName, "n1"), addr(v1.NodeExternalIP, "203.0.113.001")},
			v1.NodeSpec{}, "[203.0.113.1]", "[]"},
		{"bad address skipped", []v1.NodeAddress{addr(v1.NodeInternalIP, "n1"), addr(v1.NodeInternalIP, "10.0.0.1")}, v1.NodeSpec{}, "[10.0.0.1]", "[]"},
		{"podCIDRs", nil, v1.NodeSpec{PodCIDR: "10.9.0.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:244::/64"}}, "[]", "[10.244.1.0/24 fd00:244::/64]"},
		{"podCIDR only", nil, v1.NodeSpec{PodCIDR: "10.244.001.0/24"}, "[]", "[10.244.1.0/24]"},
		{"bad pod CIDR skipped", nil, v1.NodeSpec{PodCIDRs: []string{"10.244.1.0", "10.244.2.0/24"}}, "[]", "[10.244.2.0/24]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := NodeInfoOf(&v1.Node{Spec: tc.spec, Status: v1.NodeStatus{Addresses: tc.addrs}})
			if got := fmt.Sprint(info.InternalIPs); got != tc.wantIPs {
				t.Errorf("InternalIPs = %s, want %s", got, tc.wantIPs)
			}
			if got := fmt.Sprint(info.PodCIDRs); got != tc.wantCIDRs {
				t.Errorf("PodCIDRs = %s, want %s", got, tc.wantCIDRs)
			}
		})
	}
}
