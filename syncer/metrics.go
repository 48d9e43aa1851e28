package syncer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/svcproxy/svcproxy/proxier"
)

// metrics are the syncer's Prometheus collectors. Names and labels of the
// kubeproxy_* ones are kube-proxy's, so existing dashboards keep working.
type metrics struct {
	syncDuration           *prometheus.HistogramVec
	syncFullDuration       *prometheus.HistogramVec
	syncPartialDuration    *prometheus.HistogramVec
	lastSync               *prometheus.GaugeVec
	lastQueued             *prometheus.GaugeVec
	programmingLatency     *prometheus.HistogramVec
	endpointChangesTotal   prometheus.Counter
	endpointChangesPending prometheus.Gauge
	serviceChangesTotal    prometheus.Counter
	serviceChangesPending  prometheus.Gauge
	healthz                *prometheus.CounterVec
	livez                  *prometheus.CounterVec
	invalidObjects         *prometheus.CounterVec
	syncFailures           *prometheus.CounterVec
	rulesRepaired          *prometheus.CounterVec
}

// programmingLatencyBuckets are kube-proxy's buckets for
// kubeproxy_network_programming_duration_seconds: 0.25, 0.5, 1..59 by 1,
// 60..115 by 5, 120..300 by 30.
func programmingLatencyBuckets() []float64 {
	b := []float64{0.25, 0.5}
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	b = append(b, prometheus.LinearBuckets(120, 30, 7)...)
	return b
}

// ipFamily is the label of per-family collectors. The constructors below
// build one collector from its name and help (kube-proxy's metrics with
// kube-proxy's help, see proxier.KubeProxyHelp): gaugeVec and histogramVec
// are labelled by ipFamily, counterVec by the labels given.
var ipFamily = []string{"ip_family"}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: proxier.KubeProxyHelp(name, help)})
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: proxier.KubeProxyHelp(name, help)})
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: proxier.KubeProxyHelp(name, help)}, labels)
}

func gaugeVec(name, help string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: proxier.KubeProxyHelp(name, help)}, ipFamily)
}

func histogramVec(name, help string, buckets []float64) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: proxier.KubeProxyHelp(name, help), Buckets: buckets}, ipFamily)
}

func newMetrics() *metrics {
	return &metrics{
		syncDuration: histogramVec("kubeproxy_sync_proxy_rules_duration_seconds",
			"SyncProxyRules latency in seconds", proxier.SyncDurationBuckets()),
		syncFullDuration: histogramVec("kubeproxy_sync_full_proxy_rules_duration_seconds",
			"SyncProxyRules latency in seconds for full resyncs", proxier.SyncDurationBuckets()),
		syncPartialDuration: histogramVec("kubeproxy_sync_partial_proxy_rules_duration_seconds",
			"SyncProxyRules latency in seconds for partial resyncs", proxier.SyncDurationBuckets()),
		lastSync: gaugeVec("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			"The last time proxy rules were successfully synced"),
		lastQueued: gaugeVec("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
			"The last time a sync of proxy rules was queued"),
		programmingLatency: histogramVec("kubeproxy_network_programming_duration_seconds",
			"In Cluster Network Programming Latency in seconds", programmingLatencyBuckets()),
		endpointChangesTotal: counter("kubeproxy_sync_proxy_rules_endpoint_changes_total",
			"Cumulative proxy rules Endpoint changes"),
		endpointChangesPending: gauge("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
			"Pending proxy rules Endpoint changes"),
		serviceChangesTotal: counter("kubeproxy_sync_proxy_rules_service_changes_total",
			"Cumulative proxy rules Service changes"),
		serviceChangesPending: gauge("kubeproxy_sync_proxy_rules_service_changes_pending",
			"Pending proxy rules Service changes"),
		healthz: counterVec("kubeproxy_proxy_healthz_total",
			"Cumulative proxy healthz HTTP status", "code"),
		livez: counterVec("kubeproxy_proxy_livez_total",
			"Cumulative proxy livez HTTP status", "code"),
		invalidObjects: counterVec("svcproxy_invalid_objects_total",
			"Malformed parts of Services and EndpointSlices that were skipped", "kind", "reason"),
		syncFailures: counterVec("svcproxy_sync_failures_total",
			"Syncs that a proxier reported as failed", ipFamily...),
		rulesRepaired: counterVec("svcproxy_rules_repaired_total",
			"Times the kernel's rules were found altered by someone else and rewritten.", ipFamily...),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.syncDuration, m.syncFullDuration, m.syncPartialDuration, m.lastSync, m.lastQueued, m.programmingLatency,
		m.endpointChangesTotal, m.endpointChangesPending,
		m.serviceChangesTotal, m.serviceChangesPending,
		m.healthz, m.livez, m.invalidObjects, m.syncFailures, m.rulesRepaired,
	}
}

// register registers every collector on reg; a nil reg registers nothing.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
