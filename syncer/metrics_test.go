package syncer

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/svcproxy/svcproxy/proxier/metricstest"
)

// metricValue is the value of a collector holding exactly one metric: a
// counter's or gauge's value, or a histogram's sample count.
func metricValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 10)
	c.Collect(ch)
	close(ch)
	var out []float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		switch {
		case d.Counter != nil:
			out = append(out, d.Counter.GetValue())
		case d.Gauge != nil:
			out = append(out, d.Gauge.GetValue())
		case d.Histogram != nil:
			out = append(out, float64(d.Histogram.GetSampleCount()))
		}
	}
	if len(out) != 1 {
		t.Fatalf("collector has %d metrics, want 1", len(out))
	}
	return out[0]
}

func TestMetricNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics()
	if err := m.register(reg); err != nil {
		t.Fatal(err)
	}
	// Touch every vector so that it shows up in Gather.
	m.syncDuration.WithLabelValues("IPv4").Observe(0.003)
	m.syncFullDuration.WithLabelValues("IPv4").Observe(0.003)
	m.syncPartialDuration.WithLabelValues("IPv4").Observe(0.003)
	m.lastSync.WithLabelValues("IPv4")
	m.lastQueued.WithLabelValues("IPv4")
	m.programmingLatency.WithLabelValues("IPv4").Observe(1.5)
	m.healthz.WithLabelValues("200")
	m.livez.WithLabelValues("200")
	m.invalidObjects.WithLabelValues("Service", "InvalidClusterIP")
	m.syncFailures.WithLabelValues("IPv4")
	got := metricstest.Gather(t, reg)
	for name, typ := range map[string]dto.MetricType{
		"kubeproxy_sync_proxy_rules_duration_seconds":              dto.MetricType_HISTOGRAM,
		"kubeproxy_sync_full_proxy_rules_duration_seconds":         dto.MetricType_HISTOGRAM,
		"kubeproxy_sync_partial_proxy_rules_duration_seconds":      dto.MetricType_HISTOGRAM,
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds":        dto.MetricType_GAUGE,
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": dto.MetricType_GAUGE,
		"kubeproxy_network_programming_duration_seconds":           dto.MetricType_HISTOGRAM,
		"kubeproxy_sync_proxy_rules_endpoint_changes_total":        dto.MetricType_COUNTER,
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending":      dto.MetricType_GAUGE,
		"kubeproxy_sync_proxy_rules_service_changes_total":         dto.MetricType_COUNTER,
		"kubeproxy_sync_proxy_rules_service_changes_pending":       dto.MetricType_GAUGE,
		"kubeproxy_proxy_healthz_total":                            dto.MetricType_COUNTER,
		"kubeproxy_proxy_livez_total":                              dto.MetricType_COUNTER,
		"svcproxy_invalid_objects_total":                           dto.MetricType_COUNTER,
		"svcproxy_sync_failures_total":                             dto.MetricType_COUNTER,
	} {
		mf := got[name]
		if mf == nil {
			t.Errorf("metric %s not registered", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("metric %s has type %v, want %v", name, mf.GetType(), typ)
		}
	}
	if len(got) != 14 {
		t.Errorf("%d metric families, want 14", len(got))
	}
	// kube-proxy's help, with the stability level component-base adds.
	if h := got["kubeproxy_sync_full_proxy_rules_duration_seconds"].GetHelp(); h != "[ALPHA] SyncProxyRules latency in seconds for full resyncs" {
		t.Errorf("full sync duration help = %q", h)
	}
	if h := got["svcproxy_sync_failures_total"].GetHelp(); h != "Syncs that a proxier reported as failed" {
		t.Errorf("svcproxy_sync_failures_total help = %q", h)
	}

	buckets := func(name string) []float64 {
		var b []float64
		for _, bk := range got[name].Metric[0].Histogram.Bucket {
			b = append(b, bk.GetUpperBound())
		}
		return b
	}
	for _, name := range []string{"kubeproxy_sync_proxy_rules_duration_seconds",
		"kubeproxy_sync_full_proxy_rules_duration_seconds", "kubeproxy_sync_partial_proxy_rules_duration_seconds"} {
		sync := buckets(name)
		if len(sync) != 15 || sync[0] != 0.001 || sync[14] != 16.384 {
			t.Errorf("%s buckets = %v", name, sync)
		}
	}
	lat := buckets("kubeproxy_network_programming_duration_seconds")
	if len(lat) != 2+59+12+7 || lat[0] != 0.25 || lat[1] != 0.5 || lat[2] != 1 || lat[60] != 59 ||
		lat[61] != 60 || lat[72] != 115 || lat[73] != 120 || lat[79] != 300 {
		t.Errorf("network programming buckets = %v", lat)
	}
	if lbl := got["kubeproxy_sync_proxy_rules_duration_seconds"].Metric[0].Label; len(lbl) != 1 || lbl[0].GetName() != "ip_family" {
		t.Errorf("sync duration labels = %v", lbl)
	}

	// Registering twice on one registry fails rather than silently sharing.
	if err := newMetrics().register(reg); err == nil {
		t.Errorf("second registration succeeded")
	}
}
