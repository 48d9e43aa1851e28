package proxier_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestNoLocalEndpoints: kube-proxy's count of service ports whose Local
// policy drops traffic, per policy.
func TestNoLocalEndpoints(t *testing.T) {
	remote := pt.Endpoints(pt.Endpoint("10.0.1.1", 80))
	local := pt.Endpoints(pt.Endpoint("10.0.0.1", 80, pt.Local), pt.Endpoint("10.0.1.1", 80))
	for _, tc := range []struct {
		name               string
		opts               []pt.ServiceOption
		internal, external int
	}{
		{"cluster policies", []pt.ServiceOption{remote, pt.NodePort(30080)}, 0, 0},
		{"internal Local, endpoints elsewhere", []pt.ServiceOption{remote, pt.InternalLocal}, 1, 0},
		{"internal Local, a local endpoint", []pt.ServiceOption{local, pt.InternalLocal}, 0, 0},
		{"external Local, endpoints elsewhere", []pt.ServiceOption{remote, pt.NodePort(30080), pt.ExternalLocal}, 0, 1},
		{"external Local on a load-balancer IP", []pt.ServiceOption{remote, pt.LoadBalancer("192.0.2.9"), pt.ExternalLocal}, 0, 1},
		{"external Local, a local endpoint", []pt.ServiceOption{local, pt.NodePort(30080), pt.ExternalLocal}, 0, 0},
		{"both Local, endpoints elsewhere", []pt.ServiceOption{remote, pt.NodePort(30080), pt.InternalLocal, pt.ExternalLocal}, 1, 1},
		// No endpoint anywhere: rejected, not counted.
		{"both Local, no endpoints", []pt.ServiceOption{pt.NodePort(30080), pt.InternalLocal, pt.ExternalLocal}, 0, 0},
		{"both Local, endpoints not ready", []pt.ServiceOption{pt.Endpoints(pt.Endpoint("10.0.1.1", 80, pt.NotReady)), pt.NodePort(30080), pt.InternalLocal, pt.ExternalLocal}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := pt.Service("ns/svc", proxier.TCP, "10.96.0.1", 80, tc.opts...)
			// A second port without a Local policy counts for nothing.
			other := pt.Service("ns/other", proxier.TCP, "10.96.0.2", 80, remote)
			plan := proxier.MakePlan(pt.Config(), pt.State(proxier.IPv4, svc, other))
			if i, e := proxier.NoLocalEndpoints(plan); i != tc.internal || e != tc.external {
				t.Errorf("NoLocalEndpoints = %d internal, %d external; want %d, %d", i, e, tc.internal, tc.external)
			}
			m := proxier.NewMetrics(nil, proxier.IPTablesBackend)
			m.AfterSync(plan)
			for policy, want := range map[string]int{"internal": tc.internal, "external": tc.external} {
				var d dto.Metric
				if err := m.NoLocalEndpoints.WithLabelValues(policy, "IPv4").Write(&d); err != nil {
					t.Fatal(err)
				}
				if got := d.GetGauge().GetValue(); got != float64(want) {
					t.Errorf("gauge %s = %v, want %d", policy, got, want)
				}
			}
		})
	}
}

// TestNewMetricsPerBackend: each backend's metrics are registered in its
// mode only, the shared ones in both.
func TestNewMetricsPerBackend(t *testing.T) {
	for _, tc := range []struct {
		backend   proxier.Backend
		want, not []string
	}{
		{proxier.IPTablesBackend,
			[]string{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "kubeproxy_conntrack_reconciler_deleted_entries_total"},
			[]string{"kubeproxy_sync_proxy_rules_nftables_sync_failures_total"}},
		{proxier.NFTablesBackend,
			[]string{"kubeproxy_sync_proxy_rules_nftables_sync_failures_total", "kubeproxy_conntrack_reconciler_deleted_entries_total"},
			[]string{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total"}},
	} {
		reg := prometheus.NewRegistry()
		m := proxier.NewMetrics(reg, tc.backend)
		m.Init(proxier.IPv4)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, mf := range mfs {
			got[mf.GetName()] = mf.GetHelp()
		}
		for _, name := range tc.want {
			if _, ok := got[name]; !ok {
				t.Errorf("%s: %s not exported at zero", tc.backend, name)
			}
		}
		for _, name := range tc.not {
			if _, ok := got[name]; ok {
				t.Errorf("%s: %s exported", tc.backend, name)
			}
		}
		if h := got["kubeproxy_conntrack_reconciler_deleted_entries_total"]; h != "[ALPHA] Cumulative conntrack flows deleted by conntrack reconciler" {
			t.Errorf("%s: help %q", tc.backend, h)
		}
	}
}

// TestObserveSyncOperations: svcproxy_sync_operations is registered in
// both modes, observes each transaction's operations in its family's
// series, skips a sync that wrote nothing, and its buckets reach 1e6.
func TestObserveSyncOperations(t *testing.T) {
	for _, b := range []proxier.Backend{proxier.IPTablesBackend, proxier.NFTablesBackend} {
		reg := prometheus.NewRegistry()
		m := proxier.NewMetrics(reg, b)
		m.ObserveSyncOperations(proxier.IPv4, 0)
		m.ObserveSyncOperations(proxier.IPv4, 3)
		m.ObserveSyncOperations(proxier.IPv4, 900000)
		m.ObserveSyncOperations(proxier.IPv6, 1)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]*dto.Histogram{}
		for _, mf := range mfs {
			if mf.GetName() != "svcproxy_sync_operations" {
				continue
			}
			for _, mt := range mf.GetMetric() {
				got[mt.GetLabel()[0].GetValue()] = mt.GetHistogram()
			}
		}
		v4, v6 := got["IPv4"], got["IPv6"]
		if v4.GetSampleCount() != 2 || v4.GetSampleSum() != 900003 || v6.GetSampleCount() != 1 {
			t.Errorf("%s: IPv4 %d samples summing %v, IPv6 %d; want 2 summing 900003, and 1",
				b, v4.GetSampleCount(), v4.GetSampleSum(), v6.GetSampleCount())
		}
		buckets := v4.GetBucket()
		if len(buckets) == 0 || buckets[0].GetUpperBound() != 1 || buckets[len(buckets)-1].GetUpperBound() < 1e6 {
			t.Errorf("%s: buckets %v, want from 1 to at least 1e6", b, buckets)
		}
		// 900000 is in the last bucket only.
		if n := len(buckets); n < 2 || buckets[n-1].GetCumulativeCount() != 2 || buckets[n-2].GetCumulativeCount() != 1 {
			t.Errorf("%s: 900000 not counted in the last bucket alone: %v", b, buckets)
		}
	}
}
