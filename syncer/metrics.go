package syncer

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the syncer's Prometheus collectors. Names and labels of the
// kubeproxy_* ones are kube-proxy's, so existing dashboards keep working.
type metrics struct {
	syncDuration           *prometheus.HistogramVec
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

func newMetrics() *metrics {
	return &metrics{
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubeproxy_sync_proxy_rules_duration_seconds",
			Help:    "SyncProxyRules latency in seconds",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"ip_family"}),
		lastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time proxy rules were successfully synced",
		}, []string{"ip_family"}),
		lastQueued: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "The last time a sync of proxy rules was queued",
		}, []string{"ip_family"}),
		programmingLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubeproxy_network_programming_duration_seconds",
			Help:    "In Cluster Network Programming Latency in seconds",
			Buckets: programmingLatencyBuckets(),
		}, []string{"ip_family"}),
		endpointChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_total",
			Help: "Cumulative proxy rules Endpoint changes",
		}),
		endpointChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
			Help: "Pending proxy rules Endpoint changes",
		}),
		serviceChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_total",
			Help: "Cumulative proxy rules Service changes",
		}),
		serviceChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_pending",
			Help: "Pending proxy rules Service changes",
		}),
		healthz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_healthz_total",
			Help: "Cumulative proxy healthz HTTP status",
		}, []string{"code"}),
		livez: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_livez_total",
			Help: "Cumulative proxy livez HTTP status",
		}, []string{"code"}),
		invalidObjects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "svcproxy_invalid_objects_total",
			Help: "Malformed parts of Services and EndpointSlices that were skipped",
		}, []string{"kind", "reason"}),
		syncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "svcproxy_sync_failures_total",
			Help: "Syncs that a proxier reported as failed",
		}, []string{"ip_family"}),
		rulesRepaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "svcproxy_rules_repaired_total",
			Help: "Times the kernel's rules were found altered by someone else and rewritten.",
		}, []string{"ip_family"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.syncDuration, m.lastSync, m.lastQueued, m.programmingLatency,
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
